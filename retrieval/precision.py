"""Numeric precision of a model on its device: what an encoder embeds in, and what ``precision=auto`` trains in.

Both follow one rule: bf16 where the hardware computes it natively — a CUDA GPU with bf16, or a CPU with AMX tiles
or AVX512-BF16 — and fp32 elsewhere, where bf16 is emulated and slower than fp32 (training on a
GPU without bf16 takes fp16 with a gradient scaler instead: ``training.runtime.resolve_precision``).

Embedding (:func:`embed_dtype`, used by :class:`retrieval.encoders.Encoder`): the forward pass runs under bf16
autocast, the pooled features are cast back to float32 before they are normalised, so an index stores float32
vectors whatever the precision. An image's bf16 and fp32 vectors agree closely enough that an index built in one
precision answers queries embedded in the other (``tests/retrieval/test_precision.py`` checks a cosine above
0.99); the speed and agreement figures: ``bench/embed_precision.py``, its result ``bench/results/embed_precision.json``
and docs/measurements.md, "Embedding precision".
``LOOKALIKE_EMBED_PRECISION=fp32`` (or ``bf16``) overrides the rule.
"""

from __future__ import annotations

import os

import torch

from .errors import LookalikeError

__all__ = ["cpu_has_native_bf16", "cpu_has_amx", "embed_dtype", "ENV", "CHOICES"]

ENV = "LOOKALIKE_EMBED_PRECISION"
CHOICES = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16)."""
    return cpu_has_amx() or _probe("_is_avx512_bf16_supported")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles."""
    return _probe("_is_amx_tile_supported")


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn is not None and fn())
    except Exception:
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def embed_dtype(device: torch.device, choice: str | None = None) -> torch.dtype | None:
    """The autocast dtype an encoder's forward pass runs in on ``device`` (None: fp32). ``choice`` (default: the
    ``LOOKALIKE_EMBED_PRECISION`` environment variable, else ``auto``) is one of :data:`CHOICES`."""
    choice = (choice or os.environ.get(ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise LookalikeError(f"{ENV}={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "fp32" or (choice == "auto" and not native_bf16(device)):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LookalikeError(f"{ENV}=bf16 asked for, but this GPU has no bf16: use fp32 or auto")
    return torch.bfloat16
