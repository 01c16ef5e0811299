"""Checkpoint files under crashes and hostile input, on a two-parameter model (no training, milliseconds each):
state.pt is never unpickled beyond tensors and plain containers, a write killed at any point leaves the previous
checkpoint readable, encoder.json is never ahead of state.pt, and everything is flushed before it is renamed.
The last test trains for a few steps: a resume forgets what was logged after the checkpoint it resumes from."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from retrieval.encoders import sha256_file
from retrieval.errors import CheckpointError
from training import checkpoint as ckpt
from training.checkpoint import STATE_VERSION, load_state, read_meta, remove_temporaries, save_checkpoint
from training.trainer import train


class Payload:
    """Unpickling this creates a directory: proof that the loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def model(value: float) -> nn.Module:
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(value)
    return m


def save(run: Path, step: int) -> str:
    """Checkpoint number ``step``: weights all equal to ``step``, state and encoder.json saying so."""
    return save_checkpoint(run, model(float(step)), {"state_version": STATE_VERSION, "step": step},
                           {"format_version": 1, "step": step})


def weights_value(run: Path) -> float:
    return float(load_file(str(run / "encoder.safetensors"))["weight"][0, 0])


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    save(run, 1)
    return run


# ----- loading -------------------------------------------------------------------------------------------------

def test_a_state_file_carrying_code_is_refused_without_running_it(run, tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"state_version": STATE_VERSION, "step": 5, "extra": Payload(marker)}, run / "state.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_state(run)
    assert not marker.exists()


@pytest.mark.parametrize("content", [{"state_version": STATE_VERSION + 1, "step": 5}, {"step": 5}, [1, 2]])
def test_a_state_file_of_another_version_or_shape_is_refused(run, content):
    torch.save(content, run / "state.pt")
    with pytest.raises(CheckpointError, match=f"version {STATE_VERSION}"):
        load_state(run)


# ----- crashes -------------------------------------------------------------------------------------------------

def check_consistent(run: Path) -> tuple[int, int]:
    """What any reader may rely on after a crash; returns (state step, encoder.json step)."""
    state_step = load_state(run)["step"]  # complete, whichever version
    meta = read_meta(run)
    assert state_step in (1, 2) and meta["step"] in (1, 2)
    assert meta["step"] <= state_step, "encoder.json is ahead of state.pt: it was not written last"
    if sha256_file(run / "encoder.safetensors") == meta["weights_sha256"]:
        assert weights_value(run) == meta["step"]  # weights encoder.json vouches for are the ones it describes
    return state_step, meta["step"]


def test_a_write_killed_half_way_leaves_the_previous_checkpoint(run, monkeypatch):
    real = ckpt._write_tmp
    calls = {"n": 0}

    def dies_in_second_file(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # weights written, state.pt half written: the process dies here
            real(path, data[: len(data) // 2])
            raise SystemExit("killed")
        return real(path, data)

    monkeypatch.setattr(ckpt, "_write_tmp", dies_in_second_file)
    with pytest.raises(SystemExit):
        save(run, 2)
    assert check_consistent(run) == (1, 1)
    assert weights_value(run) == 1.0 and sha256_file(run / "encoder.safetensors") == read_meta(run)["weights_sha256"]
    assert remove_temporaries(run)  # leftovers exist, were never read, and go
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("dies_before_rename", [1, 2, 3])
def test_a_write_killed_between_renames_never_puts_encoder_json_ahead(run, monkeypatch, dies_before_rename):
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == dies_before_rename:
            raise SystemExit("killed")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(SystemExit):
        save(run, 2)
    monkeypatch.setattr(ckpt.os, "replace", real)
    check_consistent(run)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors via /proc")
def test_every_file_is_flushed_to_disk_before_it_is_renamed(run, monkeypatch):
    synced: list[str] = []
    unsynced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        if os.path.basename(str(src)) not in synced:
            unsynced.append(os.path.basename(str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    save(run, 2)
    assert unsynced == []
    assert check_consistent(run) == (2, 2)


# ----- resume after a kill -------------------------------------------------------------------------------------

def test_records_logged_after_the_checkpoint_are_not_repeated_on_resume(tiny_config):
    stop = threading.Event()
    run = train(tiny_config(), progress=False, stop_event=stop,
                on_log=lambda r: stop.set() if r.get("step") == 2 and "loss" in r else None)
    assert load_state(run)["step"] == 2
    # A kill -9 after steps 3 and 4 were logged but before they were checkpointed leaves them in metrics.jsonl.
    with open(run / "metrics.jsonl", "a") as f:
        for step in (3, 4):
            f.write(json.dumps({"step": step, "loss": 9.0}) + "\n")
    train(tiny_config(resume=True), progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert all(r["loss"] != 9.0 for r in records if "loss" in r)  # the lost steps were trained and logged again
