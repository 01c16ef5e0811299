"""``lookalike demo``: demo collection → baseline indexes → web UI, while encoders train behind it.

Before the UI opens the demo indexes its collection with the untrained baselines (pixels, a random network) and,
when a pretrained encoder is installed (the ``pretrained`` extra), with ImageNet EfficientNet-Lite0. Behind the UI
it fine-tunes that encoder on the collection (SimCLR from its weights), then trains SimCLR, MoCo and BYOL from
scratch, indexing each run when it is done. :func:`demo_plan` says what will be built, :data:`RANKING` which is
best: the Search tab opens on the best index there is at launch, the Compare tab on :data:`COMPARED`.

Everything is kept between runs: a second ``make demo`` reuses the collection, the indexes and any finished
training run (an unfinished one resumes).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from retrieval import pretrained
from retrieval.errors import LookalikeError
from retrieval.runformat import STATE, read_meta
from retrieval.store_files import MANIFEST
from retrieval.workspace import Workspace

from .opening import Opening
from .demo_data import DemoData, prepare_demo_data

DEMO_METHODS = ("simclr", "moco", "byol")
DEMO_BACKBONE = "resnet10t"  # fastest learner on 2 CPU cores at 64 px (see training.trainer.DEFAULT_BACKBONE)
DEMO_STEM = "default"
DEMO_IMAGE_SIZE = 64
DEMO_MINUTES = 3.0
# Emoji are aligned drawings on white: where a colour or part sits matters, so the demo's encoders index a 4x4 grid
# of stride-16 features (retrieval.encoders, pool=grid), and train with milder augmentation than SimCLR's ImageNet
# recipe — colour is most of what two vendors' drawings of one emoji share, so no grayscale and 0.3 jitter strength,
# and crops of at least 30% keep the subject in view. Measured with bench/quality.py (README, Performance); the
# pretrained encoder gains from pool=grid on the same task too (docs/measurements.md, "Demo").
DEMO_POOL = "grid"
DEMO_AUGMENT = {"strength": 0.3, "gray_p": 0.0, "crop_scale": [0.3, 1.0]}
PRETRAINED_SPEC = pretrained.DEFAULT_SPEC  # installed by the `pretrained` extra
# Its fine-tune trains on 128-px views in batches of 64 (the recipe FINETUNE_DEFAULTS were measured with, see
# training.settings); the rest is the trainer's fine-tuning defaults. The init's own 224 px at batch 128 does not fit
# a CPU machine's memory (docs/measurements.md, "Demo").
FINETUNE_IMAGE_SIZE = 128
FINETUNE_BATCH = 64

PIXELS, RANDOM, PRETRAINED, FINETUNED = "demo-pixels", "demo-random", "demo-pretrained", "demo-finetuned"
TRAINED = tuple(f"demo-{m}" for m in DEMO_METHODS)  # index (and run) name of each method trained from scratch
# The demo's indexes, best first, on the cross-vendor task of bench/quality.py (docs/measurements.md, "Demo").
RANKING = (FINETUNED, PRETRAINED, *TRAINED, RANDOM, PIXELS)
# What the Compare tab opens on, a column each: the baselines beside the best from-scratch run, the pretrained
# encoder and its fine-tune (those that exist at launch).
COMPARED = (PIXELS, RANDOM, TRAINED[0], PRETRAINED, FINETUNED)
OPENING = Opening(search=RANKING, compare=COMPARED)


def demo_config(method: str, data_dir: str | Path, out: str | Path, minutes: float, resume: bool = False):
    """The TrainConfig the demo trains ``method`` with from scratch (also what ``bench/quality.py`` measures)."""
    from training.trainer import TrainConfig

    return TrainConfig(data_dir=str(data_dir), method=method, backbone=DEMO_BACKBONE, stem=DEMO_STEM,
                       image_size=DEMO_IMAGE_SIZE, pool=DEMO_POOL, augment=dict(DEMO_AUGMENT), minutes=minutes,
                       out=str(out), resume=resume)


def finetune_config(data_dir: str | Path, out: str | Path, minutes: float, resume: bool = False):
    """SimCLR from the pretrained encoder's weights: the trainer's fine-tuning defaults (learning rate,
    augmentation, BatchNorm), the demo's budget and pooling, an input size and batch that fit in memory."""
    from training.trainer import TrainConfig

    return TrainConfig(data_dir=str(data_dir), method="simclr", init=PRETRAINED_SPEC, pool=DEMO_POOL,
                       image_size=FINETUNE_IMAGE_SIZE, batch_size=FINETUNE_BATCH, minutes=minutes, out=str(out),
                       resume=resume)


def baseline_specs() -> dict[str, str]:
    """Index name → encoder spec for the two untrained baselines, matched to the trained encoders' input."""
    return {PIXELS: "pixels",
            RANDOM: f"random:{DEMO_BACKBONE}?size={DEMO_IMAGE_SIZE}&stem={DEMO_STEM}&pool={DEMO_POOL}"}


