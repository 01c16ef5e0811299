"""A training run's parts and setting them up: :class:`Run` (what a run is made of, never changed by the loop),
:class:`TrainState` (everything the loop changes, saved in ``state.pt`` at each checkpoint) and :func:`setup_run`
(everything before the first step: run directory, data, model, optimiser, a resumed state). The loop that uses
them is :mod:`training.trainer`."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.encoders import build_backbone, feature_dim
from retrieval.fsutil import now_iso

from . import keep_best, lpft
from .config import TrainConfig
from .data import TrainingData, data_fingerprint, open_data
from .distributed import Distributed, sync_batchnorm, wrap_ddp
from .finetune import Sources, freeze_batchnorm, freeze_layers, frozen_layers, resolve_sources
from .monitor import KnnMonitor
from .optim import default_lr, default_weight_decay, make_optimizer
from .rundir import open_run, prepare_run_dir, weights_match
from .runtime import resolve_precision, seed_everything, set_rng_state

__all__ = ["Run", "TrainState", "setup_run", "make_method", "memory_format"]


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The model's and the batches' memory layout (channels-last unless ``--no-channels-last``)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


@dataclass
class Run:
    """What a run is made of; set up once by :func:`setup_run`, never changed by the loop."""

    cfg: TrainConfig
    ddp: Distributed
    run_dir: Path
    data: TrainingData
    method: nn.Module
    model: nn.Module  # the method, wrapped in DDP when there are several processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    base_lr: float
    dim: int  # width of the retrieval vectors (the backbone's features pooled as cfg.pool says)
    fingerprint: str
    monitor: KnnMonitor | None
    say: Callable[[str], None]
    on_log: Callable[[dict], None] | None
    show: bool
    sources: Sources  # what the run started from (--init) and learns from (--teacher)
    warmup: lpft.HeadWarmup | None = None  # LP-FT: the heads train alone first (training.lpft)
    keep: keep_best.KeepBest | None = None  # the best scored weights are the run's encoder (training.keep_best)

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    @property
    def total_steps(self) -> int | None:
        return self.cfg.epochs * self.steps_per_epoch if self.cfg.epochs else None

    @property
    def budget_s(self) -> float | None:
        return self.cfg.minutes * 60.0 if self.cfg.minutes else None

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.cfg.warmup_epochs * self.steps_per_epoch))

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format(self.cfg)

    def progress_at(self, step: int, elapsed: float) -> float:
        """The run's progress in [0, 1]: steps done of the epochs, or time spent of the budget, whichever is more."""
        p = step / self.total_steps if self.total_steps else 0.0
        if self.budget_s:
            p = max(p, elapsed / self.budget_s)
        return min(1.0, p)


