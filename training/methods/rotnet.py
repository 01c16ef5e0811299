"""RotNet (Gidaris, Singh & Komodakis, 2018): learn features by predicting which of four rotations was applied.

    x_r = rot(x, 90 r degrees), r in {0, 1, 2, 3}      both views, every image
    logits = classifier(f(x_r))                          (., 4)
    loss = cross-entropy(logits, r)                      (chance level: log 4 = 1.386)

One rotation per view (``all_rotations=False``, the default): each view of each image is rotated by its own
uniformly drawn multiple of 90 degrees, so a step costs about what a step of SimCLR costs (docs/measurements.md,
"Optimiser and method costs") and every image still gives two labelled samples. The paper feeds all four rotated
copies of each image in the same batch (``all_rotations=True``: 8 images per image of the batch) and
reports that this trains better than one random rotation per image, since every image then contributes a
balanced, complete set of labels; it costs 4.9x SimCLR per step, too much for "the cheap method" on a CPU, so it
is an option, not the default.

The paper's classifier sits on convolutional blocks; here the backbone is the whole feature extractor and the
classifier is an MLP on its pooled features (``hidden_dim=0``: a linear classifier). Rotation by multiples of
90 degrees needs square views (the trainer's views are). No in-batch negatives, so BatchNorm stays per process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import LookalikeError

from .base import ProjectionHead, SSLMethod

N_ROTATIONS = 4


def classifier_head(feat_dim: int, hidden_dim: int, classes: int) -> ProjectionHead:
    """Linear -> BN -> ReLU -> Linear to ``classes`` logits, or a single Linear with ``hidden_dim=0``."""
    if hidden_dim <= 0:
        return ProjectionHead([(feat_dim, classes, False, False)])
    return ProjectionHead([(feat_dim, hidden_dim, True, True), (hidden_dim, classes, False, False)])


def rotate_batch(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rotate each square image of (B, C, S, S) by ``90 * r[b]`` degrees counter-clockwise; r: (B,) in 0..3."""
    if x.shape[-1] != x.shape[-2]:
        raise LookalikeError(f"rotation needs square views, got {x.shape[-2]}x{x.shape[-1]}")
    out = torch.empty_like(x)
    for k in range(N_ROTATIONS):
        sel = (r == k).nonzero().squeeze(1)
        if len(sel):
            out[sel] = torch.rot90(x[sel], k, dims=(2, 3))
    return out


class RotNet(SSLMethod):
    name = "rotnet"
    needs_sync_bn = False
    default_hparams = {"hidden_dim": None, "all_rotations": False}  # hidden_dim None -> feat_dim

    def __init__(self, backbone: nn.Module, feat_dim: int, **hparams):
        super().__init__(backbone, feat_dim, **hparams)
        hp = self.hparams
        hidden = feat_dim if hp["hidden_dim"] is None else int(hp["hidden_dim"])
        self.all_rotations = bool(hp["all_rotations"])
        self.classifier = classifier_head(feat_dim, hidden, N_ROTATIONS)
        self.last_accuracy = torch.tensor(float("nan"))  # on the latest batch (a tensor: no device sync per step)

    def rotated(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> rotated images and their labels: (4B, ...) and (4B,), or (B, ...) and (B,)."""
        b = x.shape[0]
        if self.all_rotations:
            labels = torch.arange(N_ROTATIONS).repeat_interleave(b)  # (4B,) [0]*B + [1]*B + ...
            images = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(N_ROTATIONS)])
            return images, labels.to(x.device)
        labels = torch.randint(0, N_ROTATIONS, (b,)).to(x.device)  # CPU draw: the same on every device
        return rotate_batch(x, labels), labels

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        images, labels = self.rotated(torch.cat([x1, x2]))  # both views: (8B or 2B, 3, S, S)
        logits = self.classifier(self.backbone(images))  # (., 4)
        with torch.no_grad():
            self.last_accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return F.cross_entropy(logits.float(), labels)
