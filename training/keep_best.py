"""Keep only what helps: a fine-tune scores its encoder on a held-out sample of the folder with the label-free
scorecard (:mod:`retrieval.scorecard`) at its start and at its checkpoints, and the run's encoder is the best of
them, never one worse than the start.

* The held-out sample: :data:`HELD_OUT` images of the folder drawn with the run's seed (the same every segment of a
  resumed run). They are held out from the score, not from training: the scorecard searches edited copies of them
  among them, which no training view is.
* A checkpoint replaces the kept encoder when its score is above the start's interval (the start's bootstrap 95%
  upper bound) and above the best so far. Otherwise ``encoder.safetensors`` keeps the start's weights (or the
  best checkpoint's): a fine-tune that made things worse hands back what it started from, and says so.
* Cost: the start and the last checkpoint are always scored; one in between only while the scorecard has so far
  taken at most :data:`SCORE_SHARE` of the run's training time (so a folder of many short epochs is not scored at
  each). Scoring is not training time: the run's clock (``--minutes``) skips it. The start's score is cached beside
  the run (:data:`START_CACHE` in the run's parent folder, keyed by the init's weights, the preprocessing, the seed and
  the held-out files), so the runs of a sweep, or a second run from the same start, score it once.
* Resume: the start's and the best score, the best step and the best weights are saved in ``state.pt``
  (``state["keep_best"]``); ``encoder.json`` records the same as ``"scorecard"``.

The trainer's hooks are a few lines: :meth:`KeepBest.begin` before the first step, :meth:`KeepBest.checkpoint`
when it saves, :meth:`KeepBest.summary` as the run's last line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.errors import LookalikeError
from retrieval.fsutil import atomic_write_json, read_json_dict

__all__ = ["KeepBest", "for_run", "score", "HELD_OUT", "SCORE_SHARE", "START_CACHE"]

# Held-out images scored at each scoring. See docs/keep-best-and-sweep.md for the measurement behind the numbers.
HELD_OUT = 40
SCORE_SHARE = 0.25  # of the run's training time, at most, spent on scoring checkpoints between start and end
START_CACHE = ".keep-best-starts.json"


def score(encoder, paths: list[Path], seed: int):
    """The scorecard of ``encoder`` on ``paths`` (a seam: tests inject a scorer of their own here)."""
    from retrieval.scorecard import score_encoder

    return score_encoder(encoder, paths, seed=seed)


def scorecard_available() -> bool:
    try:
        import retrieval.scorecard  # noqa: F401
    except ImportError:
        return False
    return True


def held_out(paths: list[Path], seed: int, n: int = HELD_OUT) -> list[Path]:
    """A seeded sample of ``n`` of ``paths`` (all of them when there are fewer), in a stable order."""
    chosen = random.Random(seed).sample(range(len(paths)), min(n, len(paths)))
    return [paths[i] for i in sorted(chosen)]


class KeepBest:
    """The state of keep-best in one run: ``start`` / ``best`` are ``{"step", "score", "ci"}``."""

    def __init__(self, paths: list[Path], seed: int, encoder_of: Callable[[nn.Module], Any],
                 share: float | None = SCORE_SHARE, cache: Path | None = None, cache_key: str = ""):
        self.paths, self.seed, self.encoder_of, self.share = paths, seed, encoder_of, share
        self.cache, self.cache_key = cache, cache_key
        self.start: dict | None = None
        self.best: dict | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self.spent_s = 0.0

    # -- the trainer's hooks ----------------------------------------------------------------------------------
    def begin(self, backbone: nn.Module, step: int = 0) -> float:
        """Score the starting weights (once per run: a resumed run has its start already; a start scored by an
        earlier run beside this one comes from the cache); returns the seconds it took."""
        spent = self.spent_s
        if self.start is None:
            cached = self._cached_start()
            self.start = self.best = {**cached, "step": int(step)} if cached else self._score(backbone, step)
            if cached:
                self.history.append(self.start)
            else:
                self._cache_start()
            self.best_weights = _copy_weights(backbone)
        return self.spent_s - spent

    def checkpoint(self, backbone: nn.Module, step: int, elapsed_s: float, final: bool, stopping: bool,
                   state: dict, meta: dict) -> tuple[nn.Module, float]:
        """Score this checkpoint if due (``elapsed_s``: the run's training time so far), put keep-best's state into
        ``state`` and ``meta``; returns the module whose weights the checkpoint exports as the run's encoder (the
        best so far) and the seconds scoring took."""
        spent = self.spent_s
        if self.start is None:
            self.begin(backbone, step)
        elif self._due(step, elapsed_s, final, stopping):
            scored = self._score(backbone, step)
            if scored["score"] > max(self.start["ci"][1], self.best["score"]):
                self.best, self.best_weights = scored, _copy_weights(backbone)
        state["keep_best"] = self.state_dict()
        meta["scorecard"] = self.record()
        if self.best is not None and self.best["step"] == step:
            return backbone, self.spent_s - spent
        kept = copy.deepcopy(backbone)
        kept.load_state_dict(self.best_weights)
        return kept, self.spent_s - spent

    def summary(self) -> str:
        """The run's last line: ``scorecard 0.xx (start) → 0.yy (step N)``, or why the start was kept."""
        if self.start is None:
            return "scorecard: not scored (the run stopped before its start was scored)"
        head = f"scorecard {self.start['score']:.2f} (start) → {self.best['score']:.2f} (step {self.best['step']})"
        if self.best["step"] != self.start["step"]:
            return head
        tried = [h for h in self.history if h["step"] != self.start["step"]]
        if not tried:
            return f"{head}: no checkpoint scored yet; the encoder is the start"
        top = max(tried, key=lambda h: h["score"])
        lo, hi = self.start["ci"]
        return (f"{head}: no checkpoint beat the start beyond its interval [{lo:.2f}, {hi:.2f}] (best "
                f"{top['score']:.2f} at step {top['step']}); the encoder stays the start")

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"start": self.start, "best": self.best, "best_weights": self.best_weights,
                "history": self.history, "spent_s": self.spent_s, "held_out": [str(p) for p in self.paths]}

    def load_state_dict(self, saved: dict) -> None:
        self.start, self.best, self.best_weights = saved["start"], saved["best"], saved["best_weights"]
        self.history, self.spent_s = list(saved.get("history", [])), float(saved.get("spent_s", 0.0))
        if saved.get("held_out"):
            self.paths = [Path(p) for p in saved["held_out"]]
        if self.best is not None and self.start is not None and self.best["step"] == self.start["step"]:
            self.best = self.start

    def record(self) -> dict:
        """What ``encoder.json`` says of it: start, kept, every scored step, and the sample."""
        return {"start": self.start, "kept": self.best, "history": self.history, "held_out": len(self.paths),
                "seed": self.seed}

    # -- inside ---------------------------------------------------------------------------------------------
    def _due(self, step: int, elapsed_s: float, final: bool, stopping: bool) -> bool:
        if stopping or any(h["step"] == step for h in self.history):
            return False
        return final or self.share is None or self.spent_s <= self.share * elapsed_s

    def _cached_start(self) -> dict | None:
        if self.cache is None:
            return None
        entry = read_json_dict(self.cache).get(self.cache_key)
        return {"score": float(entry["score"]), "ci": list(entry["ci"])} if isinstance(entry, dict) else None

    def _cache_start(self) -> None:
        if self.cache is None or not self.cache.parent.is_dir():
            return
        entries = read_json_dict(self.cache)
        entries[self.cache_key] = {"score": self.start["score"], "ci": self.start["ci"]}
        atomic_write_json(self.cache, entries)

    def _score(self, backbone: nn.Module, step: int) -> dict:
        t0 = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            card = score(self.encoder_of(backbone), self.paths, self.seed)
        finally:
            backbone.train(was_training)
        self.spent_s += time.perf_counter() - t0
        entry = {"step": int(step), "score": float(card.score), "ci": [float(card.ci[0]), float(card.ci[1])]}
        self.history.append(entry)
        return entry