@dataclass
class TrainState:
    """Everything the loop changes. The first block is what a checkpoint saves; the rest is this segment's."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_before: float = 0.0  # training time of the earlier segments of a resumed run
    metrics: dict[str, Any] = field(default_factory=dict)
    bad_files: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    resumed: bool = False
    saved_step: int = -1  # the step the files on disk hold
    t0: float = 0.0  # perf_counter() at which the run's clock reads 0
    clock: float = 0.0  # the run's clock at the last step, as agreed by the ranks
    lr: float = 0.0
    interval_loss: float = 0.0  # since the last loss record
    interval_steps: int = 0
    t_interval: float = 0.0
    last_save: float = 0.0
    finished: bool = False
    stopping: bool = False


def setup_run(cfg: TrainConfig, ddp: Distributed, show: bool, on_log: Callable[[dict], None] | None
              ) -> tuple[Run, TrainState]:
    """Everything before the first step, in an order that keeps runs reproducible (the seed before the model's
    initial weights; a resumed run's RNG state last)."""
    from tqdm import tqdm

    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if (ddp.main and show) else (lambda msg: None)
    if cfg.resume:  # what --init / --teacher decide: after reading a resumed run's own settings ...
        run_dir, state, cfg = open_run(cfg, ddp)
        cfg, sources = resolve_sources(cfg, state)
    else:  # ... and before a new run is named after its backbone
        cfg, sources = resolve_sources(cfg)
        run_dir, state, cfg = open_run(cfg, ddp)
    amp_dtype, use_scaler = resolve_precision(cfg.precision, ddp.device)
    seed_everything(cfg.seed)
    data = open_data(cfg, ddp.rank, ddp.world, ddp.device, show, say, sources.view_size(cfg.image_size))
    monitor = KnnMonitor(cfg, ddp.device) if (cfg.val_dir and ddp.main) else None
    method, dim = make_method(cfg, ddp, sources, data.views)
    base_lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer, cfg.batch_size, method)
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else default_weight_decay(cfg.optimizer, method)
    optimizer = make_optimizer(cfg.optimizer, method.param_groups(weight_decay), base_lr)
    run = Run(cfg=cfg, ddp=ddp, run_dir=run_dir, data=data, method=method, model=method, optimizer=optimizer,
              scaler=torch.amp.GradScaler(ddp.device.type, enabled=use_scaler), amp_dtype=amp_dtype,
              base_lr=base_lr, dim=dim, fingerprint=data_fingerprint(data.collection), monitor=monitor, say=say,
              on_log=on_log, show=show, sources=sources)
    st = TrainState() if state is None else restore(run, state, weight_decay)
    run.warmup, run.keep = lpft.for_run(run), keep_best.for_run(run, state)
    if ddp.world > 1:
        run.model = wrap_ddp(method, ddp)
    prepare_run_dir(run_dir, state, ddp)
    st.t0 = time.perf_counter() - st.elapsed_before  # the clock includes earlier segments of a resumed run
    # the files on disk already hold this step unless a write was cut short between state.pt and the weights
    st.saved_step = st.step if state is not None and weights_match(run_dir, state) else -1
    return run, st


def make_method(cfg: TrainConfig, ddp: Distributed, sources: Sources, views) -> tuple[nn.Module, int]:
    """The method around the init's backbone or a fresh one (a resumed run's weights come from its checkpoint),
    on the device; and the width of the run's retrieval vectors."""
    from .methods import build_method

    backbone = sources.init.model if sources.init is not None else build_backbone(cfg.backbone, stem=cfg.stem)
    if cfg.batchnorm == "frozen":
        freeze_batchnorm(backbone)  # before the method copies it into momentum encoders
    taught = {"mean": views.mean, "std": views.std,
              **({"teacher": sources.teacher, "image_size": cfg.image_size} if sources.teacher else {})}
    method = build_method(cfg.method, backbone, feature_dim(backbone), **cfg.hparams, **taught)
    dim = method.feat_dim if cfg.pool == "avg" else feature_dim(backbone, cfg.pool)
    if ddp.world > 1 and method.needs_sync_bn:
        frozen = frozen_layers(method)
        method = sync_batchnorm(method, ddp.device)
        freeze_layers(method, frozen)
    method.to(device=ddp.device, memory_format=memory_format(cfg)).train()
    return method, int(dim)


def restore(run: Run, state: dict[str, Any], weight_decay: float) -> TrainState:
    """Load a checkpoint's method, optimiser, scaler and RNG states; returns the loop's state at that step."""
    run.method.load_state_dict(state["method"])
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # a resume may change --lr / weight decay
        group["weight_decay"] = weight_decay if group["weight_decay"] else 0.0
    if run.scaler.is_enabled() and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    st = TrainState(step=int(state["step"]), epoch=int(state["epoch"]), batch_in_epoch=int(state["batch_in_epoch"]),
                    elapsed_before=float(state["elapsed"]), metrics=dict(state.get("metrics", {})),
                    bad_files={p: r for p, r in state.get("bad_files", [])},
                    created=state.get("created") or now_iso(), resumed=True)
    if int(state.get("batches_per_epoch", run.steps_per_epoch)) != run.steps_per_epoch:
        run.say(f"the folder changed since the checkpoint ({run.steps_per_epoch} batches per epoch now); "
                f"epoch {st.epoch + 1} restarts from its first batch")
        st.batch_in_epoch = 0
    set_rng_state(state["rng"])
    run.say(f"resuming {run.cfg.method} run {run.run_dir} at step {st.step} (epoch {st.epoch + 1}, "
            f"batch {st.batch_in_epoch})")
    return st
