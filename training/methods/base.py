"""What every self-supervised method shares: the module contract, hyper-parameter handling, heads and EMA.

Contract (the trainer relies on exactly this):

* ``Method(backbone, feat_dim, **hparams)``; ``backbone`` maps normalised images (B, 3, H, W) to pooled features
  (B, feat_dim) and is the only part exported for retrieval (``method.backbone.state_dict()``).
* ``loss = method(x1, x2)``: two normalised float views (B, 3, H, W) of the same B images -> scalar loss.
* ``method.after_step(progress)`` after every optimiser step, ``progress = step / total_steps`` in [0, 1]
  (momentum encoders and EMA targets update here; a no-op otherwise).
* ``method.param_groups(weight_decay)`` for the optimiser: only trainable parameters (momentum/EMA copies have
  ``requires_grad=False`` and are left out), biases and normalisation weights without weight decay.
* Everything a resumed run needs (MoCo queue and pointer, key encoder, EMA target) is a buffer or submodule, so
  ``method.state_dict()`` / ``load_state_dict()`` carry it.
* The device comes from the inputs and the module's parameters; nothing calls ``.cuda()``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from retrieval.errors import LookalikeError

__all__ = ["SSLMethod", "ProjectionHead", "LayerSpec", "momentum_copy", "ema_update", "cosine_momentum"]

# (in_features, out_features, batch_norm, activation). ``batch_norm``/``activation`` are either a bool
# (True -> BatchNorm1d(out) / ReLU) or a ready-made module, e.g. ``nn.BatchNorm1d(d, affine=False)``.
LayerSpec = tuple[int, int, "bool | nn.Module", "bool | nn.Module"]


class ProjectionHead(nn.Module):
    """An MLP described by a list of ``(in, out, batch_norm, activation)`` layers: Linear [-> BN] [-> act] each.

    A Linear followed by BatchNorm has no bias (the BN's shift makes it redundant).

    >>> head = ProjectionHead([(512, 512, True, True), (512, 128, False, False)])  # SimCLR-style
    """

    def __init__(self, layers: Sequence[LayerSpec]):
        super().__init__()
        if not layers:
            raise ValueError("a ProjectionHead needs at least one layer")
        modules: list[nn.Module] = []
        prev_out = None
        for i, (d_in, d_out, bn, act) in enumerate(layers):
            if prev_out is not None and d_in != prev_out:
                raise ValueError(f"layer {i} takes {d_in} features but the previous layer gives {prev_out}")
            bn_mod = (nn.BatchNorm1d(d_out) if bn is True else None) if isinstance(bn, bool) else bn
            act_mod = (nn.ReLU(inplace=True) if act is True else None) if isinstance(act, bool) else act
            modules.append(nn.Linear(d_in, d_out, bias=bn_mod is None))
            if bn_mod is not None:
                modules.append(bn_mod)
            if act_mod is not None:
                modules.append(act_mod)
            prev_out = d_out
        self.layers = nn.Sequential(*modules)
        self.out_dim = prev_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        return self.layers(x)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy (``requires_grad=False``) to be updated by :func:`ema_update` only."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``xi <- tau * xi + (1 - tau) * theta`` for every parameter pair (buffers such as BN statistics are
    left to the target's own forward passes, as in MoCo and BYOL)."""
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise RuntimeError("target and online networks have different parameter lists")
    for xi, theta in zip(t_params, o_params):
        xi.mul_(tau).add_(theta.detach(), alpha=1.0 - tau)


def cosine_momentum(tau0: float, progress: float) -> float:
    """BYOL's schedule ``tau = 1 - (1 - tau0) * (cos(pi * k / K) + 1) / 2`` with ``progress = k / K``:
    ``tau0`` at the start, 1 at the end."""
    progress = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - tau0) * (math.cos(math.pi * progress) + 1.0) / 2.0


class SSLMethod(nn.Module):
    """Base class of the self-supervised methods; subclasses set the class attributes and ``forward``."""

    name: ClassVar[str] = ""
    #: whether BatchNorm statistics should span all ranks in data-parallel training (the trainer converts
    #: the whole method with ``nn.SyncBatchNorm.convert_sync_batchnorm`` when this is True and world > 1).
    needs_sync_bn: ClassVar[bool] = True
    #: the two-view augmentation pipeline of the method's paper, a name in :data:`training.augment.PIPELINES`
    #: ("simclr": the same pipeline for both views; "byol": BYOL's asymmetric blur and solarize).
    views: ClassVar[str] = "simclr"
    #: whether the method learns from a frozen teacher (``--teacher``); the trainer then passes ``teacher=``
    #: (:class:`retrieval.init_weights.InitWeights`) and the views' ``mean``/``std`` to the constructor.
    uses_teacher: ClassVar[bool] = False
    #: paper defaults (scaled down where noted for CPU); every key may be overridden as a keyword argument.
    default_hparams: ClassVar[dict[str, Any]] = {}
    #: suggested AdamW settings at batch 256 (scale lr linearly with batch size); a starting point, not a rule.
    default_lr: ClassVar[float] = 1e-3
    default_weight_decay: ClassVar[float] = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams: Any):
        super().__init__()
        unknown = sorted(set(hparams) - set(self.default_hparams))
        if unknown:
            valid = ", ".join(sorted(self.default_hparams)) or "(none)"
            raise LookalikeError(f"unknown hyper-parameter(s) for {self.name}: {', '.join(unknown)}; valid: {valid}")
        if not isinstance(feat_dim, int) or feat_dim <= 0:
            raise LookalikeError(f"feat_dim must be a positive integer (the backbone's num_features), got {feat_dim!r}")
        self.hparams: dict[str, Any] = {**self.default_hparams, **hparams}
        self.feat_dim = feat_dim
        self.backbone = backbone

    # -- the contract -------------------------------------------------------------------------------------
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step with ``progress = step / total_steps``; no-op by default."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def param_groups(self, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimiser groups: weights with ``weight_decay``; biases and norm parameters (1-D) without.

        Every group carries ``"fixed_lr": bool``; SimSiam marks its predictor ``True`` (the paper keeps the
        predictor's learning rate constant), a trainer with a schedule should skip those groups.
        """
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        fixed = {id(p) for p in self._fixed_lr_parameters()}
        for p in self.trainable_parameters():
            key = (p.dim() <= 1, id(p) in fixed)
            groups.setdefault(key, []).append(p)
        out = []
        for (no_decay, is_fixed), params in sorted(groups.items()):
            out.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "fixed_lr": is_fixed})
        return out

    def _fixed_lr_parameters(self) -> Iterable[nn.Parameter]:
        return ()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams.items())
