"""BYOL (Grill et al., 2020): predict an exponential-moving-average target's projection of the other view.

    online:  y = f_theta(x), z = g_theta(y), p = q_theta(z)      p: (N, proj_dim)
    target:  z' = g_xi(f_xi(x'))  (no gradient)                  z': (N, proj_dim)
    loss = (2 - 2 cos(p1, z'2)) + (2 - 2 cos(p2, z'1))            symmetric, summed as in the paper (range [0, 8])
    with multi-crop (``--local-crops N``): every crop's p predicts each *other* global view's z', the mean over
    those pairs times 2 (the same loss as above without local crops)
    xi <- tau xi + (1 - tau) theta,  tau = 1 - (1 - tau0) (cos(pi k / K) + 1) / 2   after each optimiser step

Defaults: projector/predictor hidden 1024 (the paper's 4096 is sized for ResNet-50 on ImageNet; 1024 keeps the
heads cheap on a CPU), output 256 as in the paper. tau0 = 0.99 rather than the paper's 0.996: the paper's value
is tuned for ~300k steps; runs of a few thousand steps learn faster with a target that follows more closely.
Pass ``tau0=0.996`` for long runs. The paper uses global (synchronised) BN.
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval.errors import LookalikeError

from ..losses import byol_loss
from .base import ProjectionHead, SSLMethod, cosine_momentum, ema_update, momentum_copy


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """BYOL's projector and predictor share one shape: Linear -> BN -> ReLU -> Linear."""
    return ProjectionHead([(in_dim, hidden_dim, True, True), (hidden_dim, out_dim, False, False)])


class BYOL(SSLMethod):
    name = "byol"
    views = "byol"
    needs_sync_bn = True
    multi_crop = True  # takes local crops when asked (--local-crops N); none by default, as the paper
    default_hparams = {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 1024, "tau0": 0.99}
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.tau0 = float(hp["tau0"])
        if not 0.0 <= self.tau0 <= 1.0:
            raise LookalikeError(f"tau0 must be in [0, 1], got {self.tau0}")
        self.tau = self.tau0  # the momentum used by the latest update (for logging)
        self.projector = byol_mlp(feat_dim, hp["proj_hidden_dim"], hp["proj_dim"])  # g_theta
        self.predictor = byol_mlp(hp["proj_dim"], hp["pred_hidden_dim"], hp["proj_dim"])  # q_theta
        self.target = momentum_copy(nn.Sequential(self.backbone, self.projector))  # g_xi(f_xi(.)), frozen

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *local: torch.Tensor) -> torch.Tensor:
        p = [self.predictor(self.projector(self.backbone(x))) for x in (x1, x2)]  # 2 x (N, proj_dim)
        if local:  # one pass for the local crops (one size): N_local x (N, proj_dim)
            p += list(self.predictor(self.projector(self.backbone(torch.cat(local)))).chunk(len(local)))
        with torch.no_grad():
            z = [self.target(x1), self.target(x2)]  # 2 x (N, proj_dim)
        pairs = [(v, i) for i in range(2) for v in range(len(p)) if v != i]
        return 2.0 * sum(byol_loss(p[v], z[i]) for v, i in pairs) / len(pairs)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.tau = cosine_momentum(self.tau0, progress)
        ema_update(self.target, nn.Sequential(self.backbone, self.projector), self.tau)
