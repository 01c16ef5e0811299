"""Shared helpers of the benchmark scripts: where results go, what machine made them, atomic JSON and plot writes.

Every script in ``bench/`` writes ``bench/results/<name>.json`` with a ``machine`` block (platform, CPU model and
count, torch/faiss versions, GPU if any) and a UTC ``date`` beside its figures, so a number in the README can be
traced to the run that produced it.
"""

from __future__ import annotations

import io
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from retrieval.fsutil import atomic_write_bytes, atomic_write_json  # noqa: E402
from retrieval.fsutil import now_iso as utc_now  # noqa: E402,F401 (the benchmarks' name for it)


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


def save_result(name: str, figures: dict, **settings) -> Path:
    """Write ``bench/results/<name>.json`` = figures + settings + machine + date; return its path."""
    out = {"figures": figures, "settings": settings, "machine": machine_info(), "date": utc_now()}
    path = RESULTS / f"{name}.json"
    write_atomic(path, out)
    return path
