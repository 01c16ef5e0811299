"""Retrieval quality of SimCLR vs MoCo vs BYOL after the same short CPU training budget, on generated shapes.

Builds a structured synthetic set (``retrieval.synthetic.make_collection``: 12 classes x 24 images, 64 px, ``--seed``)
in a temp dir, trains each method on it for the same wall-clock budget with the trainer's defaults (resnet10t,
64 px, batch 128, AdamW; device forced to CPU), then evaluates on that same labelled folder with leave-one-out
retrieval (``retrieval.workspace.evaluate_folder``): baselines ``pixels`` and ``random:resnet10t?size=64`` (same
backbone, untrained) plus each trained run.

Rerun:  python -m bench.train_quality                 # 3 min per method (~10 min total)
        python -m bench.train_quality --quick         # 1 min per method
Writes ``bench/results/train_quality[_quick].json``: ``figures.rows`` (one per encoder: the metrics and
``train_minutes``), the settings, machine and date. Budgets are wall-clock: other jobs sharing the CPUs lower the
steps each method gets.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.common import logger, markdown_table, parser, quick_name, report, save_result, setup, timed

NAME = "train_quality"
METHODS = ("simclr", "moco", "byol")
BASELINES = ("pixels", "random:resnet10t?size=64")
COLUMNS = ("recall@1", "recall@10", "map@10", "knn_acc")
log = logger(NAME)


def score(directory: Path, spec: str) -> dict:
    from retrieval.encoders import load_encoder
    from retrieval.workspace import evaluate_folder

    m = evaluate_folder(directory, load_encoder(spec), progress=False)
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in m.items()}


def train_and_score(method: str, data: Path, out: Path, minutes: float) -> dict:
    from training.trainer import TrainConfig, train

    try:
        cfg = TrainConfig(data_dir=str(data), method=method, minutes=minutes, out=str(out), device="cpu")
        seconds, run_dir = timed(train, cfg, progress=False)
        return {**score(data, str(run_dir)), "train_minutes": seconds / 60}
    except Exception as exc:  # noqa: BLE001 - report the row, go on with the other methods
        return {"error": f"{type(exc).__name__}: {exc}", "train_minutes": None}


def table(rows: dict) -> str:
    body = [[name, *(("-",) * len(COLUMNS) if "error" in m else (m[c] for c in COLUMNS)),
             f"ERROR: {m['error']}" if "error" in m else f"{m['train_minutes']:.2f}"] for name, m in rows.items()]
    return markdown_table(["encoder", *COLUMNS, "train minutes"], body)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="1 minute per method")
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per method (default 3)")
    args = setup(ap.parse_args(argv))
    minutes = 1.0 if args.quick else args.minutes
    from retrieval.synthetic import make_collection

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="train-quality-") as tmp:
        data = Path(tmp) / "data"
        make_collection(data, n_classes=12, per_class=24, size=64, seed=args.seed)
        for spec in BASELINES:
            rows[spec] = {**score(data, spec), "train_minutes": 0.0}
        for method in METHODS:
            name = f"{method} ({minutes:g} min)"
            rows[name] = train_and_score(method, data, Path(tmp) / f"run-{method}", minutes)
            log(f"{name}: {rows[name].get('knn_acc', rows[name].get('error'))}")
    path = save_result(quick_name(NAME, args.quick), {"rows": rows}, budget_minutes_per_method=minutes,
                       quick=args.quick, seed=args.seed, data="make_collection(12 classes x 24 images, 64 px)")
    report(path, args, table(rows))
    return 0 if all("error" not in m for m in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
