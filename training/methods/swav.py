"""SwAV (Caron et al., 2020): swap the cluster assignments of the views of an image: cluster discrimination.

    z = normalize(g(f(x)))         projections of every crop (2 global views, then the local ones)   (B, D)
    scores = z C^T                 scores against K L2-normalised prototypes C (K, D)                (B, K)
    q = Sinkhorn(scores_global / eps)   codes of the two global views: soft assignments whose columns share
                                   the (global) batch equally (equipartition), no gradient           (B, K)
    loss = mean over pairs (i global, v != i) of -sum_k q_i log softmax(scores_v / T)
    C <- normalize(C)              after each optimiser step

SwAV rather than DeepCluster-v2: both cluster with prototypes, but DeepCluster-v2 re-runs k-means over the whole
collection's features at every epoch (a second pass over the data and a feature bank the size of the folder,
outside the step), while SwAV assigns online within each batch, so it fits the trainer's one-step contract, its
time budgets and its exact resume unchanged; and it is the method that made multi-crop, which this project now
shares (``--local-crops``).

Details, and where they depart from the paper:

* The codes of a data-parallel run are computed on the scores of the whole global batch (gathered from every
  rank, plus the queue), and each rank keeps its own rows: the same codes as one process with the global batch.
* Queue: small batches cannot spread over K prototypes, so (as the paper does below batch 256) the projections of
  the last ``queue_length`` global views of each kind join the Sinkhorn step once the queue is full; it is a buffer,
  so it survives a checkpoint. Default 1024 (the paper: 3840).
* K = 256 prototypes, projection 128, hidden 512 (the paper: 3000, 128, 2048, for ImageNet and ResNet-50); the
  paper freezes the prototypes for the first epoch, which is left out (runs here are often shorter than that).
* Multi-crop by default: 4 local crops (``--local-crops``; the paper's 2x224 + 6x96).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .. import distributed as D
from ..losses import sinkhorn, swav_loss
from .base import ProjectionHead, SSLMethod

N_GLOBAL = 2  # the views that get codes


class SwAV(SSLMethod):
    name = "swav"
    needs_sync_bn = True
    multi_crop = True
    default_local_crops = 4
    default_hparams = {"hidden_dim": 512, "out_dim": 128, "prototypes": 256, "temperature": 0.1, "epsilon": 0.05,
                       "sinkhorn_iters": 3, "queue_length": 1024}
    default_lr = 1e-3
    default_weight_decay = 1e-6  # the paper's

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        self.temperature, self.eps = float(hp["temperature"]), float(hp["epsilon"])
        self.iters = int(hp["sinkhorn_iters"])
        self.queue_length, out_dim = int(hp["queue_length"]), int(hp["out_dim"])
        if min(self.temperature, self.eps) <= 0 or self.iters < 1 or self.queue_length < 0:
            raise LookalikeError("swav needs temperature, epsilon > 0, sinkhorn_iters >= 1 and queue_length >= 0")
        hidden = int(hp["hidden_dim"])
        self.projector = ProjectionHead([(feat_dim, hidden, True, True), (hidden, out_dim, False, False)])  # g
        self.prototypes = nn.Linear(out_dim, int(hp["prototypes"]), bias=False)  # C (K, D)
        self.normalise_prototypes()
        self.register_buffer("queue", torch.zeros(N_GLOBAL, self.queue_length, out_dim))  # newest first
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embed(self, crops: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Crops of one size per backbone pass: the global views together, then the local ones: [(B, D), ...]."""
        groups = [crops[:N_GLOBAL], crops[N_GLOBAL:]] if len(crops) > N_GLOBAL else [crops]
        out: list[torch.Tensor] = []
        for group in groups:
            z = F.normalize(self.projector(self.backbone(torch.cat(group))), dim=1)  # (len(group) * B, D)
            out += list(z.chunk(len(group)))
        return out

    @torch.no_grad()
    def codes(self, z: torch.Tensor, scores: torch.Tensor, view: int) -> torch.Tensor:
        """Sinkhorn codes (B, K) of this rank's ``scores``, computed over the global batch and a full queue."""
        all_scores = D.gather_no_grad(scores.float())  # (W*B, K)
        if self.queue_length and int(self.queue_filled) >= self.queue_length:
            all_scores = torch.cat([self.queue[view] @ self.prototypes.weight.T, all_scores])
        q = sinkhorn(all_scores, self.eps, self.iters)[-D.world_size() * z.shape[0]:]  # the batch's rows
        start = D.rank() * z.shape[0]
        return q[start:start + z.shape[0]]

    @torch.no_grad()
    def _enqueue(self, z_global: list[torch.Tensor]) -> None:
        for view, z in enumerate(z_global):
            z_all = D.gather_no_grad(z.float())  # (W*B, D)
            self.queue[view] = torch.cat([z_all, self.queue[view]])[:self.queue_length]
        self.queue_filled.fill_(min(self.queue_length, int(self.queue_filled) + z_all.shape[0]))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *local: torch.Tensor) -> torch.Tensor:
        z = self.embed((x1, x2, *local))  # 2 + N x (B, D)
        scores = [self.prototypes(zi) for zi in z]  # 2 + N x (B, K)
        codes = [self.codes(z[v], scores[v].detach(), v) for v in range(N_GLOBAL)]
        loss = swav_loss(scores, codes, self.temperature)
        if self.training and self.queue_length:
            self._enqueue(z[:N_GLOBAL])
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.normalise_prototypes()
