"""One training loop for every self-supervised method: ``train(TrainConfig(...)) -> run directory``.

Reading order: :func:`train` sets a run up (:func:`_setup`: run directory, data, model, optimiser, a resumed
state) and runs :func:`_loop`, top to bottom. What the loop changes lives in one object, :class:`TrainState`
(saved in ``state.pt`` at each checkpoint); what it does not change in :class:`Run`. The rooms around it:
:mod:`training.config` (the settings), :mod:`training.optim` (optimisers, the schedule),
:mod:`training.rundir` (the run directory), :mod:`training.runtime` (precision, RNG, signals),
:mod:`training.distributed` (data parallelism), :mod:`training.data` (views and batches),
:mod:`training.monitor` (the kNN monitor).

The loop, per step::

    views from the DataLoader workers (on a CPU already photometrically augmented there, batched; on a GPU uint8,
    augmented on the device: BatchAugment)  ->  loss = method(x1, x2) under autocast  ->  backward
    ->  agree across ranks on (loss, stop?, clock)  ->  NaN check  ->  lr from the schedule  ->  optimiser step
    ->  method.after_step(progress)  ->  log

Schedule and time budgets. Everything that changes over a run (the learning rate's cosine, BYOL's target momentum)
is a function of ``progress`` in [0, 1]. With ``epochs`` it is ``step / total_steps``; with ``minutes`` it is
``elapsed / budget``; with both, whichever is further along, and the run ends when progress reaches 1. Defining
the schedule over time (rather than estimating a step count from the first few steps) keeps it right when the
machine slows down or speeds up mid-run, and the learning rate always reaches its floor when the budget runs out.
A time-budgeted run is, by nature, not step-for-step reproducible; an epoch-budgeted one is.

Reproducibility and resume. The geometric views of image i in epoch e depend only on (seed, e, i), the epoch's
order only on (seed, e), and the photometric augmentation of a batch only on (seed, e, its first image)
(:mod:`training.data`), wherever it runs. ``state.pt`` stores the method (heads, queue, EMA target included),
optimiser, grad scaler, step, epoch, position in the epoch, clock and RNG states, so ``resume=True`` continues
with exactly the batches an uninterrupted run would have seen: on CPU with the same settings the final weights are identical.

Data parallelism (``torchrun --nproc-per-node N lookalike train ...``). ``batch_size`` is the *global* batch: each
of the N processes takes ``batch_size / N`` images per step (so a recipe keeps its meaning, its learning rate and
its negatives count whatever N is; the batch must divide by N). Each rank takes a contiguous slice of every global
batch, BatchNorm statistics span all ranks when the method asks for it (``nn.SyncBatchNorm`` on GPUs,
:class:`training.sync_bn.GlobalBatchNorm` on CPUs), and only the trainable parameters are in the DDP reducer
(momentum encoders and EMA targets have ``requires_grad=False`` and are updated identically on every rank). Only
rank 0 writes files and shows progress.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrieval.encoders import build_backbone, feature_dim
from retrieval.errors import LookalikeError
from retrieval.fsutil import now_iso
from retrieval.runformat import STATE_VERSION

from .checkpoint import save_checkpoint
from .keep_best import KeepBest
from .lpft import HeadWarmup
from .config import TrainConfig
from .data import TrainingData, data_fingerprint, open_data
from .data import default_workers as _default_workers  # noqa: F401 (the benchmarks import it from here)
from .distributed import Distributed, sync_batchnorm, wrap_ddp
from . import keep_best, lpft
from .finetune import Sources, freeze_batchnorm, freeze_layers, frozen_layers, resolve_sources
from .monitor import KnnMonitor
from .optim import LARS, LR_FLOOR, default_lr, default_weight_decay, get_lr, make_optimizer, set_lr  # noqa: F401
from .rundir import append_metrics, encoder_meta, open_run, prepare_run_dir, weights_match
from .runtime import GracefulStop, get_rng_state, resolve_precision, seed_everything, set_rng_state
from .runtime import cpu_has_native_bf16  # noqa: F401 (the benchmarks import it from here)
from .settings import DEFAULT_BACKBONE, DEFAULT_STEM

__all__ = ["TrainConfig", "train", "get_lr", "feature_dim", "TrainingDivergedError", "LARS", "resolve_precision",
           "DEFAULT_BACKBONE", "DEFAULT_STEM"]


class TrainingDivergedError(LookalikeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The model's and the batches' memory layout (channels-last unless ``--no-channels-last``)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


@dataclass
class Run:
    """What a run is made of; set up once by :func:`_setup`, never changed by the loop."""

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
    warmup: HeadWarmup | None = None  # LP-FT: the heads train alone first (training.lpft)
    keep: KeepBest | None = None  # the best scored weights are the run's encoder (training.keep_best)

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


def train(config: TrainConfig, progress: bool = True, stop_event: threading.Event | None = None,
          on_log: Callable[[dict], None] | None = None) -> Path:
    """Train ``config.method`` on ``config.data_dir``; returns the run directory (see :mod:`training.checkpoint`).

    Stops cleanly (checkpoint saved, run directory returned) when the epochs or the time budget are done, when
    ``stop_event`` is set, or on Ctrl-C / SIGTERM. ``on_log`` receives every record written to ``metrics.jsonl``
    (step records have ``loss``; monitor records have ``knn_acc``). Raises :class:`TrainingDivergedError` when the
    loss stops being finite (the last good checkpoint stays), LookalikeError for bad settings or data.
    """
    cfg = dataclasses.replace(config, hparams=dict(config.hparams), augment=dict(config.augment))
    cfg.validate()
    ddp = Distributed.start(cfg.device)
    try:
        with GracefulStop(stop_event) as stop:
            run, st = _setup(cfg, ddp, progress, on_log)
            _loop(run, st, stop)
            ddp.barrier()
        return run.run_dir
    finally:
        ddp.close()


def _loop(run: Run, st: TrainState, stop: GracefulStop) -> None:
    from tqdm import tqdm

    bar = tqdm(total=run.total_steps, initial=st.step, desc=f"{run.cfg.method}/{run.cfg.backbone}", unit="step",
               disable=not (run.ddp.main and run.show), file=sys.stderr, dynamic_ncols=True)
    if not st.resumed:
        _knn(run, st, 0.0)  # the untrained starting point
    if run.keep is not None:  # scoring is not training time: the clock skips it
        st.t0 += run.keep.begin(run.method.backbone, st.step)
    st.finished = run.progress_at(st.step, st.elapsed_before) >= 1.0
    if st.finished:
        run.say(f"{run.run_dir} has already finished its schedule (step {st.step}); raise --epochs or --minutes "
                "to go on")
    st.t_interval = st.last_save = time.perf_counter()
    try:
        while not (st.finished or st.stopping):
            run.data.sampler.set_epoch(st.epoch, st.batch_in_epoch)
            with closing(_epoch_batches(run, st, stop)) as batches:
                for x1, x2 in batches:
                    stop_now = _step(run, st, x1, x2, stop)
                    bar.update(1)
                    if st.step % run.cfg.log_every == 0:
                        _log_loss(run, st, bar)
                    st.finished = run.progress_at(st.step, st.clock) >= 1.0
                    # alone, a stop asked for during this step (e.g. by on_log) can be honoured now
                    stop_now = stop_now or (run.ddp.world == 1 and stop.wanted())
                    if stop_now or st.finished:
                        st.stopping = stop_now
                        break
                    if (time.perf_counter() - st.last_save > run.cfg.checkpoint_minutes * 60
                            and st.batch_in_epoch < run.steps_per_epoch):
                        _paused(run, st, finished_run=False, end_of_epoch=False)
            _paused(run, st, finished_run=st.finished, end_of_epoch=True)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread
        st.stopping = True
        if not stop.in_critical:
            _checkpoint(run, st, finished_run=False)
    finally:
        bar.close()
    if not st.stopping:
        _checkpoint(run, st, finished_run=st.finished)  # e.g. a resumed run whose last write was cut short
    if st.stopping:
        run.say(f"stopped at step {st.step}; checkpoint in {run.run_dir} (continue with --resume --out "
                f"{run.run_dir})")
    else:
        run.say(f"finished {run.cfg.method} on {len(run.data.collection.items)} images: step {st.step}, "
                f"checkpoint in {run.run_dir}")
    if run.keep is not None:
        run.say(run.keep.summary())


def _epoch_batches(run: Run, st: TrainState, stop: GracefulStop) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The rest of the current epoch's batches as model inputs; records damaged files on the way."""
    batches = iter(run.data.loader)
    device, fmt = run.ddp.device, run.memory_format
    aug_gen = torch.Generator()
    try:
        while True:
            try:
                x1, x2, bad, batch_seed = next(batches)
            except StopIteration:
                return
            except Exception:
                if stop.requested:  # workers killed by the same Ctrl-C: stop as asked
                    st.stopping = True
                    return
                raise
            for path, reason in bad:
                if path not in st.bad_files:
                    st.bad_files[path] = reason
                    run.say(f"skipping damaged image {path}: {reason}")
            if not run.data.augment_in_loader:  # photometric augmentation on the device, seeded by the batch
                aug_gen.manual_seed(batch_seed)
                with torch.no_grad():
                    x1, x2 = run.data.views(x1.to(device, non_blocking=True), x2.to(device, non_blocking=True),
                                            generator=aug_gen)
            yield x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)
    finally:
        del batches  # shuts the workers of an unfinished epoch down


