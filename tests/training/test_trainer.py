"""Trainer: every method trains and leaves a loadable run directory; settings are checked early; a diverging
run stops with a clear error and keeps its last good checkpoint; stop requests and time budgets end cleanly."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrieval.collection import scan
from retrieval.encoders import build_backbone, load_encoder, sha256_file
from retrieval.errors import LookalikeError
from training.augment import AugmentConfig, TwoViewTransform
from training.checkpoint import load_state
from training.data import EpochSampler, TwoViewDataset
from training.methods import METHODS
from training.trainer import LR_FLOOR, TrainConfig, TrainingDivergedError, get_lr, train

from .conftest import TINY_BACKBONE

STEP_KEYS = {"step", "epoch", "loss", "lr", "images_per_s", "time"}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not METHODS[m].uses_teacher))  # distill: test_distill
def test_each_method_trains_one_epoch_into_a_loadable_run(tiny_config, method):
    stem = "small" if method == "simclr" else "default"  # one run covers the stem tweak
    run = train(tiny_config(method=method, stem=stem), progress=False)

    assert {p.name for p in run.iterdir()} == {"encoder.safetensors", "encoder.json", "state.pt", "metrics.jsonl"}
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["method"] == method and meta["backbone"] == TINY_BACKBONE and meta["stem"] == stem
    assert meta["image_size"] == 32 and meta["step"] == 4 and meta["finished"] is True
    assert meta["weights_sha256"] == sha256_file(run / "encoder.safetensors")
    assert meta["data"]["count"] == 64 and len(meta["data"]["fingerprint"]) == 16

    steps = [r for r in records(run) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(STEP_KEYS <= set(r) and math.isfinite(r["loss"]) and r["lr"] > 0 for r in steps)

    # the weights are a plain timm backbone (after the same stem tweak), loadable strictly
    model = build_backbone(TINY_BACKBONE, stem=stem)
    model.load_state_dict(load_file(str(run / "encoder.safetensors")), strict=True)
    assert meta["dim"] == model.num_features
    # ... and differ from a fresh initialisation: training changed them
    state = load_state(run)
    assert state["step"] == 4 and state["epoch"] == 1 and state["batch_in_epoch"] == 0
    online = {k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")}
    saved = load_file(str(run / "encoder.safetensors"))
    assert online.keys() == saved.keys() and all(torch.equal(online[k], saved[k]) for k in saved)

    enc = load_encoder(str(run))
    vec = enc.embed_uint8(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert vec.shape == (2, model.num_features) and np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-4)


def test_knn_monitor_logs_start_and_epoch_accuracy(tiny_config, image_dir):
    run = train(tiny_config(val_dir=str(image_dir), epochs=2), progress=False)
    knn = [r for r in records(run) if "knn_acc" in r]
    assert [r["step"] for r in knn] == [0, 4, 8]
    assert all(0.0 <= r["knn_acc"] <= 1.0 for r in knn)
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["metrics"]["knn_acc"] == pytest.approx(knn[-1]["knn_acc"], abs=1e-6)
    assert meta["metrics"]["knn_acc_start"] == pytest.approx(knn[0]["knn_acc"], abs=1e-6)


@pytest.mark.parametrize("overrides, words", [
    ({"method": "vicreg"}, "simclr"),
    ({"epochs": None, "minutes": None}, "--epochs"),
    ({"epochs": 0}, "--epochs"),
    ({"batch_size": 1}, "--batch-size"),
    ({"image_size": 8}, "--image-size"),
    ({"precision": "fp8"}, "--precision"),
    ({"optimizer": "adam"}, "adamw"),
    ({"hparams": {"temprature": 0.5}}, "temperature"),
    ({"augment": {"strenght": 1.0}}, "strength"),
    ({"augment": {"gray_p": 2.0}}, "gray_p"),
    ({"val_dir": "/no/such/folder"}, "--val"),
    ({"data_dir": "/no/such/folder"}, "not found"),
    ({"backbone": "resnet_nonexistent"}, "backbone"),
    ({"stem": "tiny"}, "stem"),
])
def test_bad_settings_fail_early_with_an_actionable_message(tiny_config, tmp_path, overrides, words):
    with pytest.raises(LookalikeError, match=words):
        train(tiny_config(**overrides), progress=False)
    assert not (tmp_path / "run").exists()  # a refused start leaves nothing behind


def test_fp16_on_cpu_is_refused_and_too_few_images_for_a_batch(tiny_config):
    with pytest.raises(LookalikeError, match="CUDA"):
        train(tiny_config(precision="fp16"), progress=False)
    with pytest.raises(LookalikeError, match="--batch-size 64"):
        train(tiny_config(batch_size=100), progress=False)


def test_an_existing_run_is_never_overwritten_without_resume(tiny_config):
    run = train(tiny_config(), progress=False)
    before = sha256_file(run / "encoder.safetensors")
    with pytest.raises(LookalikeError, match="--resume"):
        train(tiny_config(), progress=False)
    assert sha256_file(run / "encoder.safetensors") == before


def test_nan_loss_stops_with_error_and_keeps_last_good_checkpoint(tiny_config, monkeypatch):
    from training.methods.simclr import SimCLR

    calls = {"n": 0}
    real_forward = SimCLR.forward

    def forward(self, x1, x2):  # finite for epoch 1 (4 steps), NaN from the 2nd step of epoch 2
        calls["n"] += 1
        loss = real_forward(self, x1, x2)
        return loss * float("nan") if calls["n"] >= 6 else loss

    monkeypatch.setattr(SimCLR, "forward", forward)
    with pytest.raises(TrainingDivergedError, match=r"step 6 .*last good checkpoint \(step 4\)"):
        train(tiny_config(epochs=3), progress=False)
    run = tiny_config().out
    meta = json.loads(open(f"{run}/encoder.json").read())
    assert meta["step"] == 4
    assert meta["weights_sha256"] == sha256_file(f"{run}/encoder.safetensors")
    assert load_state(run)["step"] == 4
    weights = load_file(f"{run}/encoder.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    load_encoder(run)  # still a usable encoder
    assert not [p for p in __import__("os").listdir(run) if ".tmp-" in p]


def test_nan_before_any_checkpoint_says_so(tiny_config, monkeypatch):
    from training.methods.simclr import SimCLR

    monkeypatch.setattr(SimCLR, "forward", lambda self, x1, x2: torch.tensor(float("inf"), requires_grad=True))
    with pytest.raises(TrainingDivergedError, match="no checkpoint"):
        train(tiny_config(), progress=False)


def test_stop_event_saves_and_returns(tiny_config):
    stop = threading.Event()
    seen = []

    def on_log(record):
        seen.append(record)
        if record.get("step") == 2:
            stop.set()

    run = train(tiny_config(epochs=3), progress=False, stop_event=stop, on_log=on_log)
    state = load_state(run)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 0, 2)
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["step"] == 2 and meta["finished"] is False
    assert [r["step"] for r in seen] == [1, 2] and seen == records(run)


def test_time_budget_ends_the_run_with_the_lr_at_its_floor(tiny_config):
    run = train(tiny_config(epochs=None, minutes=0.08), progress=False)  # ~5 s
    steps = [r for r in records(run) if "loss" in r]
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["finished"] is True and len(steps) >= 2
    # the run ends at the first step past the budget: however slow the machine, within one step's time of it
    # (steps are logged one by one; the slowest interval bounds a step, plus slack for the epoch-end work)
    slowest = max(b["time"] - a["time"] for a, b in zip(steps, steps[1:]))
    assert 4.8 <= steps[-1]["time"] <= 4.8 + 2 * slowest + 5
    assert steps[-1]["lr"] < 0.1 * max(r["lr"] for r in steps)  # the cosine ran its course over the time budget


def test_lars_and_bf16_autocast_train(tiny_config):
    run = train(tiny_config(optimizer="lars", precision="bf16", method="byol"), progress=False)
    assert all(math.isfinite(r["loss"]) for r in records(run) if "loss" in r)


def test_damaged_image_is_skipped_and_recorded(tiny_config, image_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_dir, data)
    good = (data / "circle" / "c0_0.png").read_bytes()
    (data / "circle" / "broken.png").write_bytes(good[: len(good) // 2])  # header fine, pixels truncated
    assert len(scan(data).items) == 65  # the header probe cannot tell

    # 65 images in 5 batches of 13: every image is used, the broken one replaced by its neighbour
    run = train(tiny_config(data_dir=str(data), batch_size=13), progress=False)
    meta = json.loads((run / "encoder.json").read_text())
    assert [b["path"] for b in meta["data"]["bad_while_training"]] == ["circle/broken.png"]
    assert meta["step"] == 5


def test_dataset_substitutes_the_next_image_for_a_bad_one(image_dir, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(image_dir, data)
    (data / "circle" / "a_bad.png").write_bytes((data / "circle" / "c0_0.png").read_bytes()[:60])
    col = scan(data)
    ds = TwoViewDataset(col, TwoViewTransform(AugmentConfig(image_size=32)), seed=3)
    bad_index = [it.path for it in col.items].index("circle/a_bad.png")
    v1, v2, bad = ds[(0, bad_index)]
    assert v1.shape == v2.shape == (3, 32, 32) and v1.dtype == torch.uint8
    assert bad and bad[0][0] == "circle/a_bad.png" and bad[0][1]
    # views are a function of (seed, epoch, index) only
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds[(3, 5)][0], a[0])


def test_epoch_sampler_is_deterministic_resumable_and_splits_global_batches():
    single = EpochSampler(50, 8, seed=1)
    single.set_epoch(2)
    order = [i for _, i in single]
    assert len(order) == 48 and len(set(order)) == 48 and order == [i for _, i in single]
    single.set_epoch(3)
    assert [i for _, i in single] != order
    single.set_epoch(2, start_batch=4)
    assert [i for _, i in single] == order[32:]

    ranks = [EpochSampler(50, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [[i for _, i in s] for s in ranks]
    for b in range(6):  # global batch b = rank 0's slice then rank 1's slice
        assert per_rank[0][4 * b:4 * b + 4] + per_rank[1][4 * b:4 * b + 4] == order[8 * b:8 * b + 8]


def test_get_lr_warms_up_then_follows_the_cosine_to_its_floor():
    assert get_lr(1.0, 0, 0.0, warmup_steps=10) == pytest.approx(0.1, rel=1e-3)
    assert get_lr(1.0, 4, 0.04, warmup_steps=10) == pytest.approx(0.5 * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 *
                                                                         (1 + math.cos(math.pi * 0.04))))
    assert get_lr(1.0, 9, 0.09, warmup_steps=1000) == pytest.approx(0.9 * get_lr(1.0, 10**6, 0.09, 1), rel=1e-6)
    assert get_lr(1.0, 50, 0.5, warmup_steps=10) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) * 0.5)
    assert get_lr(1.0, 100, 1.0, warmup_steps=10) == pytest.approx(LR_FLOOR)
    assert get_lr(0.3, 0, 0.0, warmup_steps=10, fixed=True) == 0.3


def test_config_field_names_match_the_cli_flags():
    from app.cli import build_parser
    from training.settings import SETTINGS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = commands.choices["train"]
    flags = {a.dest: a.option_strings for a in train_parser._actions if a.option_strings}
    for s in SETTINGS:  # every setting is a flag of `lookalike train`, into the field of the same name
        assert s.flag in flags.get(s.name, ()), f"{s.name}: no {s.flag} flag"
    structured = {"data_dir", "hparams", "augment", "explicit"}  # the folder, dict-valued settings, the record
    assert {f.name for f in dataclasses.fields(TrainConfig)} == {s.name for s in SETTINGS} | structured
    assert set(flags) - {"help"} == {s.name for s in SETTINGS}
    assert flags["val_dir"] == ["--val"] and flags["batch_size"] == ["--batch-size"]


def test_ctrl_c_finishes_the_step_saves_and_returns(tiny_config):
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)

    def on_log(record):
        if record.get("step") == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3's logging

    run = train(tiny_config(epochs=3), progress=False, on_log=on_log)
    assert load_state(run)["step"] == 2
    assert json.loads((run / "encoder.json").read_text())["finished"] is False
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handler is gone again


def test_grid_pooled_run_records_its_pooling_and_dimension(tiny_config):
    run = train(tiny_config(method="simclr", pool="grid"), progress=False)
    meta = json.loads((run / "encoder.json").read_text())
    enc = load_encoder(str(run))
    assert meta["pool"] == "grid" and enc.pool == "grid" and meta["dim"] == enc.dim
    vec = enc.embed_uint8(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert vec.shape == (2, meta["dim"])
    assert load_encoder(f"{run}?pool=avg").dim != meta["dim"]


def test_a_run_shorter_than_log_every_still_logs_its_loss(tiny_config, image_dir, tmp_path):
    data = tmp_path / "forty"  # 40 images at batch 16: one epoch is 2 steps, fewer than log_every
    for src in sorted(image_dir.rglob("*.png"))[:40]:
        (data / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, data / src.parent.name / src.name)
    run = train(tiny_config(data_dir=str(data), log_every=10), progress=False)
    losses = [r for r in records(run) if "loss" in r]
    assert [r["step"] for r in losses] == [2] and set(losses[0]) == STEP_KEYS
    assert math.isfinite(losses[0]["loss"]) and losses[0]["epoch"] == 1.0
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["metrics"]["loss"] == pytest.approx(losses[0]["loss"], abs=1e-6) and meta["finished"] is True
