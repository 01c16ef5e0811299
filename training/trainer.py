"""One training loop for every self-supervised method: ``train(TrainConfig(...)) -> run directory``.

Reading order: :func:`train` sets a run up (:func:`training.setup.setup_run`: run directory, data, model,
optimiser, a resumed state) and runs :func:`_loop`, top to bottom. What the loop changes lives in one object,
:class:`training.setup.TrainState` (saved in ``state.pt`` at each checkpoint); what it does not change in
:class:`training.setup.Run`. The rooms around it:
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
with exactly the batches an uninterrupted run would have seen: on CPU with the same settings the final weights are
identical.

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
from pathlib import Path

import torch

from retrieval.encoders import feature_dim
from retrieval.errors import LookalikeError
from retrieval.runformat import STATE_VERSION

from .checkpoint import save_checkpoint
from .config import TrainConfig
from .distributed import Distributed
from .optim import LARS, get_lr, set_lr
from .optim import LR_FLOOR  # noqa: F401 - re-exported: tests read the schedule's floor beside get_lr here
from .rundir import append_metrics, encoder_meta
from .runtime import GracefulStop, get_rng_state, resolve_precision
from .settings import DEFAULT_BACKBONE, DEFAULT_STEM
from .setup import Run, TrainState, setup_run

__all__ = ["TrainConfig", "train", "get_lr", "feature_dim", "TrainingDivergedError", "LARS", "resolve_precision",
           "DEFAULT_BACKBONE", "DEFAULT_STEM"]


class TrainingDivergedError(LookalikeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


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
            run, st = setup_run(cfg, ddp, progress, on_log)
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
                for views in batches:
                    stop_now = _step(run, st, views, stop)
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


def _epoch_batches(run: Run, st: TrainState, stop: GracefulStop) -> Iterator[tuple[torch.Tensor, ...]]:
    """The rest of the current epoch's batches as model inputs (two views, then any local crops); records damaged
    files on the way."""
    batches = iter(run.data.loader)
    device, fmt = run.ddp.device, run.memory_format
    aug_gen = torch.Generator()
    try:
        while True:
            try:
                *views, bad, batch_seed = next(batches)
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
                    views = run.data.views(*(v.to(device, non_blocking=True) for v in views), generator=aug_gen)
            yield tuple(v.contiguous(memory_format=fmt) for v in views)
    finally:
        del batches  # shuts the workers of an unfinished epoch down


def _step(run: Run, st: TrainState, views: tuple[torch.Tensor, ...], stop: GracefulStop) -> bool:
    """One optimiser step; returns whether any rank asked to stop."""
    device_type, dtype = run.ddp.device.type, run.amp_dtype
    if run.warmup is not None:
        run.warmup(run.progress_at(st.step, st.clock))
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = run.model(*views)
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


def _diverged_message(run: Run, st: TrainState, loss: float) -> str:
    kept = (f"the last good checkpoint (step {st.saved_step}) is kept in {run.run_dir}; continue from it with "
            f"--resume --out {run.run_dir}" if st.saved_step >= 0 else "no checkpoint had been written yet")
    tips = f"a lower --lr than {run.base_lr:.2g}"
    if run.cfg.precision != "fp32":
        tips += " or --precision fp32"
    return (f"training diverged: the loss became {loss} at step {st.step + 1} (epoch {st.epoch + 1}); {kept}, "
            f"and try {tips}")