def _start_key(run, sample: list[Path]) -> str:
    """What the start's score depends on: its weights and preprocessing, the seed, the held-out files as they are."""
    from retrieval.scorecard import SCORECARD_VERSION

    cfg = run.cfg
    files = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in sample if p.exists()]
    what = [SCORECARD_VERSION, run.sources.record.get("init", {}).get("weights"), cfg.image_size, cfg.pool,
            cfg.augment_config().mean, cfg.augment_config().std, run.sources.interpolation, cfg.seed, files]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:32]


def _copy_weights(backbone: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in backbone.state_dict().items()}


def for_run(run, state: dict | None) -> KeepBest | None:
    """The keep-best of a run (:class:`training.setup.Run`): for a fine-tune (``--init``) with ``keep_best`` on,
    on the process that writes the checkpoints; restored from a resumed run's ``state.pt``."""
    cfg = run.cfg
    if cfg.init is None or not cfg.keep_best or not run.ddp.main:
        return None
    if not scorecard_available():
        run.say("keep-best is off: this installation has no label-free scorecard (retrieval.scorecard)")
        return None
    from .monitor import training_encoder

    collection = run.data.collection
    paths = [collection.abspath(it) for it in collection.items]
    if not paths:
        raise LookalikeError(f"{collection.root} has no images to score the fine-tune on")

    def encoder_of(backbone: nn.Module):
        return training_encoder(cfg, backbone, run.dim, run.ddp.device, run.sources.interpolation)

    sample = held_out(paths, cfg.seed)
    keep = KeepBest(sample, cfg.seed, encoder_of, cache=Path(run.run_dir).parent / START_CACHE,
                    cache_key=_start_key(run, sample))
    if state is not None and state.get("keep_best"):
        keep.load_state_dict(state["keep_best"])
    return keep
