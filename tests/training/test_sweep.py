"""The method sweep: every method trained, indexed and scored into a leaderboard (JSON, table, chart), the winner
marked as the default index, and an interrupted sweep that goes on where it stopped. Tiny runs (resnet10t at 32 px,
one epoch of 4 steps) and an injected scorer (a score per row), so the tests check the sweep, not the scorecard."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import training.trainer
from app.cli import main
from retrieval.workspace import Workspace
from retrieval.errors import LookalikeError
from training import sweep as sweep_mod
from training.sweep import plan_sweep, sweep

TINY = {"backbone": "resnet10t", "image_size": 32, "batch_size": 16, "epochs": 1, "workers": 0, "precision": "fp32",
        "log_every": 1}
SCORES = {"pixels": 0.2, "simclr": 0.5, "moco": 0.6}


@pytest.fixture
def scored(monkeypatch):
    """Score each row by the method its spec names; count the trainings and what they were given."""
    def fake_score(encoder, paths, seed, sample):
        row = "pixels" if encoder.spec == "pixels" else encoder.spec.rstrip("/").rsplit("/", 1)[-1]
        return SimpleNamespace(score=SCORES[row], ci=(SCORES[row] - 0.05, SCORES[row] + 0.05), parts={"x": 1.0},
                               n_images=len(paths))

    trained = []
    real_train = training.trainer.train

    def counting_train(config, **kwargs):
        trained.append(config)
        return real_train(config, **kwargs)

    monkeypatch.setattr(sweep_mod, "score", fake_score)
    monkeypatch.setattr(training.trainer, "train", counting_train)
    return trained


def _plan(tmp_path, image_dir, methods):
    return plan_sweep(image_dir, 5, methods, name="tiny", runs=tmp_path / "runs", indexes=tmp_path / "indexes",
                      settings=TINY)


def test_a_sweep_writes_its_leaderboard_marks_the_winner_and_skips_what_is_done(tmp_path, image_dir, scored):
    board = sweep(_plan(tmp_path, image_dir, ["simclr"]), show=False)
    assert set(board["rows"]) == {"pixels", "simclr"} and board["winner"] == "simclr"
    board = sweep(_plan(tmp_path, image_dir, ["simclr", "moco"]), show=False)
    assert [Path(c.out).name for c in scored] == ["simclr", "moco"]  # simclr was not trained again
    folder = tmp_path / "runs" / "sweep-tiny"
    saved = json.loads((folder / "leaderboard.json").read_text())
    assert saved["status"] == "done" and saved["winner"] == "moco" and set(saved["rows"]) == {"pixels", "simclr",
                                                                                                "moco"}
    assert saved["rows"]["moco"]["ci"] == [pytest.approx(0.55), pytest.approx(0.65)]
    table = (folder / "leaderboard.txt").read_text().splitlines()
    assert [line.split()[1] for line in table[1:4]] == ["moco", "simclr", "pixels"]
    assert (folder / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert Workspace(tmp_path / "indexes").marked_index() == "sweep-tiny-moco"
    assert (tmp_path / "indexes" / "sweep-tiny-simclr").is_dir()


def test_an_interrupted_sweep_resumes_the_method_it_stopped_in(tmp_path, image_dir, scored):
    stop = threading.Event()

    def stop_during_moco(event):
        if event["row"] == "moco" and "record" in event and event["record"].get("step") == 2:
            stop.set()

    board = sweep(_plan(tmp_path, image_dir, ["simclr", "moco"]), progress=stop_during_moco, show=False,
                  stop_event=stop)
    assert board["status"] == "stopped" and set(board["rows"]) == {"pixels", "simclr"}
    assert Workspace(tmp_path / "indexes").marked_index() is None
    board = sweep(_plan(tmp_path, image_dir, ["simclr", "moco"]), show=False)
    assert [(Path(c.out).name, c.resume) for c in scored] == [("simclr", False), ("moco", False), ("moco", True)]
    assert board["status"] == "done" and board["winner"] == "moco"
    meta = json.loads((tmp_path / "runs" / "sweep-tiny" / "moco" / "encoder.json").read_text())
    assert meta["step"] == 4 and meta["finished"]


def test_bad_input_is_refused_before_anything_runs(tmp_path, image_dir, capsys):
    with pytest.raises(LookalikeError, match="unknown method 'nope'"):
        _plan(tmp_path, image_dir, ["simclr", "nope"])
    with pytest.raises(LookalikeError, match="learns from a teacher"):
        _plan(tmp_path, image_dir, ["distill"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LookalikeError, match="has no images"):
        _plan(tmp_path, tmp_path / "empty", None)
    with pytest.raises(LookalikeError, match="--minutes must be a positive number"):
        plan_sweep(image_dir, 0, None)
    assert main(["sweep", str(image_dir), "--minutes", "1", "--methods", "nope", "--runs",
                 str(tmp_path / "runs")]) == 2
    assert "error: unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