def _step(run: Run, st: TrainState, x1: torch.Tensor, x2: torch.Tensor, stop: GracefulStop) -> bool:
    """One optimiser step; returns whether any rank asked to stop."""
    device_type, dtype = run.ddp.device.type, run.amp_dtype
    if run.warmup is not None:
        run.warmup(run.progress_at(st.step, st.clock))
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = run.model(x1, x2)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss.float()).backward()
    # one small all-reduce: mean loss, anyone asked to stop, rank 0's clock (all ranks must agree)
    clock = time.perf_counter() - st.t0 if run.ddp.main else 0.0
    loss_sum, stops, st.clock = run.ddp.sum([float(loss.detach()), float(stop.wanted()), clock])
    loss_value = loss_sum / run.ddp.world
    if not math.isfinite(loss_value):
        raise TrainingDivergedError(_diverged_message(run, st, loss_value))
    st.lr = set_lr(run.optimizer, run.base_lr, st.step, run.progress_at(st.step, st.clock), run.warmup_steps)
    with stop.deferred():  # a Ctrl-C here must not leave half-updated weights behind
        run.scaler.step(run.optimizer)
        run.scaler.update()
        st.step += 1
        st.batch_in_epoch += 1
        run.method.after_step(run.progress_at(st.step, st.clock))
    st.interval_loss += loss_value
    st.interval_steps += 1
    return stops > 0


