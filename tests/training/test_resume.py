"""Resume: an interrupted run continues from the exact step and ends with the weights of an uninterrupted one;
temporary files of a killed checkpoint write are never read; damaged or conflicting state is refused clearly."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from safetensors.torch import load_file

from retrieval.encoders import load_encoder, sha256_file
from retrieval.errors import CheckpointError, LookalikeError
from training import checkpoint as ckpt
from training.checkpoint import load_state
from training.trainer import TrainConfig, train


def stop_after(k: int):
    """(stop_event, on_log) that stop a run right after step k."""
    stop = threading.Event()

    def on_log(record):
        if record.get("step") == k and "loss" in record:
            stop.set()

    return stop, on_log


def steps_logged(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def assert_same_weights(run_a, run_b):
    a, b = load_file(str(run_a / "encoder.safetensors")), load_file(str(run_b / "encoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")


@pytest.mark.parametrize("method, workers_after", [("moco", 0), ("byol", 0), ("simclr", 2)])
def test_interrupted_then_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path, method, workers_after):
    # MoCo: queue, pointer, key encoder and its shuffle RNG; BYOL: EMA target with a progress-dependent momentum;
    # SimCLR resumed with 2 DataLoader workers: the views do not depend on how many workers make them.
    full = train(tiny_config(method=method, epochs=2, out=str(tmp_path / "full")), progress=False)

    part_cfg = tiny_config(method=method, epochs=2, out=str(tmp_path / "part"))
    stop, on_log = stop_after(3)  # mid-epoch 1 (4 steps per epoch)
    part = train(part_cfg, progress=False, stop_event=stop, on_log=on_log)
    state = load_state(part)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 0, 3)

    resumed = train(tiny_config(method=method, epochs=2, out=str(part), resume=True, workers=workers_after),
                    progress=False)
    assert resumed == part
    assert steps_logged(part) == list(range(1, 9))  # continues at step 4, nothing logged twice
    assert load_state(part)["step"] == 8
    assert_same_weights(full, part)
    if method == "moco":  # the queue too
        q_full, q_part = load_state(full)["method"]["queue"], load_state(part)["method"]["queue"]
        torch.testing.assert_close(q_full, q_part, rtol=1e-5, atol=1e-6)


def test_crash_between_file_renames_leaves_a_resumable_run(tiny_config, tmp_path, monkeypatch):
    """Kill the writer half-way through the second checkpoint: tmp files are left behind, the previous encoder
    stays readable or is refused by its sha256, and a resume finishes exactly like an uninterrupted run."""
    full = train(tiny_config(epochs=2, out=str(tmp_path / "full")), progress=False)

    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 5:  # 2nd checkpoint: state.pt replaced, then the process "dies" before the weights
            raise SystemExit("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", dying_replace)
    run = tmp_path / "crash"
    with pytest.raises(SystemExit):
        train(tiny_config(epochs=2, out=str(run)), progress=False)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)

    leftovers = sorted(p.name for p in run.iterdir() if ".tmp-" in p.name)
    assert leftovers == [f".encoder.json.tmp-{os.getpid()}", f".encoder.safetensors.tmp-{os.getpid()}"]
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["step"] == 4 and meta["weights_sha256"] == sha256_file(run / "encoder.safetensors")
    load_encoder(str(run))  # the step-4 encoder is intact
    assert load_state(run)["step"] == 8  # state.pt is complete (atomic) and newer

    train(tiny_config(epochs=2, out=str(run), resume=True), progress=False)  # nothing left to do but tidy up
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    assert_same_weights(full, run)  # state.pt (step 8) is self-contained: weights rewritten from it


def test_tmp_leftovers_are_ignored_and_removed(tiny_config, image_dir):
    stop, on_log = stop_after(2)
    run = train(tiny_config(epochs=2, val_dir=str(image_dir)), progress=False, stop_event=stop, on_log=on_log)
    (run / ".state.pt.tmp-4242").write_bytes(b"half a pickle")
    (run / ".encoder.safetensors.tmp-4242").write_bytes(b"\0" * 10)
    # a bare resume: data folder, --val and the epoch budget come from the run
    train(TrainConfig(data_dir="", out=str(run), resume=True, device="cpu", workers=0), progress=False)
    knn_steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                 if "knn_acc" in line]
    assert knn_steps == [0, 4, 8]  # the monitor carried on after the resume
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    assert load_state(run)["step"] == 8


def test_damaged_state_is_refused_with_a_clear_message(tiny_config):
    run = train(tiny_config(), progress=False)
    (run / "state.pt").write_bytes((run / "state.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="damaged"):
        train(tiny_config(resume=True, epochs=2), progress=False)


def test_resume_without_state_and_conflicting_settings_are_refused(tiny_config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_config(resume=True, out=str(tmp_path / "empty")), progress=False)
    run = train(tiny_config(method="byol"), progress=False)
    with pytest.raises(LookalikeError, match="method='moco'"):
        train(tiny_config(method="moco", resume=True, epochs=2), progress=False)
    # a default-valued option does not conflict: the run's own method is used
    train(tiny_config(resume=True, epochs=2), progress=False)
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["method"] == "byol" and meta["step"] == 8


def test_resuming_a_finished_run_changes_nothing(tiny_config):
    run = train(tiny_config(), progress=False)
    before = (sha256_file(run / "encoder.safetensors"), (run / "encoder.json").read_text())
    train(tiny_config(resume=True), progress=False)
    assert (sha256_file(run / "encoder.safetensors"), (run / "encoder.json").read_text()) == before
