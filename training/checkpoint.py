"""Training run directories: write a checkpoint atomically, read one back for ``--resume``.

A run directory ``runs/NAME/`` holds (names and versions in :mod:`retrieval.runformat`, this the one writer)::

    encoder.safetensors   backbone weights only, timm key names (what retrieval loads)
    encoder.json          identity, config, data fingerprint, metrics, weights_sha256 — written last
    state.pt              everything a resume needs; tensors and plain containers only (torch.load(weights_only=True))
    metrics.jsonl         one JSON object per logged step / epoch

Every file is first written in full to a hidden temporary name in the same directory (``.state.pt.tmp-PID``),
flushed to disk, and then moved over the real name with ``os.replace``, which is atomic (both through
:mod:`retrieval.fsutil`). All three temporaries are complete before the first rename, so the renames happen back to
back and a crash leaves either the previous checkpoint or the new one; in the worst case (a crash between two
renames) the weights are newer than ``encoder.json`` and the loader's sha256 check refuses them until the run is
resumed. ``state.pt`` is self-contained (it holds the whole method, backbone included), so resuming never depends
on the other files. Temporaries are never read; :func:`remove_temporaries` deletes leftovers of a killed run.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.errors import CheckpointError
from retrieval.fsutil import json_bytes, publish, write_temp
from retrieval.runformat import FORMAT_VERSION, META, METRICS, STATE, STATE_VERSION, WEIGHTS, is_run_temporary, \
    read_meta

__all__ = ["WEIGHTS", "META", "STATE", "METRICS", "FORMAT_VERSION", "STATE_VERSION", "save_checkpoint", "load_state",
           "read_meta", "remove_temporaries", "backbone_tensors"]


def _write_tmp(path: Path, data: bytes) -> Path:
    """One flushed temporary (a seam: the tests kill a checkpoint write half-way through it)."""
    return write_temp(path, data)


def backbone_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict as contiguous CPU tensors (safetensors wants contiguous, unshared storage;
    channels-last weights are not contiguous in the default sense)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.state_dict().items()}


def save_checkpoint(run_dir: str | os.PathLike, backbone: nn.Module, state: dict[str, Any],
                    meta: dict[str, Any]) -> str:
    """Write ``encoder.safetensors``, ``state.pt`` and ``encoder.json`` (last) atomically; returns the sha256.

    ``meta`` is the content of ``encoder.json`` without ``weights_sha256`` (added here; ``state`` gets it too).
    """
    from safetensors.torch import save as safetensors_bytes

    run = Path(run_dir)
    weights = safetensors_bytes(backbone_tensors(backbone), metadata={"format": "pt"})
    sha = hashlib.sha256(weights).hexdigest()
    buf = io.BytesIO()
    torch.save({**state, "weights_sha256": sha}, buf)
    meta_bytes = json_bytes({**meta, "weights_sha256": sha}, default=str)
    tmp_weights = _write_tmp(run / WEIGHTS, weights)
    tmp_state = _write_tmp(run / STATE, buf.getvalue())
    tmp_meta = _write_tmp(run / META, meta_bytes)
    publish(tmp_state, run / STATE)
    publish(tmp_weights, run / WEIGHTS)
    publish(tmp_meta, run / META)  # last: a json always names weights that were fully written
    return sha


def load_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``state.pt`` of a run, loaded with ``weights_only=True`` onto the CPU. Raises CheckpointError if missing or
    unreadable (temporary files of an interrupted write are never considered)."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} has no {STATE}: there is nothing to resume (drop --resume to start a new run there, "
            "or give the --out of an earlier run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a damaged file come in many types
        raise CheckpointError(
            f"{path} is damaged and cannot be resumed ({type(exc).__name__}: {str(exc)[:120]}); delete it to start "
            "that run over, or train into a new --out") from None
    if not isinstance(state, dict) or state.get("state_version") != STATE_VERSION:
        raise CheckpointError(f"{path} is not a Lookalike {STATE} of version {STATE_VERSION}; it cannot be resumed")
    return state


def remove_temporaries(run_dir: str | os.PathLike) -> list[str]:
    """Delete temporary files left by an interrupted checkpoint write; returns their names."""
    run = Path(run_dir)
    removed = []
    if run.is_dir():
        for p in run.iterdir():
            if is_run_temporary(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return sorted(removed)
