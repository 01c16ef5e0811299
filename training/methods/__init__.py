"""Self-supervised methods by name. Adding a method = one module + one line in ``_REGISTRY``.

The registry maps a name to ``"module:Class"`` inside this package and imports the module only when the class is
asked for, so the names (``tuple(METHODS)``, the CLI's and the UI's choices) are known without importing torch.
Everything else a method needs to declare (its hyper-parameters, its augmentation pipeline ``views``, whether it
wants global BatchNorm) is a class attribute of the method itself (:class:`training.methods.base.SSLMethod`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from retrieval.errors import LookalikeError

if TYPE_CHECKING:
    from torch import nn

    from .base import SSLMethod

_REGISTRY: dict[str, str] = {
    "simclr": "simclr:SimCLR",
    "moco": "moco:MoCo",
    "byol": "byol:BYOL",
    "simsiam": "simsiam:SimSiam",
    "barlow": "barlow:BarlowTwins",
    "rotnet": "rotnet:RotNet",
    "jigsaw": "jigsaw:Jigsaw",
    "cpc": "cpc:CPC",
    "triplet": "pairwise:Triplet",
    "margin": "pairwise:MarginContrastive",
    "distill": "distill:Distill",
    "mae": "mae:MaskedAutoencoder",
    "colour": "colour:Colourisation",
    "swav": "swav:SwAV",
    "dino": "dino:DINO",
}


class MethodRegistry(Mapping):
    """A read-only ``name -> method class`` mapping that imports a method's module on first access."""

    def __init__(self, entries: dict[str, str]):
        self._entries = entries
        self._loaded: dict[str, type] = {}

    def __getitem__(self, name: str) -> type[SSLMethod]:
        if name not in self._loaded:
            module, cls = self._entries[name].split(":")  # KeyError for an unknown name, as a dict
            self._loaded[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"MethodRegistry({', '.join(self._entries)})"


METHODS = MethodRegistry(_REGISTRY)


def get_method(name: str) -> type[SSLMethod]:
    """The class registered as ``name``, with an error that lists the valid names."""
    if name not in METHODS:
        raise LookalikeError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, backbone: nn.Module, feat_dim: int, **hparams: Any) -> SSLMethod:
    """``METHODS[name](backbone, feat_dim, **hparams)`` with an error that lists the valid names."""
    return get_method(name)(backbone, feat_dim, **hparams)


# the classes stay importable from here (``from training.methods import SimCLR``), loaded on first use
_LAZY = {"SSLMethod": "base:SSLMethod", "ProjectionHead": "base:ProjectionHead",
         **{target.split(":")[1]: target for target in _REGISTRY.values()}}


def __getattr__(attr: str) -> Any:
    if attr not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    module, cls = _LAZY[attr].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["METHODS", "MethodRegistry", "get_method", "build_method", *_LAZY]
