"""The classic pairwise losses on the two-view setup: the margin contrastive loss and the triplet loss.

    z = normalize(g(f(x)))                 embedding of each view                         (N, D)
    positive pair: the two views of an image; negatives: the views of the other images of the (global) batch
    margin:  loss = mean_a [ d(a, p)^2 + max(0, m - d(a, n*))^2 ]         (Hadsell, Chopra & LeCun, 2006)
    triplet: loss = mean_a max(0, d(a, p) - d(a, n*) + margin)           (Schroff et al., FaceNet, 2015)

``d`` is the Euclidean distance of L2-normalised embeddings (in [0, 2]), every one of the 2N views is an anchor,
and ``n*`` is one mined negative per anchor (:func:`training.losses.mine_negatives`):

* ``triplet`` mines **semi-hard** negatives by default (the closest negative farther than the positive): FaceNet
  reports that the hardest negatives make training collapse early (every embedding equal gives a loss of exactly
  ``margin`` and no way out), and a collapsed start is what training from scratch looks like.
* ``margin`` mines the **hardest** negative (the closest view of another image) by default: its negative term is
  ``max(0, m - d)^2``, largest when everything collapses, so the hardest negative pushes apart exactly the images
  that are confused and cannot cause a collapse; random or semi-hard negatives are mostly beyond the margin
  already and contribute nothing.

Heads follow the papers: FaceNet ends in a linear embedding layer (128-d, then L2 normalisation), DrLIM applies the
loss to the network's output itself (``out_dim=0``: the backbone's pooled features, normalised). Under data
parallelism the embeddings are gathered from all ranks (with gradient) and every rank computes the loss of the
global batch, as Barlow Twins does; BatchNorm is synchronised like SimCLR's, since the negatives are in the batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from retrieval.errors import LookalikeError

from .. import distributed as D
from ..losses import MINING, margin_contrastive_loss, triplet_loss
from .base import ProjectionHead, SSLMethod


def embedding_head(feat_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """Identity (``out_dim=0``), a linear layer (``hidden_dim=0``) or Linear -> BN -> ReLU -> Linear."""
    if out_dim <= 0:
        return nn.Identity()
    if hidden_dim <= 0:
        return ProjectionHead([(feat_dim, out_dim, False, False)])
    return ProjectionHead([(feat_dim, hidden_dim, True, True), (hidden_dim, out_dim, False, False)])


class _PairwiseMethod(SSLMethod):
    """Two views -> embeddings -> ``loss_fn(z1, z2, margin, mining)`` over the (gathered) batch."""

    needs_sync_bn = True
    loss_fn: ClassVar[Any]

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.margin, self.mining = float(hp["margin"]), str(hp["mining"])
        if self.mining not in MINING:
            raise LookalikeError(f"mining must be one of {', '.join(MINING)}, got {self.mining!r}")
        if self.margin <= 0:
            raise LookalikeError(f"margin must be > 0, got {self.margin}")
        self.projector = embedding_head(feat_dim, int(hp["hidden_dim"]), int(hp["out_dim"]))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.backbone(x1))  # (N, D), normalised inside the loss
        z2 = self.projector(self.backbone(x2))
        z1, z2 = D.gather_with_grad(z1), D.gather_with_grad(z2)  # (W*N, D); identity in one process
        return type(self).loss_fn(z1, z2, self.margin, self.mining)


class Triplet(_PairwiseMethod):
    name = "triplet"
    loss_fn = staticmethod(triplet_loss)
    default_hparams = {"margin": 0.2, "mining": "semihard", "hidden_dim": 0, "out_dim": 128}


class MarginContrastive(_PairwiseMethod):
    name = "margin"
    loss_fn = staticmethod(margin_contrastive_loss)
    default_hparams = {"margin": 1.0, "mining": "hardest", "hidden_dim": 0, "out_dim": 0}
