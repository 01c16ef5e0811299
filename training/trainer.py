"""One training loop for every self-supervised method: ``train(TrainConfig(...)) -> run directory``.

Reading order: :class:`TrainConfig` (every setting, validated before anything heavy happens), :func:`get_lr` (the
schedule), :func:`train` (the loop, top to bottom), then the helpers it calls.

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
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from retrieval.collection import Collection, scan
from retrieval.embed import cpu_count
from retrieval.encoders import POOLS, STEMS, Encoder, build_backbone, resolve_device
from retrieval.encoders import feature_dim as pooled_dim
from retrieval.errors import BadImageError, LookalikeError
from retrieval.imageio import load_image

from .checkpoint import (FORMAT_VERSION, META, METRICS, STATE, STATE_VERSION, load_state, now_iso, read_meta,
                         remove_temporaries, save_checkpoint)
from .data import EpochSampler, TwoViewDataset, ViewBatcher, data_fingerprint

__all__ = ["TrainConfig", "train", "get_lr", "feature_dim", "TrainingDivergedError", "LARS", "resolve_precision",
           "DEFAULT_BACKBONE", "DEFAULT_STEM"]

# resnet10t (ResNet-10 with a 3-conv "tiered" stem) with timm's default stem. Measured on 2 CPU cores at 64 px,
# SimCLR, batch 128, 2-minute budget, kNN accuracy on 16 held-out synthetic classes: resnet10t 0.44 (~57 img/s
# end to end), resnet18 0.34 (~37), resnet10t with stem "small" 0.34 (~26), regnetx_002 0.26 (~92),
# mobilenetv3_small_100 0.12 (~102). The small stem keeps 4x more spatial detail but costs 3x the compute, which
# short CPU budgets cannot afford; on a GPU, resnet18 / stem "small" are the better choice.
DEFAULT_BACKBONE = "resnet10t"
DEFAULT_STEM = "default"
OPTIMIZERS = ("adamw", "sgd", "lars")
PRECISIONS = ("auto", "bf16", "fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
WARMUP_MAX_FRACTION = 0.1  # warm-up never takes more than this fraction of the run
LR_FLOOR = 0.01  # the cosine decays to this fraction of the base learning rate
_BASE_LR = {"sgd": 0.05, "lars": 0.3}  # per 256 images; AdamW takes the method's own suggestion
_WEIGHT_DECAY = {"sgd": 1e-4, "lars": 1e-6}
# Settings that define what is being trained; a resumed run keeps the ones it was started with.
_FIXED_ON_RESUME = ("method", "backbone", "stem", "image_size", "batch_size", "optimizer", "seed", "hparams",
                    "augment", "warmup_epochs")


class TrainingDivergedError(LookalikeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Field names follow the ``lookalike train`` flags (``--batch-size`` ->
    ``batch_size``; the one exception is ``--val`` -> ``val_dir``, a folder of labelled sub-folders for the kNN
    monitor); the whole config is saved in the run's ``encoder.json``.

    ``epochs`` and ``minutes`` may be given alone or together (the run stops at whichever ends first). ``lr`` and
    ``weight_decay`` default to the method's suggestion for AdamW (or 0.05 / 0.3 per 256 images for SGD / LARS),
    scaled linearly with ``batch_size``. ``workers=None`` picks a number from the CPU count. ``hparams`` go to the
    method (e.g. ``{"temperature": 0.5}``), ``augment`` overrides :class:`training.augment.AugmentConfig` fields.
    """

    data_dir: str
    method: str = "simclr"
    backbone: str = DEFAULT_BACKBONE
    stem: str = DEFAULT_STEM
    pool: str = "avg"
    image_size: int = 64
    batch_size: int = 128
    epochs: int | None = None
    minutes: float | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    seed: int = 0
    out: str | None = None
    resume: bool = False
    val_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    workers: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    log_every: int = 10
    checkpoint_minutes: float = 10.0

    def validate(self) -> None:
        """Raise LookalikeError naming the flag and a valid value for the first bad setting."""
        from .methods import METHODS

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise LookalikeError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(bool(self.data_dir) or self.resume, "no training folder given: pass the folder of images to train on")
        need(not self.data_dir or Path(self.data_dir).expanduser().is_dir(),
             f"training folder not found: {self.data_dir}")
        need(self.method in METHODS, f"unknown --method {self.method!r}: choose one of {', '.join(METHODS)}")
        need(isinstance(self.backbone, str) and bool(self.backbone),
             "--backbone needs a timm model name, e.g. resnet10t")
        need(self.stem in STEMS, f"unknown stem {self.stem!r}: choose one of {', '.join(STEMS)}")
        need(self.pool in POOLS, f"unknown --pool {self.pool!r}: choose one of {', '.join(POOLS)}")
        need(is_int(self.image_size) and 16 <= self.image_size <= 1024,
             f"--image-size must be an integer from 16 to 1024, got {self.image_size!r}")
        need(is_int(self.batch_size) and self.batch_size >= 2,
             "--batch-size must be an integer >= 2 (contrastive losses and BatchNorm need pairs), "
             f"got {self.batch_size!r}")
        need(self.epochs is not None or self.minutes is not None or self.resume,
             "say how long to train: --epochs N, --minutes M, or both (it stops at whichever comes first)")
        need(self.epochs is None or (is_int(self.epochs) and self.epochs >= 1),
             f"--epochs must be a whole number >= 1, got {self.epochs!r}")
        need(self.minutes is None or (isinstance(self.minutes, (int, float)) and self.minutes > 0),
             f"--minutes must be a positive number, got {self.minutes!r}")
        need(self.lr is None or (isinstance(self.lr, (int, float)) and 0 < self.lr < 100),
             f"--lr must be a positive number (e.g. 1e-3), got {self.lr!r}")
        need(self.weight_decay is None or (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0),
             f"weight decay must be >= 0, got {self.weight_decay!r}")
        need(self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        need(isinstance(self.warmup_epochs, (int, float)) and self.warmup_epochs >= 0,
             f"warm-up epochs must be >= 0, got {self.warmup_epochs!r}")
        need(is_int(self.seed) and self.seed >= 0, f"--seed must be a non-negative integer, got {self.seed!r}")
        need(self.device in DEVICES or str(self.device).startswith("cuda:"),
             f"unknown --device {self.device!r}: use auto, cpu or cuda")
        need(self.precision in PRECISIONS, f"unknown --precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        need(self.workers is None or (is_int(self.workers) and self.workers >= 0),
             f"--workers must be an integer >= 0, got {self.workers!r}")
        need(self.val_dir is None or Path(self.val_dir).expanduser().is_dir(),
             f"--val folder not found: {self.val_dir}")
        need(isinstance(self.hparams, dict), "hparams must be a dict of method settings")
        need(isinstance(self.augment, dict), "augment must be a dict of augmentation settings")
        need(is_int(self.log_every) and self.log_every >= 1, f"log_every must be >= 1, got {self.log_every!r}")
        need(isinstance(self.checkpoint_minutes, (int, float)) and self.checkpoint_minutes > 0,
             "checkpoint_minutes must be positive")
        need(not self.resume or self.out is None or Path(self.out).is_dir(),
             f"--resume: run folder {self.out} does not exist (give the --out of an earlier run)")
        unknown = sorted(set(self.hparams) - set(METHODS[self.method].default_hparams))
        need(not unknown, f"unknown setting(s) for {self.method}: {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(METHODS[self.method].default_hparams))}")
        from .augment import AugmentConfig

        fields = {f.name for f in dataclasses.fields(AugmentConfig)} - {"image_size"}
        bad = sorted(set(self.augment) - fields)
        need(not bad, f"unknown augmentation setting(s) {', '.join(bad)}; valid: {', '.join(sorted(fields))}")
        self.augment_config()  # AugmentConfig validates its own values

    def augment_config(self):
        from .augment import AugmentConfig

        return AugmentConfig(image_size=self.image_size, **self.augment)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def get_lr(base_lr: float, step: int, progress: float, warmup_steps: int, fixed: bool = False) -> float:
    """Learning rate of optimiser step ``step`` (0-based), ``progress`` in [0, 1] of the run done before it.

    Linear warm-up over ``warmup_steps`` steps or the first 10% of the run, whichever ends first (a warm-up of
    one epoch would never end in a short time budget on a big folder), times a cosine from 1 down to ``LR_FLOOR``
    at progress 1. ``fixed`` groups (SimSiam's predictor) keep ``base_lr`` throughout.
    """
    if fixed:
        return base_lr
    warm = min(1.0, max((step + 1) / max(1, warmup_steps), progress / WARMUP_MAX_FRACTION))
    cosine = LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * warm * cosine


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
    ddp = _Distributed.start(cfg.device)
    try:
        with _GracefulStop() as signals:
            return _train(cfg, ddp, progress, stop_event, on_log, signals)
    finally:
        ddp.close()


def _train(cfg: TrainConfig, ddp: _Distributed, show: bool, stop_event: threading.Event | None,
           on_log: Callable[[dict], None] | None, signals: _GracefulStop) -> Path:
    from tqdm import tqdm

    from .augment import views_for
    from .methods import build_method

    main, device = ddp.rank == 0, ddp.device
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if (main and show) else (lambda msg: None)
    run_dir, state, cfg = _open_run(cfg, ddp)
    amp_dtype, use_scaler = resolve_precision(cfg.precision, device)
    _seed_everything(cfg.seed)

    # -- data --------------------------------------------------------------------------------------------------
    collection = scan(cfg.data_dir, labels=False, progress=show and main)
    n, global_batch = len(collection.items), cfg.batch_size
    if global_batch % ddp.world:
        raise LookalikeError(f"--batch-size {global_batch} is the global batch and must divide by the "
                             f"{ddp.world} processes; use e.g. {global_batch // ddp.world * ddp.world or ddp.world}")
    if n < global_batch:
        raise LookalikeError(f"{collection.root} has {n} usable images, fewer than one batch of {global_batch}; "
                             f"use --batch-size {max(2, _pow2_floor(n))} or add images"
                             + (f" ({len(collection.skipped)} files were skipped)" if collection.skipped else ""))
    if collection.skipped:
        say(f"{len(collection.skipped)} files in {collection.root} are not usable images and are left out "
            f"(first: {collection.skipped[0].path}: {collection.skipped[0].reason})")
    views = views_for(cfg.method, cfg.augment_config()).to(device)
    dataset = TwoViewDataset(collection, views.geometric, seed=cfg.seed, reduce_to=4 * cfg.image_size)
    sampler = EpochSampler(n, global_batch, seed=cfg.seed, rank=ddp.rank, world_size=ddp.world)
    workers = _default_workers(n, sampler.local_batch) if cfg.workers is None else cfg.workers
    # On a CPU the photometric augmentation runs in the DataLoader workers (batched, one thread each), beside the
    # model instead of before it: on 2 cores it took 3-25% of each step in the training process (more when the
    # machine is busy: dozens of small parallel ops), and the workers were mostly idle (bench/train_throughput.py).
    augment_in_loader = device.type == "cpu"
    loader = DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler, num_workers=workers,
                        collate_fn=ViewBatcher(cfg.seed, views if augment_in_loader else None),
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                        generator=torch.Generator().manual_seed(cfg.seed))  # its own: leaves the global RNG alone
    steps_per_epoch = sampler.batches_per_epoch
    monitor = _KnnMonitor(cfg, device) if (cfg.val_dir and main) else None

    # -- model, optimiser --------------------------------------------------------------------------------------
    backbone = build_backbone(cfg.backbone, stem=cfg.stem)
    method = build_method(cfg.method, backbone, feature_dim(backbone, cfg.image_size), **cfg.hparams)
    if ddp.world > 1 and method.needs_sync_bn:
        method = _sync_batchnorm(method, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method.to(device=device, memory_format=memory_format).train()
    base_lr = cfg.lr if cfg.lr is not None else _default_lr(cfg, method)
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else _default_weight_decay(cfg, method)
    optimizer = _make_optimizer(cfg.optimizer, method.param_groups(weight_decay), base_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    step = epoch = batch_in_epoch = 0
    elapsed_before = 0.0
    metrics: dict[str, Any] = {}
    bad_files: dict[str, str] = {}
    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a resume may change --lr / weight decay
            group["weight_decay"] = weight_decay if group["weight_decay"] else 0.0
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        elapsed_before, metrics = float(state["elapsed"]), dict(state.get("metrics", {}))
        bad_files = {p: r for p, r in state.get("bad_files", [])}
        if int(state.get("batches_per_epoch", steps_per_epoch)) != steps_per_epoch:
            say(f"the folder changed since the checkpoint ({steps_per_epoch} batches per epoch now); "
                f"epoch {epoch + 1} restarts from its first batch")
            batch_in_epoch = 0
        _set_rng_state(state["rng"])
        say(f"resuming {cfg.method} run {run_dir} at step {step} (epoch {epoch + 1}, batch {batch_in_epoch})")
    model = _wrap_ddp(method, ddp) if ddp.world > 1 else method
    _prepare_run_dir(run_dir, state, ddp)

    total_steps = cfg.epochs * steps_per_epoch if cfg.epochs else None
    budget_s = cfg.minutes * 60.0 if cfg.minutes else None
    warmup_steps = max(1, round(cfg.warmup_epochs * steps_per_epoch))

    def progress_at(s: int, elapsed: float) -> float:
        p = s / total_steps if total_steps else 0.0
        if budget_s:
            p = max(p, elapsed / budget_s)
        return min(1.0, p)

    # -- bookkeeping shared by the loop's exits ----------------------------------------------------------------
    created = (state or {}).get("created") or now_iso()
    t0 = time.perf_counter() - elapsed_before  # the clock includes earlier segments of a resumed run
    # the files on disk already hold this step unless a write was cut short between state.pt and the weights
    saved_step = step if state is not None and _weights_match(run_dir, state) else -1

    def log(record: dict) -> None:
        if not main:
            return
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        with open(run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if on_log is not None:
            on_log(record)

    def checkpoint(finished_run: bool) -> None:
        nonlocal saved_step
        if not main or step == saved_step:
            return
        elapsed = time.perf_counter() - t0
        state_out = {
            "state_version": STATE_VERSION, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {}, "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "batches_per_epoch": steps_per_epoch, "elapsed": elapsed,
            "config": cfg.to_dict(), "rng": _get_rng_state(), "metrics": metrics,
            "bad_files": [[p, r] for p, r in sorted(bad_files.items())], "created": created,
        }
        meta = _encoder_meta(cfg, method, views, collection, metrics, bad_files, step, epoch, created, finished_run)
        save_checkpoint(run_dir, method.backbone, state_out, meta)
        saved_step = step

    def knn(epoch_f: float) -> None:
        if monitor is None:
            return
        acc = monitor(method.backbone, method.feat_dim if cfg.pool == "avg" else pooled_dim(method.backbone, cfg.pool))
        metrics["knn_acc"] = acc
        metrics.setdefault("knn_acc_start", acc)
        log({"step": step, "epoch": epoch_f, "knn_acc": acc, "time": time.perf_counter() - t0})
        say(f"kNN accuracy on {cfg.val_dir} at step {step}: {acc:.3f}")

    # -- the loop ----------------------------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.method}/{cfg.backbone}", unit="step",
               disable=not (main and show), file=sys.stderr, dynamic_ncols=True)
    if state is None:
        knn(0.0)  # the untrained starting point
    finished = progress_at(step, elapsed_before) >= 1.0
    if finished:
        say(f"{run_dir} has already finished its schedule (step {step}); raise --epochs or --minutes to go on")
    stopping = False
    interval_loss, interval_steps, t_interval = 0.0, 0, time.perf_counter()
    last_save = time.perf_counter()
    aug_gen = torch.Generator()
    batches = None
    try:
        while not (finished or stopping):
            sampler.set_epoch(epoch, batch_in_epoch)
            batches = iter(loader)
            while True:
                try:
                    x1, x2, bad, batch_seed = next(batches)
                except StopIteration:
                    break
                except Exception:
                    if signals.requested:  # workers killed by the same Ctrl-C: stop as asked
                        stopping = True
                        break
                    raise
                for path, reason in bad:
                    if path not in bad_files:
                        bad_files[path] = reason
                        say(f"skipping damaged image {path}: {reason}")
                if not augment_in_loader:  # photometric augmentation on the device, seeded by the batch
                    aug_gen.manual_seed(batch_seed)
                    with torch.no_grad():
                        x1, x2 = views(x1.to(device, non_blocking=True), x2.to(device, non_blocking=True),
                                       generator=aug_gen)
                x1, x2 = x1.contiguous(memory_format=memory_format), x2.contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = model(x1, x2)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss.float()).backward()

                # one small all-reduce: mean loss, anyone asked to stop, rank 0's clock (all ranks must agree)
                want_stop = bool(signals.requested or (stop_event is not None and stop_event.is_set()))
                shared = torch.tensor([float(loss.detach()), float(want_stop),
                                       time.perf_counter() - t0 if main else 0.0], dtype=torch.float64)
                if ddp.world > 1:
                    shared = shared.to(device)
                    dist.all_reduce(shared)
                    shared = shared.cpu()
                loss_value, stop_now, elapsed = float(shared[0]) / ddp.world, bool(shared[1] > 0), float(shared[2])
                if not math.isfinite(loss_value):
                    raise TrainingDivergedError(_diverged_message(cfg, run_dir, step, epoch, loss_value,
                                                                  saved_step, base_lr))

                p = progress_at(step, elapsed)
                for group in optimizer.param_groups:
                    group["lr"] = get_lr(base_lr, step, p, warmup_steps, fixed=group.get("fixed_lr", False))
                lr_now = max(g["lr"] for g in optimizer.param_groups if not g.get("fixed_lr", False))
                with signals.deferred():  # a Ctrl-C here must not leave half-updated weights behind
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    batch_in_epoch += 1
                    method.after_step(progress_at(step, elapsed))

                interval_loss += loss_value
                interval_steps += 1
                bar.update(1)
                if step % cfg.log_every == 0:
                    now = time.perf_counter()
                    ips = interval_steps * global_batch / max(now - t_interval, 1e-9)
                    record = {"step": step, "epoch": epoch + batch_in_epoch / steps_per_epoch,
                              "loss": interval_loss / interval_steps, "lr": lr_now, "images_per_s": ips,
                              "time": elapsed}
                    metrics.update(loss=record["loss"], images_per_s=ips)
                    log(record)
                    postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{lr_now:.2e}", "img/s": f"{ips:.0f}"}
                    if budget_s:
                        postfix["left"] = f"{max(0.0, budget_s - elapsed) / 60:.1f}min"
                    bar.set_postfix(postfix, refresh=False)
                    interval_loss, interval_steps, t_interval = 0.0, 0, now
                finished = progress_at(step, elapsed) >= 1.0
                if ddp.world == 1:  # alone, a stop asked for during this step can be honoured now
                    stop_now = stop_now or signals.requested or (stop_event is not None and stop_event.is_set())
                if stop_now or finished:
                    stopping = stop_now
                    break
                if time.perf_counter() - last_save > cfg.checkpoint_minutes * 60 and batch_in_epoch < steps_per_epoch:
                    pause_start = time.perf_counter()
                    checkpoint(finished_run=False)
                    last_save = time.perf_counter()
                    t_interval += last_save - pause_start
            pause_start = time.perf_counter()
            if batch_in_epoch >= steps_per_epoch:  # the epoch is complete
                epoch, batch_in_epoch = epoch + 1, 0
                knn(float(epoch))
            elif finished:  # a time budget ran out mid-epoch: measure what is being saved
                knn(epoch + batch_in_epoch / steps_per_epoch)
            checkpoint(finished_run=finished)
            last_save = time.perf_counter()
            t_interval += last_save - pause_start  # images/s counts training time only
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread
        stopping = True
        if not signals.in_critical:
            checkpoint(finished_run=False)
    finally:
        bar.close()
        del batches  # shuts the workers of an unfinished epoch down
    if not stopping:
        checkpoint(finished_run=finished)  # e.g. a resumed run whose last write was cut short before its weights
    if main:
        if stopping:
            say(f"stopped at step {step}; checkpoint in {run_dir} (continue with --resume --out {run_dir})")
        else:
            say(f"finished {cfg.method} on {n} images: step {step}, checkpoint in {run_dir}")
    ddp.barrier()
    return run_dir


# ---------------------------------------------------------------------------------------------------------------
# helpers: run directory
# ---------------------------------------------------------------------------------------------------------------
def _open_run(cfg: TrainConfig, ddp: _Distributed) -> tuple[Path, dict | None, TrainConfig]:
    """Pick the run directory; for a resume, load ``state.pt`` and restore the settings that define the run.
    Refuses to start a new run on top of an existing one."""
    if cfg.resume:
        run = Path(cfg.out) if cfg.out else _latest_run(cfg)
        state = load_state(run)
        saved = state["config"]
        defaults = TrainConfig(data_dir=cfg.data_dir)
        conflicts = []
        for name in _FIXED_ON_RESUME:
            given, was = getattr(cfg, name), saved.get(name)
            if _canon(given) != _canon(was) and _canon(given) != _canon(getattr(defaults, name)):
                conflicts.append(f"{name}={given!r} (the run has {was!r})")
        if conflicts:
            raise LookalikeError(f"--resume continues {run} with the settings it was started with, but "
                                 f"{'; '.join(conflicts)}; drop those options or train into a new --out")
        cfg = dataclasses.replace(cfg, out=str(run), **{k: saved[k] for k in _FIXED_ON_RESUME if k in saved})
        # what a bare `--resume --out RUN` leaves out comes from the run itself
        if not cfg.data_dir:
            cfg.data_dir = saved["data_dir"]
        if cfg.val_dir is None:
            cfg.val_dir = saved.get("val_dir")
        if cfg.epochs is None and cfg.minutes is None:
            cfg.epochs, cfg.minutes = saved.get("epochs"), saved.get("minutes")
        cfg.validate()
    else:
        if cfg.out:
            run = Path(cfg.out)
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run = Path("runs") / f"{cfg.method}-{cfg.backbone.replace('/', '_')}-{stamp}"
            run = Path(ddp.broadcast_object(str(run)))
        if (run / STATE).exists() or (run / META).exists():
            raise LookalikeError(f"{run} already holds a training run; pass --resume to continue it, or choose "
                                 "another --out")
        state = None
        cfg = dataclasses.replace(cfg, out=str(run))
    return run, state, cfg


def _prepare_run_dir(run: Path, state: dict | None, ddp: _Distributed) -> None:
    """Create the run directory (rank 0), drop temporaries of an interrupted write, and cut ``metrics.jsonl``
    back to the checkpoint being resumed. Called once everything has been checked, so a refused start leaves
    nothing behind."""
    if ddp.rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run)
        if state is not None:
            _trim_metrics(run / METRICS, int(state["step"]))
        else:
            (run / METRICS).unlink(missing_ok=True)
    ddp.barrier()


