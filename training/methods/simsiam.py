"""SimSiam (Chen & He, 2021): a siamese network with a predictor and a stop-gradient, no negatives, no EMA.

    z = h(f(x))        3-layer projector, BN on every layer (output BN without affine)   (N, dim)
    p = pred(z)        2-layer bottleneck predictor (dim -> dim/4 -> dim)                  (N, dim)
    loss = 0.5 * D(p1, stopgrad(z2)) + 0.5 * D(p2, stopgrad(z1)),  D = negative cosine  (range [-1, 1])

The stop-gradient lives inside :func:`training.losses.simsiam_loss`. Defaults: dim 1024 and predictor hidden 256
(the paper's 2048/512 at the same 4:1 bottleneck, halved for CPU). The paper keeps the predictor's learning rate
fixed (no cosine decay); its parameter group is marked ``fixed_lr=True`` for the trainer. SyncBN as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import simsiam_loss
from .base import ProjectionHead, SSLMethod


def simsiam_projector(feat_dim: int, dim: int) -> ProjectionHead:
    return ProjectionHead([
        (feat_dim, dim, True, True),
        (dim, dim, True, True),
        (dim, dim, nn.BatchNorm1d(dim, affine=False), False),
    ])


def simsiam_predictor(dim: int, hidden_dim: int) -> ProjectionHead:
    return ProjectionHead([(dim, hidden_dim, True, True), (hidden_dim, dim, False, False)])


class SimSiam(SSLMethod):
    name = "simsiam"
    needs_sync_bn = True
    default_hparams = {"dim": 1024, "pred_hidden_dim": 256}
    default_lr = 5e-4
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.projector = simsiam_projector(feat_dim, hp["dim"])
        self.predictor = simsiam_predictor(hp["dim"], hp["pred_hidden_dim"])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.backbone(x1))  # (N, dim)
        z2 = self.projector(self.backbone(x2))  # (N, dim)
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (N, dim) each
        return 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))

    def _fixed_lr_parameters(self):
        return self.predictor.parameters()
