"""Keep the C allocator from handing a model's activations back to the operating system between batches.

A forward pass allocates and frees the same large activation buffers every batch. glibc's malloc serves every
block above its mmap threshold (128 KiB to 32 MiB, adaptive) with a fresh ``mmap`` and unmaps it on ``free``, so
the next batch page-faults all of it in again: on 2 CPU cores a 224 px EfficientNet-Lite0 forward spent more time
in the kernel than in the model (``bench/cpu_limits.py`` measures it). :func:`tune_allocator` tells glibc to serve
large blocks from its heap and to keep freed memory, so steady-state batches reuse pages already mapped.

Measured (``bench/cpu_limits.py --allocators``, numbers in the README): glibc tuned this way ran the same forward
2-4x faster than glibc as it comes; tcmalloc (Debian's libtcmalloc-minimal4, LD_PRELOAD) was within ~10% of it;
jemalloc with its default decay was no better than plain glibc. The glibc settings need no extra package, no
environment set before the process starts, and reach every thread of the process and every DataLoader worker
forked from it, so they are what Lookalike uses.

Called once per process by everything that runs a model (``retrieval.encoders`` on import, the CLI before it
parses anything). Harmless elsewhere: without glibc (musl, macOS, Windows), under a preloaded allocator, or with
``LOOKALIKE_ALLOCATOR=system`` it changes nothing. The price is memory: a process keeps its peak heap until it
exits (the build of an index or a training run is such a process anyway).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["tune_allocator", "allocator_state", "ENV"]

ENV = "LOOKALIKE_ALLOCATOR"  # "system": leave the allocator as it comes
# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_KEEP = 1 << 30  # free memory kept before the heap's top is given back (1 GiB: in practice, never)
_TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps instead of one brk per large block

_state: str | None = None


def allocator_state() -> str:
    """What :func:`tune_allocator` did in this process: ``tuned``, ``preloaded`` (another allocator is in
    ``LD_PRELOAD``), ``system`` (turned off by the environment), ``unavailable`` (no glibc), or ``untouched``."""
    return _state or "untouched"


def tune_allocator() -> str:
    """Apply the glibc settings once for this process; returns :func:`allocator_state`. Never raises."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV, "").strip().lower() == "system":
        _state = "system"
    elif any(lib in os.environ.get("LD_PRELOAD", "") for lib in ("tcmalloc", "jemalloc", "mimalloc")):
        _state = "preloaded"
    else:
        _state = "tuned" if _glibc_mallopt() else "unavailable"
    return _state


def _glibc_mallopt() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mmap off: large blocks come from the heap, where freed memory is reused; the trim threshold keeps it there.
    ok = [mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, _KEEP), mallopt(_M_TOP_PAD, _TOP_PAD)]
    return all(v == 1 for v in ok)