def _weights_match(run_dir: Path, state: dict) -> bool:
    from retrieval.encoders import sha256_file

    meta = read_meta(run_dir) or {}
    weights = run_dir / "encoder.safetensors"
    return (weights.is_file() and meta.get("weights_sha256") == state.get("weights_sha256")
            and sha256_file(weights) == state.get("weights_sha256"))


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _latest_run(cfg: TrainConfig) -> Path:
    prefix = f"{cfg.method}-{cfg.backbone.replace('/', '_')}-"
    runs = Path("runs")
    found = sorted((p for p in runs.glob(prefix + "*") if (p / STATE).is_file()),
                   key=lambda p: (p / STATE).stat().st_mtime) if runs.is_dir() else []
    if not found:
        raise LookalikeError(f"no earlier {cfg.method} run of {cfg.backbone} under {runs}/ to resume; give its "
                             "folder with --out")
    return found[-1]


def _trim_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _encoder_meta(cfg: TrainConfig, method: nn.Module, views: nn.Module, collection: Collection,
                  metrics: dict, bad_files: dict[str, str], step: int, epoch: int, created: str,
                  finished: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION, "kind": "run", "backbone": cfg.backbone, "method": cfg.method,
        "image_size": cfg.image_size, "mean": list(views.mean), "std": list(views.std), "stem": cfg.stem,
        # the retrieval embedding: the backbone's features pooled as cfg.pool says (retrieval.encoders)
        "pool": cfg.pool,
        "dim": int(method.feat_dim) if cfg.pool == "avg" else pooled_dim(method.backbone, cfg.pool),
        "config": cfg.to_dict(),
        "data": {"root": str(collection.root), "count": len(collection.items),
                 "fingerprint": data_fingerprint(collection), "skipped": len(collection.skipped),
                 "bad_while_training": [{"path": p, "reason": r} for p, r in sorted(bad_files.items())[:100]]},
        "metrics": dict(metrics), "epoch": epoch, "step": step, "finished": finished,
        "created": created, "updated": now_iso(),
    }


