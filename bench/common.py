"""The benchmarks' harness: shared flags, logging, timing, the child-process protocol, tables, plots and results.

Every benchmark is a module run as ``python -m bench.NAME`` (listed in :mod:`bench.registry`). It builds its
command line with :func:`parser` (``--quick``, ``--json``, ``--threads``, ``--seed``), calls :func:`setup`, measures,
and hands its figures to :func:`save_result`, which writes ``bench/results/<name>.json`` (``<name>_quick.json`` for a
quick run, which git ignores, so a quick check never overwrites the full run's figures) with a ``machine`` block,
the UTC ``date`` and the run's settings, and the figure beside it as ``<name>[_quick].png``. A measurement that must
start in a fresh process (allocator, threads, peak memory) goes through :func:`run_child` / :func:`child_main`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from retrieval.fsutil import atomic_write_bytes, atomic_write_json
from retrieval.fsutil import now_iso as utc_now

ROOT = Path(__file__).resolve().parent.parent
# where results go: bench/results (the figures the README quotes), or elsewhere for a trial run
RESULTS = Path(os.environ.get("LOOKALIKE_BENCH_RESULTS") or ROOT / "bench" / "results")
CHILD_FLAG = "--child"

__all__ = ["ROOT", "RESULTS", "utc_now", "machine_info", "write_atomic", "pyplot", "save_figure", "quick_name",
           "result_path", "save_result", "parser", "setup", "logger", "timed", "start_child", "finish_child",
           "run_child", "child_main", "fmt", "markdown_table", "report", "work_dir", "free_port", "rss_bytes",
           "peak_rss_kb", "trim_heap", "serialized_bytes", "recall_at_k", "lightly_version"]


# ------------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the figures were measured on."""
    info: dict = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        from retrieval.precision import cpu_has_native_bf16, embed_dtype

        info["native_bf16"] = cpu_has_native_bf16()
        # what an encoder's forward runs in on the CPU here, as retrieval.precision resolves it
        info["embed_precision"] = "fp32" if embed_dtype(torch.device("cpu")) is None else "bf16"
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def rss_bytes() -> int:
    """This process's resident memory now (``VmRSS``), 0 where ``/proc`` is missing."""
    return peak_rss_kb("VmRSS") * 1024


def peak_rss_kb(field: str = "VmHWM") -> int:
    """A ``/proc/self/status`` memory field in kB (``VmHWM``: this process's peak RSS, not its parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so an RSS difference reflects what a build keeps."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def serialized_bytes(index) -> int:
    """Size of ``faiss.write_index(index)`` without holding the bytes (a 1M x 512 flat index is 2 GB)."""
    import faiss

    total = [0]

    def count(chunk: bytes) -> int:
        total[0] += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return total[0]


def recall_at_k(got, truth) -> float:
    """Mean fraction of each query's exact top-k (``truth``: (Q, k) ids) found in its approximate top-k (``got``;
    -1 never matches)."""
    import numpy as np

    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(g[g >= 0], t)) / k for g, t in zip(got, truth)]))


def lightly_version() -> str:
    """The installed ``lightly`` (the peer library of the ``bench`` extra), or ``"not installed"``."""
    try:
        import lightly
    except ImportError:
        return "not installed"
    return str(getattr(lightly, "__version__", "unknown"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ command line
def parser(doc: str | None, *, quick: str = "a short run (results in <name>_quick.json)", threads: bool = True,
           seed: int | None = 0) -> argparse.ArgumentParser:
    """The benchmark's parser with the shared flags: ``--quick``, ``--json``, and ``--threads`` / ``--seed``
    unless turned off (``threads=False``, ``seed=None``); :func:`setup` applies them."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    if threads:
        ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    if seed is not None:
        ap.add_argument("--seed", type=int, default=seed, help=f"seed of generated data (default {seed})")
    return ap


def setup(args: argparse.Namespace) -> argparse.Namespace:
    """Apply the shared flags: torch's thread count where ``--threads`` was given."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return args


def logger(name: str) -> Callable[[str], None]:
    """``log(msg)`` printing ``[name  seconds since this call] msg`` on stderr (stdout carries the table or the
    JSON)."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{name} {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


