"""Keep only what helps: a fine-tune's encoder is its best scored checkpoint, never one worse than its start, and a
resumed run keeps that state. The scorer is injected (a scripted sequence of scores), so the tests say what the
trainer does with scores, not what the scorecard measures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.retrieval.test_encoder_safety import write_run
from training import keep_best
from training.checkpoint import load_state
from training.keep_best import KeepBest
from training.trainer import train


class Scripted:
    """Scores in the order given (each with an interval of +-0.02); records the steps' weights it saw."""

    def __init__(self, *scores: float):
        self.scores, self.calls = list(scores), 0

    def __call__(self, encoder, paths, seed):
        s = self.scores[self.calls]
        self.calls += 1
        return SimpleNamespace(score=s, ci=(s - 0.02, s + 0.02))


@pytest.fixture
def scorer(monkeypatch):
    def install(*scores: float) -> Scripted:
        scripted = Scripted(*scores)
        monkeypatch.setattr(keep_best, "score", scripted)
        monkeypatch.setattr(keep_best, "scorecard_available", lambda: True)
        return scripted

    return install


@pytest.fixture
def init_run(tmp_path):
    run, _ = write_run(tmp_path / "start")
    return run


def _last_line(err: str) -> str:
    lines = [seg.strip() for line in err.splitlines() for seg in line.split("\r") if seg.strip()]
    return [ln for ln in lines if not ln.startswith("simclr/")][-1]  # not the progress bar's own lines


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finetune_that_gets_worse_keeps_its_start_and_says_so(tiny_config, init_run, scorer, capsys):
    scripted = scorer(0.5, 0.4, 0.3)  # start, end of epoch 1, end of epoch 2
    run = train(tiny_config(init=str(init_run), batch_size=16, epochs=2, head_warmup=0.0), progress=True)
    assert scripted.calls == 3
    assert _same(load_file(str(run / "encoder.safetensors")), load_file(str(init_run / "encoder.safetensors")))
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["scorecard"]["kept"]["step"] == 0 and meta["step"] == 8
    assert _last_line(capsys.readouterr().err) == (
        "scorecard 0.50 (start) → 0.50 (step 0): no checkpoint beat the start beyond its interval [0.48, 0.52] "
        "(best 0.40 at step 4); the encoder stays the start")
    from retrieval.encoders import load_encoder

    load_encoder(str(run))  # the kept weights are a valid encoder of the run (its sha256 matches)


def test_the_best_checkpoint_is_kept_and_resume_keeps_the_state(tiny_config, init_run, scorer, capsys):
    scripted = scorer(0.5, 0.7, 0.6)
    run = train(tiny_config(init=str(init_run), batch_size=16, epochs=1, head_warmup=0.0), progress=False)
    at_step_4 = load_file(str(run / "encoder.safetensors"))
    assert not _same(at_step_4, load_file(str(init_run / "encoder.safetensors")))
    state = load_state(run)["keep_best"]
    assert (state["start"]["score"], state["best"]["score"], state["best"]["step"]) == (0.5, 0.7, 4)
    assert _same(state["best_weights"], at_step_4)

    resumed = train(tiny_config(epochs=2, resume=True), progress=True)
    assert scripted.calls == 3  # the start was not scored again
    assert _same(load_file(str(resumed / "encoder.safetensors")), at_step_4)  # step 8 scored 0.6 < 0.7
    assert load_state(resumed)["step"] == 8  # the run itself went on
    assert _last_line(capsys.readouterr().err) == "scorecard 0.50 (start) → 0.70 (step 4)"


def test_a_checkpoint_within_the_start_interval_does_not_replace_it(monkeypatch):
    net = nn.Linear(2, 2)
    keep = KeepBest([], seed=0, encoder_of=lambda m: m, share=None)
    scores = iter([SimpleNamespace(score=0.50, ci=(0.45, 0.55)), SimpleNamespace(score=0.54, ci=(0.50, 0.58)),
                   SimpleNamespace(score=0.60, ci=(0.56, 0.64))])
    monkeypatch.setattr(keep_best, "score", lambda enc, paths, seed: next(scores))
    keep.begin(net)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    exported, _ = keep.checkpoint(net, 1, 10.0, final=False, stopping=False, state={}, meta={})
    assert _same(exported.state_dict(), start) and keep.best["step"] == 0  # 0.54 is inside [0.45, 0.55]
    state, meta = {}, {}
    exported, _ = keep.checkpoint(net, 2, 20.0, final=True, stopping=False, state=state, meta=meta)
    assert exported is net and keep.best["step"] == 2  # 0.60 is beyond it
    assert state["keep_best"]["best"]["score"] == 0.60 and meta["scorecard"]["kept"]["step"] == 2


def test_scoring_between_start_and_end_stays_within_its_share_of_the_time():
    keep = KeepBest([], seed=0, encoder_of=lambda m: m)
    keep.spent_s = 10.0
    assert not keep._due(5, elapsed_s=30.0, final=False, stopping=False)  # 10 s against 30 s of training: > 25%
    assert keep._due(6, elapsed_s=30.0, final=True, stopping=False)  # the last checkpoint always
    assert keep._due(7, elapsed_s=40.0, final=False, stopping=False)  # 10 s against 40 s
    assert not keep._due(8, elapsed_s=600.0, final=True, stopping=True)  # a stop asked for: save and go


def test_a_second_run_from_the_same_start_beside_the_first_reuses_its_start_score(tiny_config, init_run, scorer,
                                                                                   tmp_path):
    scripted = scorer(0.5, 0.4, 0.45)
    train(tiny_config(init=str(init_run), batch_size=16, head_warmup=0.0), progress=False)
    second = train(tiny_config(init=str(init_run), batch_size=16, head_warmup=0.0, out=str(tmp_path / "again")),
                   progress=False)
    assert scripted.calls == 3  # start, step 4; then only the second run's step 4
    meta = json.loads((second / "encoder.json").read_text())
    assert meta["scorecard"]["start"]["score"] == 0.5 and meta["scorecard"]["kept"]["step"] == 0


def test_with_the_real_scorecard_the_kept_weights_are_those_of_the_kept_step(tiny_config, init_run):
    run = train(tiny_config(init=str(init_run), batch_size=16), progress=False)
    card = json.loads((run / "encoder.json").read_text())["scorecard"]
    assert 0.0 <= card["start"]["score"] <= 1.0 and card["held_out"] == min(keep_best.HELD_OUT, 64)
    assert [h["step"] for h in card["history"]] == [0, 4]
    kept = load_file(str(run / "encoder.safetensors"))
    last = {k.removeprefix("backbone."): v for k, v in load_state(run)["method"].items() if k.startswith("backbone.")}
    start = load_file(str(init_run / "encoder.safetensors"))
    assert _same(kept, start if card["kept"]["step"] == 0 else last)
    assert not _same(start, last)  # the run itself trained
