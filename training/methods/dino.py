"""DINO (Caron et al., 2021): self-distillation with no labels. A student matches a momentum teacher's centred,
sharpened output across multi-crop views.

    student:  g_s = h_s(f_s(x))    every crop (2 global views, then the local ones)          (B, K)
    teacher:  g_t = h_t(f_t(x))    the 2 global views only, no gradient                       (B, K)
    P_t = softmax((g_t - c) / tau_t)      centring (c) and sharpening (tau_t = 0.04 < tau_s = 0.1)
    loss = mean over pairs (i global, v != i) of -sum_k P_t,i log softmax(g_s,v / tau_s)
    c <- m c + (1 - m) mean of g_t over the global batch       m = 0.9, in the forward pass, as the paper's code
    theta_t <- tau theta_t + (1 - tau) theta_s,  tau from tau0 to 1 on BYOL's cosine      after each optimiser step

The head h: an MLP (Linear -> GELU -> Linear -> GELU -> Linear to a bottleneck), L2 normalisation, and a
weight-normalised Linear to K outputs with its norm fixed at 1 (the paper's ``norm_last_layer``). Centring keeps
one dimension from dominating, sharpening keeps the output from going uniform: together they avoid collapse
without negatives. The centre is a buffer, so it survives a checkpoint.

Scaled for a CPU (the paper's ViT-S / ResNet-50 values in brackets): hidden 512 [2048], bottleneck 128 [256],
K = 4096 [65536], tau0 = 0.99 [0.996] (a short run learns faster with a teacher that follows more closely; pass
``tau0=0.996`` for long runs), 4 local crops [8-10]. Left out: the teacher-temperature warm-up (the paper's
default keeps it at 0.04 anyway), the weight-decay schedule, gradient clipping and freezing the last layer during
the first epoch. As a fine-tune of a pretrained encoder (``--init``) the teacher starts as the pretrained network
itself; frozen BatchNorm (the fine-tune default) is frozen in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .. import distributed as D
from ..losses import center_update, dino_loss
from .base import SSLMethod, cosine_momentum, ema_update, momentum_copy

N_GLOBAL = 2  # the views the teacher sees


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim): MLP to a bottleneck, L2-normalise, weight-normalised Linear (norm 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck_dim))  # direction only: normalised when used
        nn.init.trunc_normal_(self.last, std=0.02)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(h), dim=1), F.normalize(self.last, dim=1))


class DINO(SSLMethod):
    name = "dino"
    views = "byol"  # DINO's global views: blur 1.0 / 0.1, solarize 0 / 0.2; local crops blur 0.5
    needs_sync_bn = True
    multi_crop = True
    default_local_crops = 4
    default_hparams = {"out_dim": 4096, "hidden_dim": 512, "bottleneck_dim": 128, "student_temp": 0.1,
                       "teacher_temp": 0.04, "center_momentum": 0.9, "tau0": 0.99}
    default_lr = 5e-4  # the paper's, at batch 256
    default_weight_decay = 0.04

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.student_temp, self.teacher_temp = float(hp["student_temp"]), float(hp["teacher_temp"])
        self.center_momentum, self.tau0 = float(hp["center_momentum"]), float(hp["tau0"])
        if min(self.student_temp, self.teacher_temp) <= 0 or not 0 <= self.center_momentum <= 1 \
                or not 0 <= self.tau0 <= 1:
            raise LookalikeError("dino needs temperatures > 0 and center_momentum, tau0 in [0, 1]")
        self.tau = self.tau0
        self.head = DINOHead(feat_dim, int(hp["out_dim"]), int(hp["hidden_dim"]), int(hp["bottleneck_dim"]))
        self.teacher = momentum_copy(nn.Sequential(self.backbone, self.head))  # f_t, h_t: frozen, EMA only
        self.register_buffer("center", torch.zeros(1, int(hp["out_dim"])))  # c

    def student(self, crops: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """One backbone pass per crop size (the global views together, then the local ones): [(B, K), ...]."""
        groups = [crops[:N_GLOBAL], crops[N_GLOBAL:]] if len(crops) > N_GLOBAL else [crops]
        return [g for group in groups for g in self.head(self.backbone(torch.cat(group))).chunk(len(group))]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *local: torch.Tensor) -> torch.Tensor:
        g_s = self.student((x1, x2, *local))  # 2 + N x (B, K)
        with torch.no_grad():
            g_t = self.teacher(torch.cat([x1, x2])).float()  # (2B, K)
        loss = dino_loss(g_s, list(g_t.chunk(N_GLOBAL)), self.center, self.student_temp, self.teacher_temp)
        if self.training:
            batch_mean = D.all_reduce_mean(g_t.mean(dim=0))  # (K,) over the global batch
            self.center.copy_(center_update(self.center, batch_mean, self.center_momentum))
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.tau = cosine_momentum(self.tau0, progress)
        ema_update(self.teacher, nn.Sequential(self.backbone, self.head), self.tau)
