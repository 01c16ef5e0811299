"""A training run killed with SIGKILL mid-epoch leaves a loadable run directory, and --resume finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from retrieval.encoders import load_encoder

EPOCHS, BATCH, N_IMAGES = 4, 16, 64
REPO = Path(__file__).resolve().parents[2]


def _train_cmd(image_dir: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "train", str(image_dir), "--method", "simclr", "--backbone", "resnet10t",
            "--image-size", "32", "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--workers", "0",
            "--device", "cpu", "--out", str(run), *extra]


def test_sigkill_mid_epoch_then_resume_finishes_the_run(image_dir, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    log = (tmp_path / "first.log").open("wb")
    proc = subprocess.Popen(_train_cmd(image_dir, run), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240  # generous: CI machines can be slow and busy
        while not (run / "encoder.json").exists():
            assert proc.poll() is None, f"training exited early: {(tmp_path / 'first.log').read_text()}"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # right after the first epoch's checkpoint: early in epoch 2
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    meta = json.loads((run / "encoder.json").read_text())
    assert meta["finished"] is False and meta["step"] < EPOCHS * (N_IMAGES // BATCH)
    encoder = load_encoder(str(run))  # the last complete checkpoint, never a partial one
    assert encoder is not None

    done = subprocess.run(_train_cmd(image_dir, run, "--resume"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["step"] == EPOCHS * (N_IMAGES // BATCH)
    assert meta["finished"] is True
    load_encoder(str(run))