def _log_loss(run: Run, st: TrainState, bar) -> None:
    """Write the mean loss since the last record (and the speed) to ``metrics.jsonl``."""
    now = time.perf_counter()
    ips = st.interval_steps * run.cfg.batch_size / max(now - st.t_interval, 1e-9)
    record = {"step": st.step, "epoch": st.epoch + st.batch_in_epoch / run.steps_per_epoch,
              "loss": st.interval_loss / st.interval_steps, "lr": st.lr, "images_per_s": ips, "time": st.clock}
    st.metrics.update(loss=record["loss"], images_per_s=ips)
    _log(run, record)
    postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{st.lr:.2e}", "img/s": f"{ips:.0f}"}
    if run.budget_s:
        postfix["left"] = f"{max(0.0, run.budget_s - st.clock) / 60:.1f}min"
    if bar is not None:
        bar.set_postfix(postfix, refresh=False)
    st.interval_loss, st.interval_steps, st.t_interval = 0.0, 0, now


def _paused(run: Run, st: TrainState, finished_run: bool, end_of_epoch: bool) -> None:
    """A pause of the loop to checkpoint: at the end of an epoch (or of the run) also the kNN monitor and the
    loss of a last, shorter interval. The pause does not count as training time in images/s."""
    started = time.perf_counter()
    if end_of_epoch:
        if (st.finished or st.stopping) and st.interval_steps:
            _log_loss(run, st, None)  # a run shorter than log_every steps still leaves its loss
        if st.batch_in_epoch >= run.steps_per_epoch:  # the epoch is complete
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
            _knn(run, st, float(st.epoch))
        elif st.finished:  # a time budget ran out mid-epoch: measure what is being saved
            _knn(run, st, st.epoch + st.batch_in_epoch / run.steps_per_epoch)
    _checkpoint(run, st, finished_run)
    st.last_save = time.perf_counter()
    st.t_interval += st.last_save - started


def _checkpoint(run: Run, st: TrainState, finished_run: bool) -> None:
    if not run.ddp.main or st.step == st.saved_step:
        return
    state = {
        "state_version": STATE_VERSION, "method": run.method.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {}, "step": st.step, "epoch": st.epoch,
        "batch_in_epoch": st.batch_in_epoch, "batches_per_epoch": run.steps_per_epoch,
        "elapsed": time.perf_counter() - st.t0, "config": run.cfg.to_dict(), "rng": get_rng_state(),
        "metrics": st.metrics, "bad_files": [[p, r] for p, r in sorted(st.bad_files.items())], "created": st.created,
        "sources": run.sources.record,
    }
    meta = encoder_meta(run.cfg, run.dim, run.data.views, run.data.collection, run.fingerprint, st.metrics,
                        st.bad_files, st.step, st.epoch, st.created, finished_run, run.sources.record)
    backbone = run.method.backbone
    if run.keep is not None:  # the weights exported as the run's encoder are the best scored so far
        backbone, spent = run.keep.checkpoint(backbone, st.step, time.perf_counter() - st.t0, finished_run,
                                              st.stopping, state, meta)
        st.t0 += spent
    save_checkpoint(run.run_dir, backbone, state, meta)
    st.saved_step = st.step


