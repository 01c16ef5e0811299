"""Self-supervised methods by name. Adding a method = one module + one line in ``METHODS``."""

from __future__ import annotations

from typing import Any

from torch import nn

from retrieval.errors import LookalikeError

from .barlow import BarlowTwins
from .base import ProjectionHead, SSLMethod
from .byol import BYOL
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow": BarlowTwins,
}


def build_method(name: str, backbone: nn.Module, feat_dim: int, **hparams: Any) -> SSLMethod:
    """``METHODS[name](backbone, feat_dim, **hparams)`` with an error that lists the valid names."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise LookalikeError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
    return cls(backbone, feat_dim, **hparams)


__all__ = ["METHODS", "build_method", "SSLMethod", "ProjectionHead",
           "SimCLR", "MoCo", "BYOL", "SimSiam", "BarlowTwins"]
