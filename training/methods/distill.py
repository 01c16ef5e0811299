"""Distillation (SimCLRv2's third step; LightlyTrain's default): a student learns a frozen teacher's embedding of
augmented views of the collection, without labels.

    t = normalise(teacher(resize(x, teacher's size), teacher's mean/std))   frozen, eval mode, no grad
    s = normalise(projector(student(resize(x, student's size))))   projector: identity when the widths agree,
                                                                    else a Linear
    loss = mean over both views of ||s - t||^2  (= 2 - 2 cos: MSE of the L2-normalised vectors)
           + relational * mean((S S^T - T T^T)^2) over the batch (how the images relate to each other)

Both views of each image are embedded (the two-view loader gives them; twice the teacher's work, twice the
signal). The teacher is the trainer's to load (``--teacher SPEC``, :class:`retrieval.init_weights.InitWeights`); it is
held outside the module tree: not in ``state_dict()`` (the run records its spec and digest instead), not among
the parameters (so not in the optimiser nor in DDP's reducer), never switched to train mode; ``.to()`` moves it
with the student. The trainer makes the views at the larger of the two input sizes (``Sources.view_size``), so a
teacher that takes larger images than its student sees them sharp, and the student sees them shrunk to the run's
image size (antialiased, as an index resizes) in the run's normalisation (``mean``/``std``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.encoders import IMAGENET_MEAN, IMAGENET_STD, pooled_features
from retrieval.errors import LookalikeError

from .base import SSLMethod


def resized(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), antialiased when shrinking; unchanged when ``size`` is None or its own."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


class Distill(SSLMethod):
    name = "distill"
    needs_sync_bn = False  # a per-image regression: nothing compares images across the batch's BN statistics
    uses_teacher = True
    default_hparams = {"relational": 1.0}

    def __init__(self, backbone: nn.Module, feat_dim: int, teacher: Any = None,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 image_size: int | None = None, **hparams: Any):
        super().__init__(backbone, feat_dim, **hparams)
        if teacher is None:
            raise LookalikeError("--method distill needs --teacher SPEC (the encoder to learn from)")
        self.relational = float(self.hparams["relational"])
        self.student_size = image_size  # None: the views' own size
        self._teacher = (teacher.model.eval().requires_grad_(False),)  # a tuple: outside the module tree
        self.teacher_size, self.teacher_pool, self.teacher_dim = teacher.image_size, teacher.pool, teacher.dim
        for name, value in (("in_mean", mean), ("in_std", std), ("t_mean", teacher.mean), ("t_std", teacher.std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.projector = nn.Identity() if feat_dim == teacher.dim else nn.Linear(feat_dim, teacher.dim)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):  # .to(), .float()…: the teacher follows the student
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def teacher_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) views normalised for the student -> (B, teacher_dim) L2-normalised teacher embeddings."""
        x = resized(x.float() * self.in_std + self.in_mean, self.teacher_size)  # [0, 1] pixels, its size
        x = ((x - self.t_mean) / self.t_std).contiguous(memory_format=torch.channels_last)
        return F.normalize(pooled_features(self.teacher, x, self.teacher_pool).float(), dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x1, x2])  # (2B, 3, S, S): both views in one pass of each network
        t = self.teacher_embedding(x)  # (2B, teacher_dim), no grad
        x = resized(x, self.student_size).contiguous(memory_format=torch.channels_last)  # (linear: commutes
        s = F.normalize(self.projector(self.backbone(x)).float(), dim=1)  # with the normalisation) (2B, dim)
        loss = (s - t).pow(2).sum(dim=1).mean()
        if self.relational:
            loss = loss + self.relational * (s @ s.T - t @ t.T).pow(2).mean()
        return loss
