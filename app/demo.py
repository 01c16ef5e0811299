"""``lookalike demo``: demo collection → baseline indexes → web UI, while SimCLR, MoCo and BYOL train behind it.

Everything is kept between runs: a second ``make demo`` reuses the collection, the indexes and any finished
training run (an unfinished one resumes).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from retrieval.runformat import STATE, read_meta
from retrieval.workspace import Workspace

from .demo_data import DemoData, prepare_demo_data

DEMO_METHODS = ("simclr", "moco", "byol")
DEMO_BACKBONE = "resnet10t"  # fastest learner on 2 CPU cores at 64 px (see training.trainer.DEFAULT_BACKBONE)
DEMO_STEM = "default"
DEMO_IMAGE_SIZE = 64
DEMO_MINUTES = 3.0
# Emoji are aligned drawings on white: where a colour or part sits matters, so the demo's encoders index a 4x4 grid
# of stride-16 features (retrieval.encoders, pool=grid), and train with milder augmentation than SimCLR's ImageNet
# recipe — colour is most of what two vendors' drawings of one emoji share, so no grayscale and 0.3 jitter strength,
# and crops of at least 30% keep the subject in view. Measured with bench/quality.py (README, Performance).
DEMO_POOL = "grid"
DEMO_AUGMENT = {"strength": 0.3, "gray_p": 0.0, "crop_scale": [0.3, 1.0]}


def demo_config(method: str, data_dir: str | Path, out: str | Path, minutes: float, resume: bool = False):
    """The TrainConfig the demo trains ``method`` with (also what ``bench/quality.py`` measures)."""
    from training.trainer import TrainConfig

    return TrainConfig(data_dir=str(data_dir), method=method, backbone=DEMO_BACKBONE, stem=DEMO_STEM,
                       image_size=DEMO_IMAGE_SIZE, pool=DEMO_POOL, augment=dict(DEMO_AUGMENT), minutes=minutes,
                       out=str(out), resume=resume)


def baseline_specs() -> dict[str, str]:
    """Index name → encoder spec for the two untrained baselines, matched to the trained encoders' input."""
    return {"demo-pixels": "pixels",
            "demo-random": f"random:{DEMO_BACKBONE}?size={DEMO_IMAGE_SIZE}&stem={DEMO_STEM}&pool={DEMO_POOL}"}


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def ensure_index(ws: Workspace, data: DemoData, name: str, spec: str) -> None:
    if (ws.root / name / "manifest.json").exists():
        return
    _log(f"building index {name} with {spec} …")
    report = ws.build(data.collection, spec, name, progress=True)
    _log(f"{name}: {report.count} images ({report.images_per_s:.0f} images/s)")


def train_and_index(ws: Workspace, data: DemoData, runs: Path, minutes: float, stop: threading.Event,
                    jobs=None) -> None:
    """Train each demo method in turn (skipping finished runs) and index what it produced."""
    from training.trainer import train

    for method in DEMO_METHODS:
        if stop.is_set():
            return
        run = runs / f"demo-{method}"
        name = f"demo-{method}"
        if not _run_done(run):
            config = demo_config(method, data.collection, run, minutes, resume=(run / STATE).exists())
            _log(f"training {method} for {minutes:g} min → {run}")
            if jobs is not None:
                jobs.run_training(config, label=f"demo {method}", wait=True, stop=stop)
            else:
                train(config, progress=False, stop_event=stop)
            if stop.is_set():
                return
        if not (ws.root / name / "manifest.json").exists():
            ensure_index(ws, data, name, str(run))


def _run_done(run: Path) -> bool:
    meta = read_meta(run)
    return bool(meta and meta.get("finished"))


def run_demo(indexes: str = "indexes", data: str = "data/demo", host: str = "127.0.0.1", port: int = 7860,
             minutes: float | None = None, train: bool = True, open_app: bool = True, runs: str = "runs",
             auth: str | None = None, allow_dirs: list[str] | None = None) -> None:
    demo = prepare_demo_data(data, log=_log)
    ws = Workspace(indexes)
    for name, spec in baseline_specs().items():
        ensure_index(ws, demo, name, spec)
    stop = threading.Event()
    if not open_app:
        if train:
            train_and_index(ws, demo, Path(runs), minutes or DEMO_MINUTES, stop)
        _log("ready: lookalike app   (or: lookalike search demo-pixels IMAGE)")
        return
    from .ui import launch

    launch(indexes=indexes, host=host, port=port, examples=demo.example_queries(),
           train_dirs=[str(demo.collection)], workspace=ws,
           background=(lambda jobs: train_and_index(ws, demo, Path(runs), minutes or DEMO_MINUTES, stop, jobs))
           if train else None, on_close=stop.set, auth=auth, allow_dirs=allow_dirs)
