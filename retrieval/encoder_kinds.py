"""The encoder kinds, one row each: how a spec of the kind is written and recognised, what builds it, and the facts
the rest of the house asks about it (whether it has learned weights to start a training run from, whether it runs
a network, how its identity reads).

A spec string (``pixels``, ``random:resnet18?size=64``, ``timm:tf_efficientnet_lite0``, ``runs/NAME``) names one
row of :data:`KINDS`: :func:`kind_of` finds it, :func:`retrieval.encoders.load_encoder` calls its ``build``; the
CLI's help, the UI's suggestions, the training settings' checks and the identity's short form all read the table, so
adding a kind is adding a row (``KINDS[row.name] = row``). Torch-free: a row names its builder as
``"module:function"``, imported when a spec of the kind is first built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LookalikeError

__all__ = ["EncoderKind", "KINDS", "kind_of", "kind_named", "specs_help", "suggestions", "network_of",
           "describe_network", "RUN"]


@dataclass(frozen=True)
class EncoderKind:
    """One encoder kind (a row of :data:`KINDS`). ``name`` is what an identity (and an index manifest) records."""

    name: str
    syntax: str  # how a spec of this kind is written, for help and errors: "random:NAME"
    matches: Callable[[str], bool]  # whether a spec string is of this kind
    build: str | Callable[..., Any]  # (spec, torch.device) -> Encoder, or "module:function" naming it
    trained: bool = False  # its weights were learned: it can start (--init) or teach (--teacher) a training run
    network: bool = True  # a network on normalised images; False: a fixed function of the raw 0-255 pixel values
    folder: bool = False  # a spec names a folder on disk; matched after every other kind, as the last resort
    network_of: Callable[[str], str] | None = None  # the network a spec names; None: the text after "KIND:"
    describe: Callable[[dict], str] | None = None  # short form of an identity; None: describe_network
    suggestions: tuple[str, ...] = ()  # specs the UI offers

    def builder(self) -> Callable[..., Any]:
        if callable(self.build):
            return self.build
        module, _, function = self.build.partition(":")
        return getattr(importlib.import_module(module), function)


def _prefixed(prefix: str) -> Callable[[str], bool]:
    return lambda spec: spec.startswith(prefix)


def describe_network(identity: dict, weights_chars: int | None = None) -> str:
    """``simclr resnet10t @64px grid (3fa2c1d0)``: the method (or kind), network, input size, pooling, scales,
    weights."""
    weights = str(identity.get("weights", ""))[:weights_chars]
    label = identity.get("method") or identity.get("kind")
    pool = f" {identity['pool']}" if identity.get("pool", "avg") != "avg" else ""
    scales = f" x[{identity['scales']}]" if identity.get("scales", "1") != "1" else ""
    return f"{label} {identity.get('backbone')} @{identity.get('image_size')}px{pool}{scales} ({weights})"


def _describe_pixels(identity: dict) -> str:
    return f"pixels {identity.get('image_size')}x{identity.get('image_size')}"


def _folder_name(spec: str) -> str:
    return Path(spec.partition("?")[0]).name


_ENCODERS = "retrieval.encoders"
RUN = "run"  # the kind of a training run's encoder (what a run's encoder.json says)

KINDS: dict[str, EncoderKind] = {k.name: k for k in (
    EncoderKind("pixels", "pixels", lambda spec: spec == "pixels", f"{_ENCODERS}:pixels_encoder", network=False,
                network_of=lambda spec: "pixels", describe=_describe_pixels, suggestions=("pixels",)),
    EncoderKind("random", "random:NAME", _prefixed("random:"), f"{_ENCODERS}:random_encoder",
                suggestions=("random:resnet10t?size=64", "random:resnet18?size=64&stem=small")),
    EncoderKind("timm", "timm:NAME", _prefixed("timm:"), f"{_ENCODERS}:timm_encoder", trained=True),
    EncoderKind(RUN, "runs/RUN", lambda spec: True, f"{_ENCODERS}:run_encoder", trained=True, folder=True,
                network_of=_folder_name, describe=lambda identity: describe_network(identity, 8)),
)}


def kind_of(spec: str) -> EncoderKind:
    """The row a spec string names (a folder kind, a training run, is the last resort: any other text)."""
    spec = str(spec).strip()
    for row in sorted(KINDS.values(), key=lambda row: row.folder):
        if row.matches(spec):
            return row
    raise LookalikeError(f"unknown encoder {spec!r}: use {specs_help(' or ')}")


def kind_named(name: str | None) -> EncoderKind | None:
    """The row an identity's ``kind`` names; None for a kind this version does not know."""
    return KINDS.get(str(name))


def specs_help(last: str = " | ") -> str:
    """How each kind's specs are written: ``pixels | random:NAME | timm:NAME | runs/RUN``."""
    syntaxes = [row.syntax for row in sorted(KINDS.values(), key=lambda row: row.folder)]
    return " | ".join(syntaxes) if last == " | " else ", ".join(syntaxes[:-1]) + last + syntaxes[-1]


def suggestions() -> list[str]:
    return [spec for row in KINDS.values() for spec in row.suggestions]


def network_of(spec: str) -> str:
    """The network a spec names, e.g. ``tf_efficientnet_lite0`` for ``timm:tf_efficientnet_lite0?size=128``, a run's
    folder name for a run."""
    row = kind_of(spec)
    if row.network_of is not None:
        return row.network_of(spec)
    return spec.partition(":")[2].partition("?")[0]
