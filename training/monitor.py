"""The kNN monitor: how well the backbone being trained retrieves by label on a held-out folder (``--val``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from retrieval.collection import scan
from retrieval.encoder_kinds import RUN
from retrieval.encoders import Encoder
from retrieval.errors import BadImageError, LookalikeError
from retrieval.imageio import load_image

__all__ = ["KnnMonitor", "training_encoder"]


def training_encoder(cfg, backbone: nn.Module, dim: int, device: torch.device,
                     interpolation: str | None = None) -> Encoder:
    """The backbone being trained as an :class:`Encoder` with the run's own eval preprocessing (what its index
    will use): its image size, normalisation, stem, pooling and resize filter."""
    from .augment import MEAN, STD

    aug = cfg.augment_config()
    return Encoder(spec="(training)", kind=RUN, backbone=cfg.backbone, image_size=cfg.image_size, dim=dim,
                   model=backbone, mean=tuple(aug.mean or MEAN), std=tuple(aug.std or STD), stem=cfg.stem,
                   pool=cfg.pool, device=device, interpolation=interpolation or "bilinear")


class KnnMonitor:
    """Weighted kNN accuracy (k=200 capped by the set size, T=0.1) of the current backbone on a labelled folder,
    leave-one-out: every image is classified by the labels of its nearest neighbours among the others.

    The images are decoded and preprocessed once (retrieval's own eval preprocessing, so the number means what it
    will mean at search time) and embedded in eval mode without augmentation each time.
    """

    def __init__(self, cfg, device: torch.device):
        collection = scan(cfg.val_dir, labels=True)
        items = [it for it in collection.items if it.label is not None]
        if len({it.label for it in items}) < 2:
            raise LookalikeError(f"--val {cfg.val_dir} needs images in at least two labelled sub-folders "
                                 "(one per class, e.g. val/cats/*.jpg, val/dogs/*.jpg)")
        self.cfg, self.device, self.collection, self.items = cfg, device, collection, items
        self.images: torch.Tensor | None = None
        self.labels: list[str] = []

    def _encoder(self, backbone: nn.Module, dim: int) -> Encoder:
        return training_encoder(self.cfg, backbone, dim, self.device)

    def __call__(self, backbone: nn.Module, dim: int) -> float:
        from retrieval.metrics import knn_accuracy

        encoder = self._encoder(backbone, dim)
        if self.images is None:
            tensors = []
            for it in self.items:
                try:
                    tensors.append(encoder.preprocess(load_image(self.collection.abspath(it))))
                    self.labels.append(it.label)
                except BadImageError:
                    continue
            self.images = torch.stack(tensors) if tensors else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
        if len(self.labels) < 2:
            return 0.0
        was_training = backbone.training
        backbone.eval()
        try:
            vecs = np.concatenate([encoder.embed_uint8(self.images[i:i + 256])
                                   for i in range(0, len(self.images), 256)])
        finally:
            backbone.train(was_training)
        k = min(200, len(self.labels) - 1)
        return knn_accuracy(vecs, self.labels, vecs, self.labels, k=k, temperature=0.1, exclude_self=True)