@dataclass(frozen=True)
class Training:
    """One background training of the demo: its run (and index) name and how its TrainConfig is made."""

    name: str
    label: str
    config: Callable[..., object]  # (data_dir, out, minutes, resume) -> TrainConfig


@dataclass
class DemoPlan:
    """What the demo builds: indexes before the UI opens, trainings behind it, and why a step is left out."""

    indexes: dict[str, str]  # index name -> encoder spec
    trainings: list[Training]  # in order
    notes: list[str] = field(default_factory=list)


def _pretrained_missing() -> str | None:
    """Why the pretrained steps cannot run here, or None when they can."""
    if PRETRAINED_SPEC not in pretrained.available_pretrained():
        hint = pretrained.install_hint(PRETRAINED_SPEC.partition(":")[2])
        return f"no pretrained encoder installed, so no {PRETRAINED} or {FINETUNED} index ({hint})"
    return None


def _finetune_missing() -> str | None:
    from training.settings import SETTINGS

    if not any(s.name == "init" for s in SETTINGS):
        return f"this trainer cannot start from pretrained weights (no init setting), so no {FINETUNED} index"
    return None


def demo_plan() -> DemoPlan:
    """The demo's indexes and trainings on this machine (the pretrained ones only where they can be made)."""
    plan = DemoPlan(baseline_specs(), [])
    missing = _pretrained_missing()
    if missing is None:
        plan.indexes[PRETRAINED] = f"{PRETRAINED_SPEC}?pool={DEMO_POOL}"
        missing = _finetune_missing()
        if missing is None:
            plan.trainings.append(Training(FINETUNED, "demo fine-tune", finetune_config))
    if missing is not None:
        plan.notes.append(missing)
    for method, name in zip(DEMO_METHODS, TRAINED):
        plan.trainings.append(Training(name, f"demo {method}", lambda *a, m=method, **kw: demo_config(m, *a, **kw)))
    return plan


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def ensure_index(ws: Workspace, data: DemoData, name: str, spec: str) -> None:
    if (ws.root / name / MANIFEST).exists():
        return
    _log(f"building index {name} with {spec} …")
    report = ws.build(data.collection, spec, name, progress=True)
    _log(f"{name}: {report.count} images ({report.images_per_s:.0f} images/s)")
    mark_best(ws)


def train_and_index(ws: Workspace, data: DemoData, runs: Path, minutes: float, stop: threading.Event,
                    jobs=None, plan: DemoPlan | None = None) -> None:
    """Run each training of the plan in turn (skipping finished runs) and index what it produced; a training
    that fails is logged and the others go on."""
    from training.trainer import train

    for step in (plan or demo_plan()).trainings:
        if stop.is_set():
            return
        run = runs / step.name
        if not _run_done(run):
            config = step.config(data.collection, run, minutes, resume=(run / STATE).exists())
            _log(f"training {step.name} for {minutes:g} min → {run}")
            try:
                if jobs is not None:
                    jobs.run_training(config, label=step.label, wait=True, stop=stop)
                else:
                    train(config, progress=False, stop_event=stop)
            except LookalikeError as exc:
                if stop.is_set():
                    return
                _log(f"{step.name}: {exc}; going on with the others")
                continue
            if stop.is_set():
                return
        ensure_index(ws, data, step.name, str(run))


def mark_best(ws: Workspace) -> str | None:
    """Make the best demo index the default one (``lookalike search IMAGE``), unless the user chose another."""
    current = ws.marked_index()
    if current is not None and current not in RANKING:
        return current
    best = OPENING.search_index([m["name"] for m in ws.list()])
    if best is not None:
        ws.set_default_index(best)
    return best


def _run_done(run: Path) -> bool:
    meta = read_meta(run)
    return bool(meta and meta.get("finished"))


def run_demo(indexes: str = "indexes", data: str = "data/demo", host: str = "127.0.0.1", port: int = 7860,
             minutes: float | None = None, train: bool = True, open_app: bool = True, runs: str = "runs",
             auth: str | None = None, allow_dirs: list[str] | None = None) -> None:
    demo = prepare_demo_data(data, log=_log)
    ws = Workspace(indexes)
    plan = demo_plan()
    for note in plan.notes:
        _log(f"note: {note}")
    for name, spec in plan.indexes.items():
        ensure_index(ws, demo, name, spec)
    mark_best(ws)
    stop = threading.Event()
    def background(jobs=None):
        return train_and_index(ws, demo, Path(runs), minutes or DEMO_MINUTES, stop, jobs, plan)
    if not open_app:
        if train:
            background()
        _log(f"ready: lookalike app   (or: lookalike search IMAGE, which searches {mark_best(ws)})")
        return
    from .ui import launch

    launch(indexes=indexes, host=host, port=port, examples=demo.example_queries(),
           train_dirs=[str(demo.collection)], workspace=ws, background=background if train else None,
           on_close=stop.set, auth=auth, allow_dirs=allow_dirs, opening=OPENING)
