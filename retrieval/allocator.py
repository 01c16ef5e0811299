"""Keep the C allocator from handing a model's activations back to the operating system between batches.

A forward pass allocates and frees the same large activation buffers every batch. glibc's malloc serves every
block above its mmap threshold (128 KiB to 32 MiB, adaptive) with a fresh ``mmap`` and unmaps it on ``free``, so
the next batch page-faults all of it in again: on 2 CPU cores a 224 px EfficientNet-Lite0 forward spent more time
in the kernel than in the model. :func:`tune_allocator` serves large blocks from the heap and keeps freed memory
there. The price is memory: a process keeps its peak heap until it exits (an index build or a training run is such
a process anyway; :func:`release_free_memory` hands it back between the runs of a long benchmark).

It is called by name at the entry points, once, before anything is allocated: :func:`app.cli.main` for every
``lookalike`` command (the demo, the app, training and indexing included), and the benchmark children that stand
for one. Importing this module, or any other, changes nothing. DataLoader workers forked from a tuned process
inherit its settings. Preloading tcmalloc instead (the other remedy, which needs the process to start itself again)
was measured against it and gave the same figures within noise, so the simpler one stays: bench/allocator.py,
its result bench/results/allocator.json, and docs/measurements.md ("Allocator").

Harmless elsewhere: without glibc (musl, macOS, Windows), under a preloaded allocator (``LD_PRELOAD`` naming
tcmalloc, jemalloc or mimalloc), or with ``LOOKALIKE_ALLOCATOR=system`` nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["tune_allocator", "allocator_state", "release_free_memory", "ENV"]

ENV = "LOOKALIKE_ALLOCATOR"  # "system": leave the allocator as it comes
# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_KEEP = 1 << 30  # free memory kept before the heap's top is given back (1 GiB: in practice, never)
_TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps instead of one brk per large block

_state: str | None = None
_PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")


def allocator_state() -> str:
    """What :func:`tune_allocator` did in this process: ``tuned``, ``preloaded`` (another allocator is in
    ``LD_PRELOAD``), ``system`` (turned off by the environment), ``unavailable`` (no glibc), or ``untouched``."""
    return _state or "untouched"


def tune_allocator() -> str:
    """Apply the glibc settings once for this process; returns :func:`allocator_state`. Never raises."""
    global _state
    if _state is not None:
        return _state
    if _asked() == "system":
        _state = "system"
    elif _preloaded():
        _state = "preloaded"
    else:
        _state = "tuned" if _glibc_mallopt() else "unavailable"
    return _state


def _asked() -> str:
    """What the environment asks for (``LOOKALIKE_ALLOCATOR``): "" or "system"."""
    return os.environ.get(ENV, "").strip().lower()


def _preloaded() -> bool:
    """Whether another allocator is already in ``LD_PRELOAD``."""
    return any(lib in os.environ.get("LD_PRELOAD", "") for lib in _PRELOADED)


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


def release_free_memory() -> bool:
    """Hand the heap memory glibc keeps free back to the OS (``malloc_trim``), e.g. between the runs of a long
    benchmark, whose tuned allocator otherwise keeps the largest peak so far; False where there is no glibc."""
    import gc

    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    trim(0)
    return True
