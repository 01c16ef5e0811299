"""Helpers for data-parallel training (``torchrun`` + ``torch.distributed``) that are no-ops in one process.

Everything here works unchanged when ``torch.distributed`` is not initialised: ``rank() == 0``,
``world_size() == 1`` and the gathers return their input. The methods call these helpers themselves, so a
method's ``forward`` is the same code on a laptop and on eight GPUs.

The gathers assume every rank passes a tensor of the same shape (the trainer's ``DistributedSampler`` with
``drop_last=True`` guarantees equal per-rank batches).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_dist", "rank", "world_size", "gather_with_grad", "gather_no_grad", "all_reduce_mean"]


def is_dist() -> bool:
    """True when running under an initialised process group with more than zero peers."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward routes every rank's gradient back to the rank that owns the slice.

    Forward: ``t`` (N, ...) on each of W ranks -> (W*N, ...), identical on all ranks, ordered by rank.
    Backward: each rank holds d(its own loss)/d(gathered). The gradient of the *sum* of all ranks' losses with
    respect to this rank's ``t`` is the sum over ranks of their gradients for this rank's slice, so the
    backward all-reduces (sums) the incoming gradient and returns this rank's slice. DDP then averages the
    parameter gradients over ranks, which yields the gradient of the mean of the per-rank losses.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.n = t.shape[0]
        parts = [torch.empty_like(t) for _ in range(ctx.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)  # (W*N, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.n
        return grad[start:start + ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N, ...) from all ranks into (W*N, ...), keeping the autograd graph. Identity in one process."""
    if not is_dist() or world_size() == 1:
        return t
    return _GatherWithGrad.apply(t)


@torch.no_grad()
def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N, ...) from all ranks into (W*N, ...) without gradient (e.g. MoCo keys for the queue)."""
    if not is_dist() or world_size() == 1:
        return t.detach()
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor; the input is not modified). Identity in one process."""
    if not is_dist() or world_size() == 1:
        return t.detach().clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()