def _diverged_message(cfg: TrainConfig, run_dir: Path, step: int, epoch: int, loss: float, saved_step: int,
                      lr: float) -> str:
    kept = (f"the last good checkpoint (step {saved_step}) is kept in {run_dir}; continue from it with "
            f"--resume --out {run_dir}" if saved_step >= 0 else "no checkpoint had been written yet")
    tips = f"a lower --lr than {lr:.2g}"
    if cfg.precision != "fp32":
        tips += " or --precision fp32"
    return f"training diverged: the loss became {loss} at step {step + 1} (epoch {epoch + 1}); {kept}, and try {tips}"


# ---------------------------------------------------------------------------------------------------------------
# helpers: devices, precision, optimiser
# ---------------------------------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16). Without either, bf16 autocast on CPU
    emulates the arithmetic and measured 1.5-3x *slower* than fp32 here."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``--precision`` -> (autocast dtype or None for fp32, whether a gradient scaler is needed)."""
    if precision == "auto":
        if device.type == "cuda":
            return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
        return (torch.bfloat16, False) if cpu_has_native_bf16() else (None, False)
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise LookalikeError("this GPU has no bf16 support: use --precision fp16 or fp32")
        return torch.bfloat16, False
    if device.type != "cuda":
        raise LookalikeError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32 (or auto)")
    return torch.float16, True


