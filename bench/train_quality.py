"""Retrieval quality of SimCLR vs MoCo vs BYOL after the same short CPU training budget.

Builds a structured synthetic set (``retrieval.synthetic.make_collection``: 12 classes x 24 images, 64 px, seed 0)
in a temp dir, trains each method on it for the same wall-clock budget with the trainer's defaults (resnet10t,
64 px, batch 128, AdamW; device forced to CPU), then evaluates on that same labelled folder with leave-one-out
retrieval (``retrieval.workspace.evaluate_folder``): baselines ``pixels`` and ``random:resnet10t?size=64`` (same
backbone, untrained) plus each trained run. Prints a markdown table (or JSON with ``--json``) and always writes
``bench/results/train_quality.json`` atomically.

Rerun:  .venv/bin/python bench/train_quality.py                 # 3 min per method (~10 min total)
        .venv/bin/python bench/train_quality.py --quick         # 1 min per method
        .venv/bin/python bench/train_quality.py --minutes 2 --json
Budgets are wall-clock: other jobs sharing the CPUs lower the steps each method gets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from retrieval.encoders import load_encoder  # noqa: E402
from retrieval.synthetic import make_collection  # noqa: E402
from retrieval.workspace import evaluate_folder  # noqa: E402
from training.trainer import TrainConfig, train  # noqa: E402
from bench.common import utc_now, write_atomic  # noqa: E402

METHODS = ("simclr", "moco", "byol")
BASELINES = ("pixels", "random:resnet10t?size=64")
COLUMNS = ("recall@1", "recall@10", "map@10", "knn_acc")
RESULTS = ROOT / "bench" / "results" / "train_quality.json"


def _metrics(directory: Path, spec: str) -> dict:
    m = evaluate_folder(directory, load_encoder(spec), progress=False)
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in m.items()}


def _table(rows: dict) -> str:
    lines = ["| encoder | " + " | ".join(COLUMNS) + " | train minutes |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, m in rows.items():
        if "error" in m:
            lines.append(f"| {name} | " + " | ".join("-" for _ in COLUMNS) + f" | ERROR: {m['error']} |")
            continue
        cells = [f"{m[c]:.3f}" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['train_minutes']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per method (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 minute per method")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    args = ap.parse_args(argv)
    minutes = 1.0 if args.quick else args.minutes

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="train-quality-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        make_collection(data, n_classes=12, per_class=24, size=64, seed=0)
        for spec in BASELINES:
            rows[spec] = {**_metrics(data, spec), "train_minutes": 0.0}
        for method in METHODS:
            name = f"{method} ({minutes:g} min)"
            try:
                cfg = TrainConfig(data_dir=str(data), method=method, minutes=minutes, out=str(tmp / f"run-{method}"),
                                  device="cpu")
                t0 = time.perf_counter()
                run_dir = train(cfg, progress=False)
                elapsed = (time.perf_counter() - t0) / 60
                rows[name] = {**_metrics(data, str(run_dir)), "train_minutes": elapsed}
            except Exception as e:  # report and keep going with the other methods
                rows[name] = {"error": f"{type(e).__name__}: {e}", "train_minutes": None}
            print(f"[train_quality] {name}: {rows[name].get('knn_acc', rows[name].get('error'))}", file=sys.stderr)

    out = dict(rows)
    out["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    out["date"] = utc_now()
    out["budget_minutes_per_method"] = minutes
    write_atomic(RESULTS, out)
    print(json.dumps(out, indent=2) if args.json else _table(rows))
    return 0 if all("error" not in m for m in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