def _knn(run: Run, st: TrainState, epoch: float) -> None:
    if run.monitor is None:
        return
    acc = run.monitor(run.method.backbone, run.dim)
    st.metrics["knn_acc"] = acc
    st.metrics.setdefault("knn_acc_start", acc)
    _log(run, {"step": st.step, "epoch": epoch, "knn_acc": acc, "time": time.perf_counter() - st.t0})
    run.say(f"kNN accuracy on {run.cfg.val_dir} at step {st.step}: {acc:.3f}")


def _log(run: Run, record: dict) -> None:
    if run.ddp.main:
        record = append_metrics(run.run_dir, record)
        if run.on_log is not None:
            run.on_log(record)


# ---------------------------------------------------------------------------------------------------------------
# setting a run up
# ---------------------------------------------------------------------------------------------------------------
def _setup(cfg: TrainConfig, ddp: Distributed, show: bool, on_log: Callable[[dict], None] | None
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
    method, dim = _build_method(cfg, ddp, sources, data.views)
    base_lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer, cfg.batch_size, method)
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else default_weight_decay(cfg.optimizer, method)
    optimizer = make_optimizer(cfg.optimizer, method.param_groups(weight_decay), base_lr)
    run = Run(cfg=cfg, ddp=ddp, run_dir=run_dir, data=data, method=method, model=method, optimizer=optimizer,
              scaler=torch.amp.GradScaler(ddp.device.type, enabled=use_scaler), amp_dtype=amp_dtype,
              base_lr=base_lr, dim=dim, fingerprint=data_fingerprint(data.collection), monitor=monitor, say=say,
              on_log=on_log, show=show, sources=sources)
    st = TrainState() if state is None else _restore(run, state, weight_decay)
    run.warmup, run.keep = lpft.for_run(run), keep_best.for_run(run, state)
    if ddp.world > 1:
        run.model = wrap_ddp(method, ddp)
    prepare_run_dir(run_dir, state, ddp)
    st.t0 = time.perf_counter() - st.elapsed_before  # the clock includes earlier segments of a resumed run
    # the files on disk already hold this step unless a write was cut short between state.pt and the weights
    st.saved_step = st.step if state is not None and weights_match(run_dir, state) else -1
    return run, st


def _build_method(cfg: TrainConfig, ddp: Distributed, sources: Sources, views) -> tuple[nn.Module, int]:
    """The method around the init's backbone or a fresh one (a resumed run's weights come from its checkpoint),
    on the device; and the width of the run's retrieval vectors."""
    from .methods import build_method

    backbone = sources.init.model if sources.init is not None else build_backbone(cfg.backbone, stem=cfg.stem)
    if cfg.batchnorm == "frozen":
        freeze_batchnorm(backbone)  # before the method copies it into momentum encoders
    taught = ({"teacher": sources.teacher, "mean": views.mean, "std": views.std, "image_size": cfg.image_size}
              if sources.teacher else {})
    method = build_method(cfg.method, backbone, feature_dim(backbone), **cfg.hparams, **taught)
    dim = method.feat_dim if cfg.pool == "avg" else feature_dim(backbone, cfg.pool)
    if ddp.world > 1 and method.needs_sync_bn:
        frozen = frozen_layers(method)
        method = sync_batchnorm(method, ddp.device)
        freeze_layers(method, frozen)
    method.to(device=ddp.device, memory_format=memory_format(cfg)).train()
    return method, int(dim)


def _restore(run: Run, state: dict[str, Any], weight_decay: float) -> TrainState:
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


def _diverged_message(run: Run, st: TrainState, loss: float) -> str:
    kept = (f"the last good checkpoint (step {st.saved_step}) is kept in {run.run_dir}; continue from it with "
            f"--resume --out {run.run_dir}" if st.saved_step >= 0 else "no checkpoint had been written yet")
    tips = f"a lower --lr than {run.base_lr:.2g}"
    if run.cfg.precision != "fp32":
        tips += " or --precision fp32"
    return (f"training diverged: the loss became {loss} at step {st.step + 1} (epoch {st.epoch + 1}); {kept}, "
            f"and try {tips}")
