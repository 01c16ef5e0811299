"""The weights a training run starts from or learns from: :func:`load_init` turns an encoder spec (a pretrained
``timm:NAME`` or a run directory) into :class:`InitWeights`, the backbone module plus what keeps it used the way its
weights expect (input size, normalisation, resize filter, stem, pooling, identity)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .encoder_kinds import kind_named
from .encoders import Encoder, load_encoder
from .errors import LookalikeError

__all__ = ["InitWeights", "load_init"]


@dataclass(frozen=True)
class InitWeights:
    """A backbone to start training from, and what keeps it used the way its weights expect."""

    spec: str                            # where it came from (a pretrained spec or a run directory)
    backbone: str                        # timm model name; build_backbone(backbone, stem=stem) fits `model`'s state
    model: nn.Module                     # that backbone (num_classes=0) with the weights, CPU, train mode, grads on
    image_size: int                      # input pixels the weights were made for (the spec's ?size= if it gave one)
    mean: tuple[float, float, float]     # normalisation of its inputs
    std: tuple[float, float, float]
    interpolation: str                   # resize filter of its eval preprocessing ("bicubic", "bilinear")
    stem: str
    pool: str
    dim: int                             # width of the pooled embedding
    identity: dict                       # encoder identity; identity["weights"] is the weights' digest

    @property
    def weights(self) -> str:
        return self.identity["weights"]

    @classmethod
    def from_encoder(cls, enc: Encoder) -> "InitWeights":
        if not kind_named(enc.kind).trained:
            raise LookalikeError(f"{enc.spec!r} has no trained weights to start from: give a pretrained spec "
                                 "(timm:NAME, e.g. timm:tf_efficientnet_lite0) or a training run directory")
        model = enc.model.train().requires_grad_(True)
        return cls(enc.spec, enc.backbone, model, enc.image_size, tuple(enc.mean), tuple(enc.std),
                   enc.interpolation, enc.stem, enc.pool, enc.dim, enc.identity)


def load_init(spec: str) -> InitWeights:
    """The weights a spec names, ready to fine-tune or to teach from. Raises LookalikeError for a kind without
    trained weights (``pixels``, ``random:``: nothing to start from) and whatever :func:`load_encoder` raises."""
    return InitWeights.from_encoder(load_encoder(spec))
