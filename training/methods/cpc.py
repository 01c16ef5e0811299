"""Contrastive Predictive Coding on image patches (van den Oord et al., 2018; Hénaff et al., CPC v2, 2020).

    patches = G x G grid of overlapping patches of each view (50% overlap)      (B, G*G, 3, P, P)
    z[i, j] = proj(f(patch[i, j]))              patch embeddings (shared backbone)      (B, G, G, D)
    c[i, j] = context(z)[i, j]                  sees only rows <= i (masked convolutions, PixelCNN-style)
    pred_k[i, j] = W_k c[i, j]                  prediction of z[i + k, j], k = 1..K
    loss = InfoNCE(pred_k[i, j]; positive z[i + k, j], negatives every other patch of the batch)

This is CPC proper, the autoregressive prediction of the patch rows below from the rows above, not a simpler
"patch of the same image vs others" contrast: the prediction task is what sets CPC apart from the two-view
methods, and it fits two CPU cores once scaled down. The paper cuts 7x7 patches of 64 px from 256 px images;
here the grid is G = 4 (``grid``) with patches of 2 * S / (G + 1) pixels at stride S / (G + 1) (24 px at
S = 64). The backbone's last stages see every patch at 1x1, so the cost grows with the number of patches more
than with their pixels: G = 4 costs about three SimCLR steps, the paper-like G = 5 about five (docs/measurements.md,
"Optimiser and method costs"). K = 2 steps ahead (``steps``; the paper predicts up to 5 rows ahead in a grid of 7).

Details, and where they depart from the papers:

* Every patch gets its own colour jitter and standardisation (:func:`training.methods.patches.jitter_patches`),
  CPC v2's patch-based augmentation: overlapping patches would otherwise be matched by their colours.
* The critic is the cosine similarity / T (``temperature``) of ``W_k c`` and ``z`` instead of the unbounded dot
  product ``z^T W_k c``: bounded scores keep small-batch training stable. The InfoNCE bound holds for any critic.
* The context network is ``context_layers`` masked convolutions over the grid of embeddings (kernel: the row
  above and the current row, three columns), each followed by ReLU; CPC v2 uses a deeper PixelCNN.
* CPC v2 replaces BatchNorm by LayerNorm because batch statistics mix the patches of one image; the backbone here
  is any timm model (BatchNorm in most), so that leak remains; large batches dilute it.
* Both views are used: each is its own CPC problem (negatives from the same view of the batch, from all ranks
  in data-parallel training), and the two losses are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .. import distributed as D
from ..losses import cpc_loss
from .base import SSLMethod
from .patches import grid_patches, jitter_patches


class RowCausalContext(nn.Module):
    """(B, D, G, G) -> (B, D, G, G) where output row i depends only on input rows <= i (any column)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        if layers < 1:
            raise LookalikeError(f"context_layers must be >= 1, got {layers}")
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, kernel_size=(2, 3)) for _ in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = z
        for conv in self.convs:
            c = F.relu(conv(F.pad(c, (1, 1, 1, 0))))  # pad left, right and top only: row i sees rows i-1, i
        return c


class CPC(SSLMethod):
    name = "cpc"
    needs_sync_bn = True
    default_hparams = {"grid": 4, "steps": 2, "dim": 128, "context_layers": 3, "temperature": 0.1,
                       "jitter": 0.4, "gray_p": 0.3}

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.grid, self.steps, dim = int(hp["grid"]), int(hp["steps"]), int(hp["dim"])
        if self.grid < 2 or not 1 <= self.steps < self.grid:
            raise LookalikeError(f"CPC needs grid >= 2 and 1 <= steps < grid, got grid={self.grid} steps={self.steps}")
        self.temperature, self.jitter, self.gray_p = float(hp["temperature"]), float(hp["jitter"]), float(hp["gray_p"])
        self.projector = nn.Linear(feat_dim, dim)  # z = proj(f(patch))
        self.context = RowCausalContext(dim, int(hp["context_layers"]))
        self.predictors = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(self.steps))  # W_k

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, G, G, D) embeddings of the jittered, overlapping patches."""
        stride = min(x.shape[-2:]) // (self.grid + 1)
        if stride < 1:
            raise LookalikeError(f"a {self.grid}x{self.grid} CPC grid needs views of at least {self.grid + 1} px")
        patches = jitter_patches(grid_patches(x, self.grid, 2 * stride, stride), self.jitter, self.gray_p)
        b = x.shape[0]
        z = self.projector(self.backbone(patches.flatten(0, 1)))  # (B*G*G, D)
        return z.view(b, self.grid, self.grid, -1)

    def predictions(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G, G, D) -> (K, B, G, G, D): ``[k - 1, b, i, j]`` predicts ``z[b, i + k, j]`` from rows <= i."""
        c = self.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, G, G, D)
        return torch.stack([w(c) for w in self.predictors])

    def view_loss(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed_patches(x)
        preds = self.predictions(z)
        if D.world_size() > 1:
            return cpc_loss(preds, z, self.temperature, D.gather_with_grad(z), rank=D.rank())
        return cpc_loss(preds, z, self.temperature)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.view_loss(x1) + self.view_loss(x2))
