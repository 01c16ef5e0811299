"""SimCLR (Chen et al., 2020): contrast two views of each image against all other views in the batch.

    h = f(x)            backbone features        (B, feat_dim)
    z = g(h)            2-layer MLP projection   (B, out_dim), out_dim = 128 in the paper
    loss = NT-Xent(z1, z2; T) over the 2B views (2M with M = global batch under data parallelism)

The paper's temperature ranges 0.1-0.5; 0.2 suits the small batches typical here. Under data parallelism the
negatives come from every rank (all-gather with gradient), and BatchNorm is synchronised (global BN, as in the
paper), hence ``needs_sync_bn``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as D
from ..losses import nt_xent
from .base import ProjectionHead, SSLMethod


def simclr_head(feat_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """g(.): Linear -> BN -> ReLU -> Linear ("an MLP with one hidden layer")."""
    return ProjectionHead([(feat_dim, hidden_dim, True, True), (hidden_dim, out_dim, False, False)])


class SimCLR(SSLMethod):
    name = "simclr"
    needs_sync_bn = True
    default_hparams = {"temperature": 0.2, "hidden_dim": None, "out_dim": 128}  # hidden_dim None -> feat_dim
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.temperature = float(hp["temperature"])
        self.projector = simclr_head(feat_dim, hp["hidden_dim"] or feat_dim, hp["out_dim"])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.backbone(x1))  # (N, out_dim)
        z2 = self.projector(self.backbone(x2))  # (N, out_dim)
        if D.world_size() > 1:
            z1_all, z2_all = D.gather_with_grad(z1), D.gather_with_grad(z2)  # (W*N, out_dim) each
            return nt_xent(z1, z2, self.temperature, z1_all, z2_all, rank=D.rank())
        return nt_xent(z1, z2, self.temperature)
