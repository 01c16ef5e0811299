"""Keep the C allocator from handing a model's activations back to the operating system between batches.

A forward pass allocates and frees the same large activation buffers every batch. glibc's malloc serves every
block above its mmap threshold (128 KiB to 32 MiB, adaptive) with a fresh ``mmap`` and unmaps it on ``free``, so
the next batch page-faults all of it in again: on 2 CPU cores a 224 px EfficientNet-Lite0 forward spent more time
in the kernel than in the model. Two remedies, measured with ``bench/cpu_limits.py --allocators`` (README,
Performance; 224 px Lite0 forward, 2-core AMD EPYC): glibc as it comes 48 images/s, tuned glibc 178, tcmalloc
156 (176 against 136 on the bare channels-last forward; an earlier interleaved run gave tcmalloc 178-228 against
105-124, with a fifth of the kernel time): the two are within this machine's run-to-run noise of each other, and
both are 3-4x glibc as it comes.

* **tcmalloc** (Debian's ``libtcmalloc-minimal4``) keeps freed memory in its own caches. It has to be loaded
  before the process starts (``LD_PRELOAD``), so the ``lookalike`` commands that run a model start themselves
  again with it when it is installed (:func:`reexec_with_tcmalloc`).
* **glibc tuned** (:func:`tune_allocator`): large blocks served from the heap, freed memory kept. It needs
  nothing, so it is what every other process that builds a model gets (``retrieval.encoders`` calls it on import),
  DataLoader workers forked from it included, and what the commands get where tcmalloc is not installed.

jemalloc with its default decay was no better than plain glibc. Harmless elsewhere: without glibc (musl, macOS,
Windows), under a preloaded allocator, or with ``LOOKALIKE_ALLOCATOR=system`` nothing is changed
(``LOOKALIKE_ALLOCATOR=glibc``: glibc tuned, never tcmalloc). The price is
memory: a process keeps its peak heap until it exits (an index build or a training run is such a process anyway).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["tune_allocator", "allocator_state", "release_free_memory", "reexec_with_tcmalloc", "tcmalloc_path", "ENV"]

ENV = "LOOKALIKE_ALLOCATOR"  # "system": leave the allocator as it comes; "glibc": tune glibc, never tcmalloc
# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_KEEP = 1 << 30  # free memory kept before the heap's top is given back (1 GiB: in practice, never)
_TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps instead of one brk per large block

_state: str | None = None
_TCMALLOC = "libtcmalloc_minimal.so.4"
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
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
    """What the environment asks for (``LOOKALIKE_ALLOCATOR``): "", "system" or "glibc"."""
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


def tcmalloc_path() -> str | None:
    """Where Debian's tcmalloc is installed, if it is."""
    for folder in _LIB_DIRS:
        path = os.path.join(folder, _TCMALLOC)
        if os.path.isfile(path):
            return path
    return None


def reexec_with_tcmalloc() -> None:
    """Start this command again with tcmalloc preloaded, when it is installed and nothing says otherwise; returns
    (doing nothing) where it is not, or when the process already runs under a preloaded allocator. Only for a
    command's own process, before it has done anything: ``os.execv`` keeps the pid, the open files and the
    environment, and replaces everything else."""
    path = tcmalloc_path()
    if (path is None or _preloaded() or _asked() in ("system", "glibc") or _state is not None
            or not getattr(sys, "orig_argv", None)):
        return
    preload = ":".join(p for p in (path, os.environ.get("LD_PRELOAD", "")) if p)
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "LD_PRELOAD": preload})
    except OSError:
        return  # stay as we are: tune_allocator still applies
