"""Optimisers and the learning-rate schedule.

:func:`get_lr` is the schedule (linear warm-up, then a cosine to ``LR_FLOOR``, as a function of the run's
progress in [0, 1]); :func:`make_optimizer` builds AdamW, SGD or :class:`LARS` over a method's parameter groups,
with the learning rate and weight decay of :func:`default_lr` / :func:`default_weight_decay` when not given.

LARS is ours rather than ``timm.optim.Lars``: timm (1.0) computes the trust ratio as
``trust_coeff * ||w|| / (||g|| + wd * ||w|| + eps)``, the paper's bound, while SimCLR's and BYOL's reference
implementations, which our recipes follow, use the norm of the actual update, ``eta * ||w|| / ||g + wd * w||``
(larger whenever ``g`` and ``w`` are not aligned). Both skip the adaptation in groups without weight decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["get_lr", "WARMUP_MAX_FRACTION", "LR_FLOOR", "default_lr", "default_weight_decay", "make_optimizer",
           "set_lr", "LARS"]

WARMUP_MAX_FRACTION = 0.1  # warm-up never takes more than this fraction of the run
LR_FLOOR = 0.01  # the cosine decays to this fraction of the base learning rate
_BASE_LR = {"sgd": 0.05, "lars": 0.3}  # per 256 images; AdamW takes the method's own suggestion
_WEIGHT_DECAY = {"sgd": 1e-4, "lars": 1e-6}


def get_lr(base_lr: float, step: int, progress: float, warmup_steps: int, fixed: bool = False) -> float:
    """Learning rate of optimiser step ``step`` (0-based), ``progress`` in [0, 1] of the run done before it.

    Linear warm-up over ``warmup_steps`` steps or the first 10% of the run, whichever ends first (a warm-up of
    one epoch would never end in a short time budget on a big folder), times a cosine from 1 down to ``LR_FLOOR``
    at progress 1. ``fixed`` groups (SimSiam's predictor) keep ``base_lr`` throughout.
    """
    if fixed:
        return base_lr
    warm = min(1.0, max((step + 1) / max(1, warmup_steps), progress / WARMUP_MAX_FRACTION))
    cosine = LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * warm * cosine


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, progress: float, warmup_steps: int) -> float:
    """Set every group's learning rate from the schedule; returns the scheduled (not fixed) rate."""
    for group in optimizer.param_groups:
        group["lr"] = get_lr(base_lr, step, progress, warmup_steps, fixed=group.get("fixed_lr", False))
    return max(g["lr"] for g in optimizer.param_groups if not g.get("fixed_lr", False))


def default_lr(optimizer: str, batch_size: int, method: nn.Module) -> float:
    per_256 = _BASE_LR.get(optimizer, getattr(method, "default_lr", 1e-3))
    return per_256 * batch_size / 256


def default_weight_decay(optimizer: str, method: nn.Module) -> float:
    return _WEIGHT_DECAY.get(optimizer, getattr(method, "default_weight_decay", 1e-4))


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        # the fused kernel: one pass over all parameters instead of ~10 small ops per tensor, several times faster
        # and far less exposed to a busy machine (docs/measurements.md, "Optimiser and method costs")
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
            return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return LARS(groups, lr=lr, momentum=0.9)


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each weight tensor is rescaled by the trust ratio
    ``eta * ||w|| / ||g + wd * w||`` (You et al., 2017, as used by SimCLR and BYOL for large batches).
    Groups without weight decay (biases, normalisation parameters) take plain SGD steps, as in those papers."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        if lr <= 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError("LARS needs lr > 0, 0 <= momentum < 1 and eta > 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss
