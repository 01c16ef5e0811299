"""The training run directory format: its file names, versions and readers. Torch-free.

A run directory ``runs/NAME/`` holds::

    encoder.safetensors   backbone weights only, timm key names (what retrieval loads)
    encoder.json          identity, config, data fingerprint, metrics, weights_sha256 — written last
    state.pt              everything a resume needs (read by training.checkpoint.load_state only)
    metrics.jsonl         one JSON object per logged step / epoch

``training/checkpoint.py`` is the one writer (atomically, through :mod:`retrieval.fsutil`); every reader — the
encoders, the app, the benchmarks — reads through the names and functions here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .fsutil import is_temp

__all__ = ["META", "WEIGHTS", "STATE", "METRICS", "FILES", "FORMAT_VERSION", "STATE_VERSION", "REQUIRED_META",
           "read_meta", "read_run_manifest", "read_metrics", "is_run_temporary"]

META, WEIGHTS, STATE, METRICS = "encoder.json", "encoder.safetensors", "state.pt", "metrics.jsonl"
FILES = (WEIGHTS, META, STATE, METRICS)
FORMAT_VERSION = 1  # encoder.json
STATE_VERSION = 1  # state.pt
# What a reader needs from encoder.json to rebuild the encoder and check its weights.
REQUIRED_META = ("format_version", "backbone", "image_size", "dim", "weights_sha256")


def is_run_temporary(name: str) -> bool:
    """Whether ``name`` is a leftover temporary of an interrupted write of one of the run's files."""
    return any(is_temp(name, of=f) for f in FILES)


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``encoder.json`` of a run, or None when there is none (or it is unreadable). Not validated."""
    try:
        meta = json.loads((Path(run_dir) / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_run_manifest(run_dir: str | os.PathLike) -> dict:
    """``encoder.json`` of a training run, validated. Raises CheckpointError with what is wrong."""
    run = Path(run_dir)
    meta_path = run / META
    if not meta_path.is_file():
        raise CheckpointError(f"{run} has no {META}: not a finished training run (train one with 'lookalike train')")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is not a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} lacks {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format_version {meta['format_version']}; this Lookalike reads "
                              f"{FORMAT_VERSION}")
    return meta


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``metrics.jsonl`` in order; [] when there is none. A torn last line (a killed writer) and
    any other line that is not a JSON object are skipped."""
    try:
        text = (Path(run_dir) / METRICS).read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