def feature_dim(backbone: nn.Module, image_size: int) -> int:
    """Width of the pooled features the backbone outputs with ``num_classes=0``. Not always ``num_features``:
    timm models with a head convolution after pooling (MobileNetV3/V4, LCNet) output ``head_hidden_size``
    features, so this asks the model itself (one tiny forward in eval mode, RNG untouched)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            device = next(backbone.parameters()).device
            return int(backbone(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
    finally:
        backbone.train(was_training)


def _default_workers(n_images: int, local_batch: int) -> int:
    """DataLoader workers: none for a folder of less than two batches, else about half the cores (the other
    half run the model), at least 1 and at most 8. On 2 cores one worker ran SimCLR 24% faster than none and
    two workers 40% slower than none (they compete with the model's threads)."""
    if n_images < 2 * local_batch:
        return 0
    return max(1, min(8, cpu_count() // 2))


def _default_lr(cfg: TrainConfig, method: nn.Module) -> float:
    per_256 = _BASE_LR.get(cfg.optimizer, getattr(method, "default_lr", 1e-3))
    return per_256 * cfg.batch_size / 256


def _default_weight_decay(cfg: TrainConfig, method: nn.Module) -> float:
    return _WEIGHT_DECAY.get(cfg.optimizer, getattr(method, "default_weight_decay", 1e-4))


def _make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        # the fused kernel: one pass over all parameters instead of ~10 small ops per tensor (2 cores, resnet10t +
        # heads: 12 ms per step instead of 56 ms on one thread, and far less exposed to a busy machine)
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
            return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return LARS(groups, lr=lr, momentum=0.9)


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each weight tensor is rescaled by the trust ratio
    ``eta * ||w|| / ||g + wd * w||`` (You et al., 2017, as used by SimCLR and BYOL for large batches).
    Groups without weight decay (biases, normalisation parameters) take plain SGD steps, as in those papers."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        if lr <= 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError("LARS needs lr > 0, 0 <= momentum < 1 and eta > 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


# ---------------------------------------------------------------------------------------------------------------
# helpers: RNG
# ---------------------------------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _get_rng_state() -> dict[str, Any]:
    """Every generator a run may draw from, as tensors and plain containers (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# helpers: data parallelism
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run directly)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @classmethod
    def start(cls, device_pref: str) -> _Distributed:
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        joined = dist.is_available() and dist.is_initialized()
        if not joined and env_world <= 1:
            return cls(device=resolve_device(device_pref))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_pref)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank if device.index is None else device.index)
            torch.cuda.set_device(device)
        owns = False
        if not joined:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _sync_batchnorm(method: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on GPUs (via timm, which also converts its
    BatchNormAct layers), our own all-reduce version on CPUs where SyncBatchNorm refuses to run."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(method)
    from .sync_bn import convert_global_bn

    return convert_global_bn(method)


def _wrap_ddp(method: nn.Module, ddp: _Distributed) -> nn.Module:
    """DDP over the method; its reducer holds only parameters with ``requires_grad`` (the momentum/EMA copies
    are frozen and updated by ``after_step`` on every rank alike). Buffers are not re-broadcast each step: with
    global BN they already agree, and MoCo's queue is filled from all ranks' keys."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import inspect

    ids = [ddp.device.index] if ddp.device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:  # newer torch's name for it
        return DDP(method, device_ids=ids, forward_sync_buffers=False)
    return DDP(method, device_ids=ids, broadcast_buffers=False)


class _GracefulStop:
    """While training, the first Ctrl-C (or SIGTERM, e.g. from torchrun) asks the loop to stop after the current
    step and save; a second Ctrl-C interrupts at once. Signal handlers only exist in the main thread; elsewhere
    (the web UI runs training in a thread) the ``stop_event`` does this job."""

    def __init__(self) -> None:
        self.requested = False
        self.in_critical = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and not self.in_critical:
            raise KeyboardInterrupt
        self.requested = True

    def deferred(self):
        outer = self

        class _Critical:
            def __enter__(self):
                outer.in_critical = True

            def __exit__(self, *exc):
                outer.in_critical = False

        return _Critical()


# ---------------------------------------------------------------------------------------------------------------
# helpers: kNN monitor
# ---------------------------------------------------------------------------------------------------------------
class _KnnMonitor:
    """Weighted kNN accuracy (k=200 capped by the set size, T=0.1) of the current backbone on a labelled folder,
    leave-one-out: every image is classified by the labels of its nearest neighbours among the others.

    The images are decoded and preprocessed once (retrieval's own eval preprocessing, so the number means what it
    will mean at search time) and embedded in eval mode without augmentation each time.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device):
        collection = scan(cfg.val_dir, labels=True)
        items = [it for it in collection.items if it.label is not None]
        if len({it.label for it in items}) < 2:
            raise LookalikeError(f"--val {cfg.val_dir} needs images in at least two labelled sub-folders "
                                 "(one per class, e.g. val/cats/*.jpg, val/dogs/*.jpg)")
        self.cfg, self.device, self.collection, self.items = cfg, device, collection, items
        self.images: torch.Tensor | None = None
        self.labels: list[str] = []

    def _encoder(self, backbone: nn.Module, dim: int) -> Encoder:
        from .augment import MEAN, STD

        aug = self.cfg.augment_config()
        return Encoder(spec="(training)", kind="run", backbone=self.cfg.backbone, image_size=self.cfg.image_size,
                       dim=dim, model=backbone, mean=tuple(aug.mean or MEAN),
                       std=tuple(aug.std or STD), stem=self.cfg.stem, pool=self.cfg.pool, device=self.device)

    def __call__(self, backbone: nn.Module, dim: int) -> float:
        from retrieval.metrics import knn_accuracy

        encoder = self._encoder(backbone, dim)
        if self.images is None:
            tensors = []
            for it in self.items:
                try:
                    tensors.append(encoder.preprocess(load_image(self.collection.abspath(it))))
                    self.labels.append(it.label)
                except BadImageError:
                    continue
            self.images = torch.stack(tensors) if tensors else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
        if len(self.labels) < 2:
            return 0.0
        was_training = backbone.training
        backbone.eval()
        try:
            vecs = np.concatenate([encoder.embed_uint8(self.images[i:i + 256])
                                   for i in range(0, len(self.images), 256)])
        finally:
            backbone.train(was_training)
        k = min(200, len(self.labels) - 1)
        return knn_accuracy(vecs, self.labels, vecs, self.labels, k=k, temperature=0.1, exclude_self=True)


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)
