"""Batch normalisation over the global batch of a data-parallel run, on any device.

``torch.nn.SyncBatchNorm`` only runs on GPUs. Data-parallel training on CPUs (``torchrun`` with the gloo backend,
e.g. to check a multi-GPU recipe on a laptop) still needs batch statistics over the *global* batch — SimCLR,
BYOL, SimSiam and Barlow Twins all use global BN — or the result depends on how many processes ran it. This is a
plain implementation for that case:

    mean = sum_r S1_r / N,  var = sum_r S2_r / N     (S1: per-rank sums of x, S2: of (x - mean)^2, N: global count)

with the sums all-reduced by a differentiable all-reduce (:class:`_AllReduceSum`), so gradients flow through the
statistics exactly as in single-process BN over the whole batch. On GPUs the trainer uses ``nn.SyncBatchNorm``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "convert_global_bn"]


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's loss depends on y, so d(sum of losses)/dx = sum over ranks of dL/dy:
    the backward is the same all-reduce."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(_BatchNorm):
    """Drop-in replacement for ``BatchNorm1d/2d/3d`` whose training statistics span all ranks.

    Same parameters and buffers (so state dicts keep their keys); eval mode and single-process runs use the
    ordinary ``F.batch_norm`` path.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self._post(super().forward(x))
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        # two passes (mean, then the centred second moment): E[x^2] - E[x]^2 in float32 loses the variance of
        # channels whose mean is large against their spread
        count = torch.tensor([x.numel() // c], dtype=torch.float32, device=x.device)
        first = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))  # (C + 1,) summed over ranks
        n = first[-1]
        mean = first[:c] / n  # (C,)
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n  # (C,) biased, used to normalise
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        y = y.to(x.dtype)
        # timm's BatchNormAct2d folds dropout + activation into the norm layer; keep them when converting one
        return self._post(y)

    def _post(self, y: torch.Tensor) -> torch.Tensor:
        for extra in ("drop", "act"):
            sub = self._modules.get(extra)
            if sub is not None:
                y = sub(y)
        return y


def convert_global_bn(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm*d`` in ``module`` by :class:`GlobalBatchNorm`, keeping parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.train(module.training)
        for extra in ("drop", "act"):  # timm BatchNormAct2d
            sub = getattr(module, extra, None)
            if isinstance(sub, nn.Module):
                new.add_module(extra, sub)
        with torch.no_grad():
            if module.affine:
                new.weight = module.weight
                new.bias = module.bias
            if module.track_running_stats:
                new.running_mean = module.running_mean
                new.running_var = module.running_var
                new.num_batches_tracked = module.num_batches_tracked
        return new
    for name, child in module.named_children():
        new_child = convert_global_bn(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