@contextlib.contextmanager
def work_dir(keep: str | Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (created; what is in it stays, e.g. trained runs to reuse), or a temp dir deleted afterwards."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """(wall seconds, result) of ``fn(*args, **kwargs)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------------------ child processes
def start_child(module: str, task: dict, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m module --child TASK_JSON`` in a fresh process; :func:`finish_child` collects its dict.

    The one protocol of the benchmarks for a measurement that must start as a real command does (allocator,
    threads, imports, peak memory): the child's ``main`` calls :func:`child_main` first. ``env`` holds variables
    set over this process's environment; the repository goes first on ``PYTHONPATH`` so ``-m bench.…`` resolves
    from anywhere (a ``PYTHONPATH`` in ``env`` follows it: e.g. another revision's copy of a package).
    """
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", module, CHILD_FLAG, json.dumps(task)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finish_child(proc: subprocess.Popen, timeout: float | None = None) -> dict:
    """Wait for a child of :func:`start_child`; the dict it printed last (RuntimeError with its stderr if it
    failed)."""
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {' '.join(proc.args[2:4])} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(lines[-1])


def run_child(module: str, task: dict, env: dict | None = None, timeout: float | None = None) -> dict:
    """:func:`start_child` then :func:`finish_child`: one measurement in a fresh process."""
    return finish_child(start_child(module, task, env), timeout)


def child_main(argv: Sequence[str] | None, measure: Callable[[dict], dict]) -> bool:
    """In a child started by :func:`run_child`: print ``measure(task)`` as one JSON line and return True; in any
    other process return False (the caller goes on with its own command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != CHILD_FLAG:
        return False
    print(json.dumps(measure(json.loads(argv[1]))), flush=True)
    return True


# ------------------------------------------------------------------------------------------------ tables
def fmt(value, digits: int = 3) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` places, anything else as text."""
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence], digits: int = 3) -> str:
    """A markdown table: the first column left-aligned (the row's name), the others right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(path: Path, args: argparse.Namespace, text: str) -> None:
    """Print the saved result (``--json``) or ``text`` and where the result went."""
    if getattr(args, "json", False):
        print(Path(path).read_text(), end="")
        return
    print(text)
    shown = Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path
    print(f"\nwritten: {shown}")


# ------------------------------------------------------------------------------------------------ results
def write_atomic(path: Path, obj: dict) -> None:
    """Write JSON to ``path`` atomically (:func:`retrieval.fsutil.atomic_write_json`): a crash leaves the old file
    or the new one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display). Raises ImportError without matplotlib
    (it comes with the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure like :func:`write_atomic` saves JSON (temp file + ``os.replace``), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        return path
    finally:
        plt.close(fig)


def quick_name(name: str, quick: bool) -> str:
    """A result's file name: ``<name>_quick`` for a ``--quick`` run (git ignores those), so a quick check never
    overwrites the full run's figures."""
    return f"{name}_quick" if quick else name


def result_path(name: str) -> Path:
    """Where the result ``name`` (a :func:`quick_name`) is written: ``bench/results/<name>.json``."""
    return RESULTS / f"{name}.json"


def save_result(name: str, figures: dict, *, plot: Callable[[dict, Path], object] | None = None,
                **settings) -> Path:
    """Write ``bench/results/<name>.json`` = figures + settings + machine + date; return its path.

    ``plot(figures, png_path)``, when given, draws the result's figure to ``<name>.png`` beside it; a plot that fails
    (no matplotlib) is reported on stderr and the JSON, which is what matters, is kept.
    """
    out = {"figures": figures, "settings": settings, "machine": machine_info(), "date": utc_now()}
    path = result_path(name)
    write_atomic(path, out)
    if plot is not None:
        try:
            plot(figures, path.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001 - the JSON is written; the figure is a view of it
            logger(name)(f"plot failed: {type(exc).__name__}: {exc}")
    return path
