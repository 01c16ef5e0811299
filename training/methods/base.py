"""What every self-supervised method shares: the module contract, hyper-parameter handling, heads and EMA.

Contract (the trainer relies on exactly this):

* ``Method(backbone, feat_dim, **hparams)``; ``backbone`` maps normalised images (B, 3, H, W) to pooled features
  (B, feat_dim) and is the only part exported for retrieval (``method.backbone.state_dict()``).
* ``loss = method(x1, x2, *local)``: two normalised float views (B, 3, H, W) of the same B images, then the
  multi-crop's local views (B, 3, s, s), s < H, when the method takes them (``multi_crop``; none otherwise:
  ``method(x1, x2)``) -> scalar loss.
* ``Method(..., mean=, std=)``: the normalisation of the views, for methods that need real pixels back
  (``self.pixel_mean`` / ``self.pixel_std``, (1, 3, 1, 1) buffers, not saved: the run records them).
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

from retrieval.encoders import IMAGENET_MEAN, IMAGENET_STD
from retrieval.errors import LookalikeError

__all__ = ["SSLMethod", "ProjectionHead", "LayerSpec", "PixelDecoder", "momentum_copy", "ema_update",
           "cosine_momentum"]

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


class PixelDecoder(nn.Module):
    """A light decoder from pooled features back to an image-shaped map (the generative methods' decoder).

        (B, feat_dim) -Linear-> (B, C, 4, 4) -[upsample x2 -> 3x3 conv -> BN -> ReLU] x n-> (B, C', 4 * 2^n, ...)
        -1x1 conv-> (B, out_channels, size, size)

    Channels halve at each stage from ``width`` (at least 16); ``size`` must be 4 times a power of two (the
    upsampling stages), and a size that is not is reached by a final bilinear resize. Decoding from the *pooled*
    vector forces everything the reconstruction needs into what the index stores.
    """

    def __init__(self, feat_dim: int, out_channels: int, size: int, width: int = 128):
        super().__init__()
        if size < 4:
            raise LookalikeError(f"the decoder needs an output of at least 4 px, got {size}")
        self.size, self.width = int(size), int(width)
        self.stem = nn.Linear(feat_dim, width * 16)
        stages, c = [], width
        while 4 * 2 ** len(stages) < size:
            c_out = max(16, c // 2)
            stages += [nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                     nn.ReLU(inplace=True))]
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(c, out_channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, feat_dim) -> (B, out_channels, size, size)
        y = self.head(self.stages(self.stem(h).view(h.shape[0], self.width, 4, 4)))
        if y.shape[-1] != self.size:
            y = nn.functional.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return y


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
    #: whether ``forward`` takes the multi-crop's local views after the two global ones (``--local-crops N``),
    #: and how many it gets when the run does not say.
    multi_crop: ClassVar[bool] = False
    default_local_crops: ClassVar[int] = 0
    #: paper defaults (scaled down where noted for CPU); every key may be overridden as a keyword argument.
    default_hparams: ClassVar[dict[str, Any]] = {}
    #: suggested AdamW settings at batch 256 (scale lr linearly with batch size); a starting point, not a rule.
    default_lr: ClassVar[float] = 1e-3
    default_weight_decay: ClassVar[float] = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, **hparams: Any):
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
        for name, value in (("pixel_mean", mean), ("pixel_std", std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # -- the contract -------------------------------------------------------------------------------------
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The loss of two views; a method with ``multi_crop`` adds ``*local: torch.Tensor`` (its small crops)."""
        raise NotImplementedError

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised views (B, 3, H, W) -> their [0, 1] pixels (B, 3, H, W), float32."""
        return x.float() * self.pixel_std + self.pixel_mean

    def normalised(self, p: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, 3, H, W) -> the views' normalisation (the inverse of :meth:`pixels`)."""
        return (p - self.pixel_mean) / self.pixel_std

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
