"""The run directory of a training run: choosing or reopening it, preparing it, and what goes into its
``encoder.json`` and ``metrics.jsonl``. The files' names and format are :mod:`retrieval.runformat`'s; the atomic
checkpoint writer is :mod:`training.checkpoint`."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from retrieval.encoder_kinds import RUN
from retrieval.errors import LookalikeError
from retrieval.fsutil import atomic_write_bytes, now_iso, sha256_file
from retrieval.runformat import FORMAT_VERSION, META, METRICS, STATE, WEIGHTS, read_meta

from .checkpoint import load_state, remove_temporaries
from .config import FIXED_ON_RESUME, TrainConfig
from .distributed import Distributed

__all__ = ["open_run", "prepare_run_dir", "weights_match", "append_metrics", "encoder_meta"]

RUNS = Path("runs")  # where a run goes without --out


def open_run(cfg: TrainConfig, ddp: Distributed) -> tuple[Path, dict | None, TrainConfig]:
    """Pick the run directory; for a resume, load ``state.pt`` and restore the settings that define the run.
    Refuses to start a new run on top of an existing one."""
    if cfg.resume:
        run = Path(cfg.out) if cfg.out else _latest_run(cfg)
        state = load_state(run)
        return run, state, _resumed_config(cfg, run, state["config"])
    if cfg.out:
        run = Path(cfg.out)
    else:
        run = RUNS / (_run_prefix(cfg) + datetime.now().strftime("%Y%m%d-%H%M%S"))
        run = Path(ddp.broadcast_object(str(run)))
    if (run / STATE).exists() or (run / META).exists():
        raise LookalikeError(f"{run} already holds a training run; pass --resume to continue it, or choose "
                             "another --out")
    return run, None, dataclasses.replace(cfg, out=str(run))


def _resumed_config(cfg: TrainConfig, run: Path, saved: dict[str, Any]) -> TrainConfig:
    """``cfg`` with the run's own settings for everything that defines the run. A setting the user gave that
    differs from the run's is an error, whatever its value (defaults included); one not given is the run's."""
    conflicts = [f"{name}={getattr(cfg, name)!r} (the run has {saved[name]!r})" for name in FIXED_ON_RESUME
                 if name in saved and cfg.given(name) and _canon(getattr(cfg, name)) != _canon(saved[name])]
    if conflicts:
        raise LookalikeError(f"--resume continues {run} with the settings it was started with, but "
                             f"{'; '.join(conflicts)}; drop those options or train into a new --out")
    explicit = tuple(dict.fromkeys([*saved.get("explicit", ()), *cfg.explicit]))  # what either segment was given
    cfg = dataclasses.replace(cfg, out=str(run), explicit=explicit,
                              **{k: saved[k] for k in FIXED_ON_RESUME if k in saved})
    # what a bare `--resume --out RUN` leaves out comes from the run itself
    if not cfg.data_dir:
        cfg.data_dir = saved["data_dir"]
    if cfg.val_dir is None:
        cfg.val_dir = saved.get("val_dir")
    if cfg.epochs is None and cfg.minutes is None:
        cfg.epochs, cfg.minutes = saved.get("epochs"), saved.get("minutes")
    cfg.validate()
    return cfg


def prepare_run_dir(run: Path, state: dict | None, ddp: Distributed) -> None:
    """Create the run directory (rank 0), drop temporaries of an interrupted write, and cut ``metrics.jsonl``
    back to the checkpoint being resumed. Called once everything has been checked, so a refused start leaves
    nothing behind."""
    if ddp.main:
        run.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run)
        if state is not None:
            _trim_metrics(run / METRICS, int(state["step"]))
        else:
            (run / METRICS).unlink(missing_ok=True)
    ddp.barrier()


def weights_match(run_dir: Path, state: dict) -> bool:
    """Whether the weights on disk are those of ``state`` (not so when a write was cut short after state.pt)."""

    meta = read_meta(run_dir) or {}
    weights = run_dir / WEIGHTS
    return (weights.is_file() and meta.get("weights_sha256") == state.get("weights_sha256")
            and sha256_file(weights) == state.get("weights_sha256"))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append one record (floats rounded to 6 digits) to ``metrics.jsonl``; returns the record as written."""
    record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def encoder_meta(cfg: TrainConfig, dim: int, views, collection, data_fingerprint: str, metrics: dict,
                 bad_files: dict[str, str], step: int, epoch: int, created: str, finished: bool,
                 sources: dict[str, dict] | None = None) -> dict[str, Any]:
    """The content of ``encoder.json`` (without ``weights_sha256``, which the writer adds). ``sources``: the
    identities of the init and the teacher (:class:`training.finetune.Sources`); a run started from an init
    resizes its images with the init's filter, as the pretrained encoder does."""
    sources = sources or {}
    init = {"interpolation": sources["init"]["interpolation"]} if sources.get("init") else {}
    return {**init, **sources,
        "format_version": FORMAT_VERSION, "kind": RUN, "backbone": cfg.backbone, "method": cfg.method,
        "image_size": cfg.image_size, "mean": list(views.mean), "std": list(views.std), "stem": cfg.stem,
        # the retrieval embedding: the backbone's features pooled as cfg.pool says (retrieval.encoders)
        "pool": cfg.pool, "dim": int(dim), "config": cfg.to_dict(),
        "data": {"root": str(collection.root), "count": len(collection.items), "fingerprint": data_fingerprint,
                 "skipped": len(collection.skipped),
                 "bad_while_training": [{"path": p, "reason": r} for p, r in sorted(bad_files.items())[:100]]},
        "metrics": dict(metrics), "epoch": epoch, "step": step, "finished": finished,
        "created": created, "updated": now_iso(),
    }


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _run_prefix(cfg: TrainConfig) -> str:
    """How a run without --out is named under RUNS (then a time stamp), and how --resume without --out finds it."""
    return f"{cfg.method}-{cfg.backbone.replace('/', '_')}-"


def _latest_run(cfg: TrainConfig) -> Path:
    runs = RUNS
    found = sorted((p for p in runs.glob(_run_prefix(cfg) + "*") if (p / STATE).is_file()),
                   key=lambda p: (p / STATE).stat().st_mtime) if runs.is_dir() else []
    if not found:
        raise LookalikeError(f"no earlier {cfg.method} run of {cfg.backbone} under {runs}/ to resume; give its "
                             "folder with --out")
    return found[-1]


def _trim_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())

