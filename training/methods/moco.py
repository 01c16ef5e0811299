"""MoCo v2 (He et al., 2020; Chen et al., 2020): a momentum key encoder and a queue of negative keys.

    q = normalize(g_q(f_q(x_q)))      queries                        (N, C)
    k = normalize(g_k(f_k(x_k)))      keys, no gradient              (N, C)
    logits = [q.k+, q.queue^T] / T    InfoNCE, label 0                (N, 1+K)
    theta_k <- m theta_k + (1 - m) theta_q      after each optimiser step
    enqueue k (from all ranks), dequeue the oldest

Choices (documented because they differ from the reference recipe):

* Symmetric loss (``symmetric=True``): both views serve as query and as key, as in MoCo v3; each image is used
  twice per step like the other methods. Only the keys of view 2 are enqueued, so the queue holds one key per
  image. ``symmetric=False`` is the original asymmetric MoCo v2.
* BatchNorm leak: if a query and its positive key are normalised with the same batch statistics the model can
  find the positive from those statistics alone. MoCo's "shuffle BN" computes keys on a shuffled batch split
  across GPUs. Here the same effect is obtained inside each process: the batch is forwarded in ``bn_splits``
  chunks (each chunk has its own BN statistics, like one GPU each), in natural order for the queries and in a
  random permutation for the keys, which is then undone. Chunks are kept at >= 8 samples (fewer splits for
  small batches). No SyncBN is wanted (it would defeat the split), hence ``needs_sync_bn = False``.
* The queue length K need not be a multiple of the batch: the write pointer wraps around modulo K.
* m = 0.99 (MoCo v2 uses 0.999 for 800 ImageNet epochs; 0.99 suits the shorter runs on small collections).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .. import distributed as D
from ..losses import info_nce
from .base import ProjectionHead, SSLMethod, ema_update, momentum_copy


def moco_head(feat_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """MoCo v2's MLP head: Linear -> ReLU -> Linear (no BN)."""
    return ProjectionHead([(feat_dim, hidden_dim, False, True), (hidden_dim, out_dim, False, False)])


class MoCo(SSLMethod):
    name = "moco"
    needs_sync_bn = False
    default_hparams = {"K": 4096, "m": 0.99, "temperature": 0.2, "hidden_dim": None, "out_dim": 128,
                       "symmetric": True, "bn_splits": 4}
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.K, self.m, self.T = int(hp["K"]), float(hp["m"]), float(hp["temperature"])
        if self.K < 1:
            raise LookalikeError(f"queue length K must be >= 1, got {self.K}")
        if not 0.0 <= self.m <= 1.0:
            raise LookalikeError(f"momentum m must be in [0, 1], got {self.m}")
        self.symmetric = bool(hp["symmetric"])
        self.bn_splits = max(1, int(hp["bn_splits"]))
        self.projector = moco_head(feat_dim, hp["hidden_dim"] or feat_dim, hp["out_dim"])
        # encoder_k = f_k + g_k, a frozen copy updated only by momentum
        self.encoder_k = momentum_copy(nn.Sequential(self.backbone, self.projector))
        self.register_buffer("queue", F.normalize(torch.randn(self.K, hp["out_dim"]), dim=1))  # (K, C)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite

    # -- encoders -----------------------------------------------------------------------------------------
    def _splits(self, n: int) -> int:
        return max(1, min(self.bn_splits, n // 8))

    def encode_q(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C) normalised queries, BN statistics per chunk."""
        chunks = x.chunk(self._splits(x.shape[0]))
        return F.normalize(torch.cat([self.projector(self.backbone(c)) for c in chunks]), dim=1)

    @torch.no_grad()
    def encode_k(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C) normalised keys, computed on a shuffled batch (shuffle BN within the process)."""
        n = x.shape[0]
        perm = torch.randperm(n, device=x.device)  # (N,)
        chunks = x[perm].chunk(self._splits(n))
        k_shuffled = torch.cat([self.encoder_k(c) for c in chunks])  # (N, C) in permuted order
        k = torch.empty_like(k_shuffled)
        k[perm] = k_shuffled  # undo the shuffle
        return F.normalize(k, dim=1)

    # -- the method ---------------------------------------------------------------------------------------
    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        q1 = self.encode_q(x1)  # (N, C)
        k2 = self.encode_k(x2)  # (N, C)
        queue = self.queue.clone()  # (K, C) snapshot: the enqueue below must not alter the autograd inputs
        loss = info_nce(q1, k2, queue, self.T)
        if self.symmetric:
            q2 = self.encode_q(x2)  # (N, C)
            k1 = self.encode_k(x1)  # (N, C)
            loss = 0.5 * (loss + info_nce(q2, k1, queue, self.T))
        if self.training:
            self._dequeue_and_enqueue(D.gather_no_grad(k2))  # keys of all ranks, (W*N, C)
        return loss

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (n, C) at the pointer, wrapping around; the oldest keys are overwritten."""
        keys = keys[-self.K:]  # a batch larger than the queue keeps only its newest K keys
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % self.K  # (n,)
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % self.K)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q (constant m, as in MoCo)."""
        ema_update(self.encoder_k, nn.Sequential(self.backbone, self.projector), self.m)
