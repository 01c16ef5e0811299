"""Data-parallel training (``torchrun`` + ``torch.distributed``): helpers that are no-ops in one process, and the
trainer's view of its process group (:class:`Distributed`, :func:`sync_batchnorm`, :func:`wrap_ddp`).

Everything here works unchanged when ``torch.distributed`` is not initialised: ``rank() == 0``,
``world_size() == 1`` and the gathers return their input. The methods call these helpers themselves, so a
method's ``forward`` is the same code on a laptop and on eight GPUs.

The gathers assume every rank passes a tensor of the same shape (the trainer's ``DistributedSampler`` with
``drop_last=True`` guarantees equal per-rank batches).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["is_dist", "rank", "world_size", "gather_with_grad", "gather_no_grad", "all_reduce_mean",
           "Distributed", "sync_batchnorm", "wrap_ddp"]


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
    """Concatenate ``t`` (N, ...) from all ranks into (W*N, ...), keeping the autograd graph. Identity in one
    process."""
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


# -- the trainer's process group ---------------------------------------------------------------------------------
@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run directly)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @classmethod
    def start(cls, device_pref: str) -> Distributed:
        from retrieval.encoders import resolve_device

        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        joined = dist.is_available() and dist.is_initialized()
        if not joined and env_world <= 1:
            return cls(device=resolve_device(device_pref))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_pref)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank if device.index is None else device.index)
            torch.cuda.set_device(device)
        owns = False
        if not joined:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (one small all-reduce; identity in one process)."""
        if self.world == 1:
            return list(values)
        shared = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(shared)
        return shared.cpu().tolist()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def sync_batchnorm(method: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on GPUs (via timm, which also converts its
    BatchNormAct layers), our own all-reduce version on CPUs where SyncBatchNorm refuses to run."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(method)
    from .sync_bn import convert_global_bn

    return convert_global_bn(method)


def wrap_ddp(method: nn.Module, ddp: Distributed) -> nn.Module:
    """DDP over the method; its reducer holds only parameters with ``requires_grad`` (the momentum/EMA copies
    are frozen and updated by ``after_step`` on every rank alike). Buffers are not re-broadcast each step: with
    global BN they already agree, and MoCo's queue is filled from all ranks' keys."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ddp.device.index] if ddp.device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:  # newer torch's name for it
        return DDP(method, device_ids=ids, forward_sync_buffers=False)
    return DDP(method, device_ids=ids, broadcast_buffers=False)
