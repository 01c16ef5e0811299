"""Barlow Twins (Zbontar et al., 2021): make the cross-correlation of two views' embeddings the identity.

    z = g(f(x))        3-layer projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear)   (N, dim)
    C = z1_n^T z2_n / N   per-dimension standardised over the (global) batch        (dim, dim)
    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2,   lambda = 5e-3

Defaults: projector 2048-2048-2048 (the paper uses 8192; the loss improves with width, 2048 keeps CPU runs
cheap). Under data parallelism the embeddings are gathered from all ranks (with gradient) so the standardisation
and C span the global batch, as in the paper; the projector's BN is synchronised.
``scale`` multiplies the loss (the first published recipe used 1/32 with SGD/LARS; with AdamW keep 1).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as D
from ..losses import barlow_twins_loss
from .base import ProjectionHead, SSLMethod


def barlow_projector(feat_dim: int, dim: int) -> ProjectionHead:
    return ProjectionHead([(feat_dim, dim, True, True), (dim, dim, True, True), (dim, dim, False, False)])


class BarlowTwins(SSLMethod):
    name = "barlow"
    views = "byol"
    needs_sync_bn = True
    default_hparams = {"dim": 2048, "lambd": 5e-3, "scale": 1.0}
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.lambd, self.scale = float(hp["lambd"]), float(hp["scale"])
        self.projector = barlow_projector(feat_dim, hp["dim"])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.backbone(x1))  # (N, dim)
        z2 = self.projector(self.backbone(x2))  # (N, dim)
        z1, z2 = D.gather_with_grad(z1), D.gather_with_grad(z2)  # (W*N, dim); identity in one process
        return barlow_twins_loss(z1, z2, self.lambd, self.scale)
