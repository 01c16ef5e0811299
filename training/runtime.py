"""What a training process needs from its machine: numeric precision, the random generators' state, and a
graceful stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import random
import signal
import threading
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from retrieval import precision as _precision
from retrieval.errors import LookalikeError
from retrieval.precision import cpu_has_amx, cpu_has_native_bf16

__all__ = ["cpu_has_native_bf16", "cpu_has_amx", "resolve_precision", "seed_everything", "get_rng_state",
           "set_rng_state", "GracefulStop"]


# -- precision ----------------------------------------------------------------------------------------------------
# The rule (bf16 where the hardware has it natively) is declared once, in retrieval.precision. What it gains and
# costs in a training step: docs/measurements.md, "Training precision".


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``--precision`` -> (autocast dtype or None for fp32, whether a gradient scaler is needed)."""
    if precision == "auto":
        if device.type == "cuda":
            return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
        return (torch.bfloat16, False) if _precision.cpu_has_native_bf16() else (None, False)
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise LookalikeError("this GPU has no bf16 support: use --precision fp16 or fp32")
        return torch.bfloat16, False
    if device.type != "cuda":
        raise LookalikeError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32 (or auto)")
    return torch.float16, True


# -- random generators --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Every generator a run may draw from, as tensors and plain containers (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- graceful stop ------------------------------------------------------------------------------------------------
class GracefulStop:
    """While training, the first Ctrl-C (or SIGTERM, e.g. from torchrun) asks the loop to stop after the current
    step and save; a second Ctrl-C interrupts at once, except inside :meth:`deferred`. Signal handlers only exist
    in the main thread; elsewhere (the web UI runs training in a thread) the ``stop_event`` does this job."""

    def __init__(self, stop_event: threading.Event | None = None) -> None:
        self.stop_event = stop_event
        self.requested = False
        self.in_critical = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and not self.in_critical:
            raise KeyboardInterrupt
        self.requested = True

    def wanted(self) -> bool:
        """Whether a stop was asked for, by a signal or by the stop event."""
        return self.requested or (self.stop_event is not None and self.stop_event.is_set())

    @contextmanager
    def deferred(self):
        """A block a second Ctrl-C must not cut in half (e.g. an optimiser step)."""
        self.in_critical = True
        try:
            yield
        finally:
            self.in_critical = False
