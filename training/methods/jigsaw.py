"""Jigsaw puzzles (Noroozi & Favaro, 2016): shuffle a 3x3 grid of tiles, predict which permutation was applied.

    tiles = 9 tiles of each view, one per cell of a 3x3 grid      (B, 9, 3, t, t), t ~ 0.85 cell
    shuffled[p] = tiles[perm_y[p]],  y uniform in 0..N-1          N fixed permutations
    e_p = tile_fc(f(shuffled[p]))                                 shared backbone and tile layer (context-free net)
    logits = head(concat(e_0 .. e_8))                             (B, N)
    loss = cross-entropy(logits, y)                               (chance level: log N)

The permutation set. The N permutations of 9 tiles are chosen greedily for large Hamming distances from a fixed
seed, in the manner of the paper's Algorithm 1: the first at random, then each time the permutation whose *minimum*
distance to the ones already chosen is largest (ties: the largest summed distance, then the lowest index among the
9! in lexicographic order). The paper's Algorithm 1 maximises the average distance to the chosen set, which does
not bound the closest pair; maximising the minimum does. With the default N = 100 the minimum pairwise Hamming
distance is 6 (average 8.08): no two classes differ by fewer than 6 misplaced tiles.

Shortcuts. Each tile is cut at a random position inside its cell (tile side 64/75 of the cell, as the paper's 64 px
tiles in 75 px cells), so the gaps between neighbouring tiles vary and edges do not line up; every tile then gets
its own colour jitter, a grey version with probability 0.3, and is standardised on its own
(:func:`training.methods.patches.jitter_patches`), so colour, brightness and contrast do not match across borders.

Both views are used: each is an independent puzzle with its own permutation. The backbone sees tiles (about a
third of the view's side), while retrieval embeds whole images with the same backbone, as in the paper's transfer
experiments. Defaults: tile layer 256 and hidden layer 1024 (the paper's 512 and 4096, scaled for a CPU). A step
costs 1.3x a SimCLR step (CPU time, resnet10t, 64 px, batch 32): nine small tiles per view instead of one view.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .base import ProjectionHead, SSLMethod
from .patches import grid_patches, jitter_patches

GRID = 3
TILES = GRID * GRID
MAX_PERMUTATIONS = 1000


@functools.lru_cache(maxsize=8)
def hamming_permutations(n: int, seed: int = 0) -> np.ndarray:
    """(n, 9) int64: n permutations of 9 tiles chosen greedily for the largest minimum pairwise Hamming distance.

    Deterministic for a given (n, seed); 100 permutations take under a second.
    """
    if not 2 <= n <= MAX_PERMUTATIONS:
        raise LookalikeError(f"num_permutations must be between 2 and {MAX_PERMUTATIONS}, got {n}")
    every = np.array(list(itertools.permutations(range(TILES))), dtype=np.int8)  # (9!, 9), lexicographic
    columns = np.ascontiguousarray(every.T)  # (9, 9!): one comparison per tile position is fastest

    def distances(j: int) -> np.ndarray:  # (9!,) Hamming distance of every permutation to permutation j
        d = np.zeros(len(every), dtype=np.int64)
        for pos in range(TILES):
            d += columns[pos] != every[j, pos]
        return d

    chosen = [int(np.random.default_rng(seed).integers(len(every)))]
    min_d = distances(chosen[0])  # distance to the chosen set
    sum_d = min_d.copy()
    tie = TILES * n + 1  # sum_d < tie, so the score orders by min_d first, then by sum_d
    for _ in range(n - 1):
        j = int((min_d * tie + sum_d).argmax())  # a chosen permutation has min_d = 0 and never wins again
        chosen.append(j)
        d = distances(j)
        np.minimum(min_d, d, out=min_d)
        sum_d += d
    perms = every[chosen].astype(np.int64)
    perms.flags.writeable = False  # cached and shared: nobody may change it
    return perms


def min_hamming_distance(perms: np.ndarray) -> int:
    """The smallest number of positions in which two rows of ``perms`` (n, 9) differ."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(axis=-1)
    return int(d[~np.eye(len(perms), dtype=bool)].min())


class Jigsaw(SSLMethod):
    name = "jigsaw"
    needs_sync_bn = False
    default_hparams = {"num_permutations": 100, "tile_frac": 64 / 75, "tile_dim": 256, "hidden_dim": 1024,
                       "jitter": 0.4, "gray_p": 0.3, "permutation_seed": 0}

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        if not 0.0 < float(hp["tile_frac"]) <= 1.0:
            raise LookalikeError(f"tile_frac must be in (0, 1], got {hp['tile_frac']}")
        self.tile_frac, self.jitter, self.gray_p = float(hp["tile_frac"]), float(hp["jitter"]), float(hp["gray_p"])
        perms = hamming_permutations(int(hp["num_permutations"]), int(hp["permutation_seed"]))
        self.register_buffer("permutations", torch.tensor(perms), persistent=False)  # (N, 9), derived
        tile_dim = int(hp["tile_dim"])
        self.tile_fc = ProjectionHead([(feat_dim, tile_dim, False, True)])  # the paper's shared fc6
        self.head = ProjectionHead([(TILES * tile_dim, int(hp["hidden_dim"]), True, True),
                                    (int(hp["hidden_dim"]), len(perms), False, False)])  # fc7, fc8
        self.last_accuracy = torch.tensor(float("nan"))  # on the latest batch

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 9, 3, t, t) jittered tiles in row-major order, each at a random place in its cell."""
        cell = min(x.shape[-2:]) // GRID
        tile = max(1, int(math.floor(self.tile_frac * cell)))
        tiles = grid_patches(x, GRID, tile, stride=cell, max_offset=cell - tile)
        return jitter_patches(tiles, self.jitter, self.gray_p)

    def puzzle_logits(self, tiles: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shuffle each image's tiles (B, 9, ...) by permutation ``labels`` (B,) and classify: (B, N) logits."""
        b = tiles.shape[0]
        order = self.permutations[labels]  # (B, 9): position p shows tile order[p]
        shuffled = tiles[torch.arange(b, device=tiles.device).view(-1, 1), order]  # (B, 9, 3, t, t)
        e = self.tile_fc(self.backbone(shuffled.flatten(0, 1)))  # (9B, tile_dim)
        return self.head(e.view(b, -1))  # (B, N)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        tiles = self.tiles(torch.cat([x1, x2]))  # both views: (2B, 9, 3, t, t)
        labels = torch.randint(0, len(self.permutations), (tiles.shape[0],)).to(tiles.device)  # CPU draw
        logits = self.puzzle_logits(tiles, labels)
        with torch.no_grad():
            self.last_accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return F.cross_entropy(logits.float(), labels)
