"""Peer implementations of our training methods, for like-for-like benchmarks: the same method trained with the
`lightly <https://github.com/lightly-ai/lightly>`_ library's own building blocks.

:func:`train_lightly` trains SimCLR, MoCo v2 or BYOL the way lightly's documentation shows (a plain PyTorch
loop over a ``DataLoader`` whose dataset applies a lightly multi-view transform to each PIL image), with

* lightly's transforms (``SimCLRTransform``, ``MoCoV2Transform``, ``BYOLView1Transform``/``BYOLView2Transform``)
  configured with *our* augmentation settings, read at run time from :func:`training.augment.views_for` (crop
  scale, flip, jitter strengths and probability, grayscale, blur probability and sigma range, solarize,
  normalisation), so the two pipelines draw from the same distributions;
* lightly's heads (``SimCLRProjectionHead``, ``MoCoProjectionHead``, ``BYOLProjectionHead``/``BYOLPredictionHead``),
  losses (``NTXentLoss``, with a memory bank for MoCo; ``NegativeCosineSimilarity``) and momentum utilities
  (``deactivate_requires_grad``, ``update_momentum``, ``batch_shuffle``/``batch_unshuffle``, ``cosine_schedule``),
  with the head widths, temperature, queue length and momentum of our methods (``METHODS[m].default_hparams``);
* the same backbone module (``retrieval.encoders.build_backbone``, a timm model), the same optimiser as our trainer
  (AdamW, the method's learning rate scaled by batch/256, its weight decay, none on biases and norm parameters via
  lightly's ``get_weight_decay_parameters``) and our schedule (:func:`training.trainer.get_lr`: warm-up of one
  epoch or 10% of the run, cosine to 1%);
* images listed by our scanner (:func:`retrieval.collection.scan`) and decoded by :func:`retrieval.imageio.load_image`.

The run directory it returns holds ``encoder.safetensors`` + ``encoder.json`` in our trainer's format (written
with :mod:`training.checkpoint`'s helpers), so ``retrieval.encoders.load_encoder(str(run))`` loads it exactly like
one of our runs; ``encoder.json``'s ``config`` says ``"implementation": "lightly"`` (and the lightly version).
There is no ``state.pt``: a peer run cannot be resumed.

Known differences from our methods (where lightly's blocks have a fixed shape):

* SimCLR: lightly's 2-layer ``SimCLRProjectionHead`` has a BatchNorm after its output layer too (ours does not).
* MoCo: our MoCo is symmetric by default (both views serve as query and key) and computes BN statistics in 4
  chunks ("shuffle BN" inside one process). The peer does the same amount of work (two queries with gradient,
  two momentum keys per step, loss averaged) with lightly's ``batch_shuffle`` for the keys and whole-batch BN;
  lightly's memory bank is updated by each of the two loss calls (ours enqueues view 2's keys only).
* BYOL: lightly's negative-cosine loss is ``-cos`` averaged over the two directions (ours is ``2 - 2 cos`` summed);
  with AdamW the scale does not change the updates' size.
* Blur: lightly blurs with PIL's ``GaussianBlur(radius=sigma)`` (kernel extent from sigma), ours with a fixed
  kernel of ~10% of the image side; crop aspect ratios are torchvision's default (3/4, 4/3) in both.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.common import lightly_version
from retrieval.errors import BadImageError, LookalikeError

__all__ = ["lightly_available", "train_lightly", "lightly_transform", "PEER_METHODS"]

PEER_METHODS = ("simclr", "moco", "byol")


def lightly_available() -> bool:
    """Whether the ``lightly`` package (the peer library) can be imported here."""
    try:
        import lightly  # noqa: F401
        from lightly.loss import NTXentLoss  # noqa: F401
        from lightly.transforms import SimCLRTransform  # noqa: F401
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# transforms: lightly's, with our settings
# ---------------------------------------------------------------------------------------------------------------
def _view_kwargs(cfg) -> dict[str, Any]:
    """Our AugmentConfig -> keyword arguments of lightly's per-view transforms."""
    b, c, s, h = cfg.jitter
    if tuple(cfg.crop_ratio) != (3 / 4, 4 / 3):
        raise LookalikeError(f"lightly's transforms crop with aspect ratios (3/4, 4/3); ours use {cfg.crop_ratio}")
    if cfg.crop_scale[1] != 1.0:
        raise LookalikeError(f"lightly's transforms crop up to scale 1.0; ours use {cfg.crop_scale}")
    return dict(input_size=cfg.image_size, cj_prob=cfg.jitter_p, cj_strength=1.0, cj_bright=b, cj_contrast=c,
                cj_sat=s, cj_hue=h, min_scale=cfg.crop_scale[0], random_gray_scale=cfg.gray_p,
                gaussian_blur=cfg.blur_p, sigmas=tuple(cfg.blur_sigma), hf_prob=cfg.flip_p, vf_prob=0.0,
                rr_prob=0.0, normalize={"mean": list(cfg.mean), "std": list(cfg.std)})


def lightly_transform(method: str, image_size: int = 64, augment: dict | None = None):
    """lightly's multi-view transform for ``method`` with our augmentation settings (PIL -> [view1, view2])."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform, \
        SimCLRTransform

    from training.augment import AugmentConfig, views_for

    views = views_for(method, AugmentConfig(image_size=image_size, **(augment or {})))
    v1, v2 = views.view1.cfg, views.view2.cfg
    if method == "byol":
        return BYOLTransform(view_1_transform=BYOLView1Transform(**_view_kwargs(v1), solarization_prob=v1.solarize_p),
                             view_2_transform=BYOLView2Transform(**_view_kwargs(v2), solarization_prob=v2.solarize_p))
    if v1.solarize_p or v2.solarize_p or v1 != v2:
        raise LookalikeError(f"our {method} views are asymmetric or solarize; lightly's {method} transform cannot")
    cls = MoCoV2Transform if method == "moco" else SimCLRTransform
    return cls(**_view_kwargs(v1))


class _Images(Dataset):
    """The scanned image files; ``dataset[i]`` = the transform of the decoded RGB image (the next decodable one
    if image i is damaged, so every batch stays full)."""

    def __init__(self, root: Path, paths: list[str], transform, reduce_to: int | None = None):
        self.root, self.paths, self.transform, self.reduce_to = root, paths, transform, reduce_to

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from retrieval.imageio import load_image

        n = len(self.paths)
        for offset in range(min(n, 64)):
            try:
                img = load_image(self.root / self.paths[(index + offset) % n], reduce_to=self.reduce_to)
            except BadImageError:
                continue
            return self.transform(img)
        raise LookalikeError(f"64 images in a row failed to decode near {self.paths[index]!r}")


def _seed_worker(worker_id: int) -> None:
    """Seed numpy (lightly's blur draws from ``np.random``) and ``random`` from the worker's torch seed."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# models: lightly's heads, losses and momentum utilities around our backbone
# ---------------------------------------------------------------------------------------------------------------
class _LightlySimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, hp: dict):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feat_dim, hp["hidden_dim"] or feat_dim, hp["out_dim"])
        self.criterion = NTXentLoss(temperature=hp["temperature"])

    def heads(self) -> list[nn.Module]:
        return [self.projection_head]

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        z0 = self.projection_head(self.backbone(x0).flatten(start_dim=1))
        z1 = self.projection_head(self.backbone(x1).flatten(start_dim=1))
        return self.criterion(z0, z1)

    def after_step(self, progress: float) -> None:
        pass


class _LightlyMoCo(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, hp: dict):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(feat_dim, hp["hidden_dim"] or feat_dim, hp["out_dim"])
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.m = float(hp["m"])
        self.symmetric = bool(hp["symmetric"])
        self.criterion = NTXentLoss(temperature=hp["temperature"], memory_bank_size=(int(hp["K"]), hp["out_dim"]))

    def heads(self) -> list[nn.Module]:
        return [self.projection_head]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        x, shuffle = batch_shuffle(x)
        k = self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1))
        return batch_unshuffle(k, shuffle)

    def forward(self, x_query: torch.Tensor, x_key: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(self.query(x_query), self.key(x_key))
        if self.symmetric:
            loss = 0.5 * (loss + self.criterion(self.query(x_key), self.key(x_query)))
        return loss

    def after_step(self, progress: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m=self.m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.m)


class _LightlyBYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, hp: dict):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feat_dim, hp["proj_hidden_dim"], hp["proj_dim"])
        self.prediction_head = BYOLPredictionHead(hp["proj_dim"], hp["pred_hidden_dim"], hp["proj_dim"])
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.tau0 = float(hp["tau0"])
        self.criterion = NegativeCosineSimilarity()

    def heads(self) -> list[nn.Module]:
        return [self.projection_head, self.prediction_head]

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.online(x0), self.online(x1)
        z0, z1 = self.target(x0), self.target(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def after_step(self, progress: float) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        resolution = 100_000  # cosine_schedule takes integer steps; progress is a fraction of the run
        m = cosine_schedule(int(round(min(1.0, progress) * resolution)), resolution, self.tau0, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)


_MODELS = {"simclr": _LightlySimCLR, "moco": _LightlyMoCo, "byol": _LightlyBYOL}


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------
def train_lightly(method: str, data_dir: str | Path, out: str | Path, *, backbone: str = "resnet10t",
                  stem: str = "default", image_size: int = 64, batch_size: int = 128, minutes: float | None = None,
                  steps: int | None = None, seed: int = 0, workers: int | None = None, progress: bool = False,
                  pool: str = "avg", augment: dict | None = None, channels_last: bool = False,
                  init: str | None = None, on_step: Callable[[dict], Any] | None = None) -> Path:
    """Train ``method`` ("simclr", "moco" or "byol") with lightly's building blocks on the images under
    ``data_dir`` for ``minutes`` of wall-clock time and/or ``steps`` optimiser steps (whichever ends first);
    returns ``out``, a run directory that :func:`retrieval.encoders.load_encoder` loads like one of ours.

    ``workers=None`` picks the DataLoader worker count with our trainer's rule. ``pool`` and ``augment`` mean what
    they mean in :class:`training.trainer.TrainConfig` (the pooling recorded for retrieval; overrides of
    :class:`training.augment.AugmentConfig` fields, applied to lightly's transforms). ``channels_last`` (off by
    default, as in lightly's examples) converts model and inputs to channels-last memory format. The optimiser is
    plain ``torch.optim.AdamW``, as in lightly's examples. ``on_step`` receives, after every optimiser step,
    ``{"step", "time", "wait_s", "compute_s", "loss"}`` (``time`` since the loop started; ``wait_s`` spent waiting for the batch; ``compute_s`` in forward, backward, optimiser and momentum update;
    reading ``loss`` synchronises, as it does in our trainer).

    ``init`` (a pretrained spec or a run directory) starts from those weights exactly as our trainer's ``--init``
    does (:mod:`training.finetune`): the init's backbone, stem, pooling, input size (``image_size`` is ignored),
    normalisation and resize filter, and the fine-tuning defaults (``FINETUNE_DEFAULTS``: augmentation, learning
    rate scale, BatchNorm statistics frozen), so that a comparison from the same start differs only in the pipeline.
    """
    from retrieval.collection import scan
    from retrieval.encoders import POOLS, build_backbone
    from retrieval.encoders import feature_dim
    from retrieval.fsutil import atomic_write_bytes, atomic_write_json, now_iso
    from retrieval.runformat import FORMAT_VERSION, META, METRICS, WEIGHTS
    from training.checkpoint import backbone_tensors
    from training.data import data_fingerprint
    from training.finetune import freeze_batchnorm
    from training.methods import METHODS
    from training.settings import FINETUNE_DEFAULTS
    from training.data import default_workers
    from training.optim import get_lr

    if method not in _MODELS:
        raise LookalikeError(f"unknown method {method!r} for the lightly peer: choose one of {', '.join(_MODELS)}")
    if pool not in POOLS:
        raise LookalikeError(f"unknown pool {pool!r}: choose one of {', '.join(POOLS)}")
    if minutes is None and steps is None:
        raise LookalikeError("say how long to train: minutes=M, steps=N, or both")
    if not lightly_available():
        raise LookalikeError("the peer library lightly is not installed (pip install -e '.[bench]')")
    from lightly.models.utils import get_weight_decay_parameters

    run = Path(out)
    if (run / META).exists():
        raise LookalikeError(f"{run} already holds a training run; choose another out")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)

    collection = scan(data_dir, labels=False)
    paths = [it.path for it in collection.items]
    if len(paths) < batch_size:
        raise LookalikeError(f"{collection.root} has {len(paths)} usable images, fewer than one batch of {batch_size}")
    source, lr_scale = None, 1.0
    if init is not None:
        from retrieval.init_weights import load_init

        source = load_init(init)
        backbone, stem, pool, image_size = source.backbone, source.stem, source.pool, source.image_size
        augment = {"mean": tuple(source.mean), "std": tuple(source.std), **FINETUNE_DEFAULTS["augment"],
                   **(augment or {})}
        lr_scale = FINETUNE_DEFAULTS["lr_scale"]
    transform = lightly_transform(method, image_size, augment)
    dataset = _Images(Path(collection.root), paths, transform, reduce_to=4 * image_size)
    n_workers = default_workers(len(paths), batch_size) if workers is None else int(workers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=n_workers,
                        persistent_workers=n_workers > 0, worker_init_fn=_seed_worker,
                        generator=torch.Generator().manual_seed(seed))
    steps_per_epoch = len(loader)

    if source is not None:
        net = source.model
        if FINETUNE_DEFAULTS["batchnorm"] == "frozen":
            freeze_batchnorm(net)
    else:
        net = build_backbone(backbone, stem=stem)
    feat_dim = feature_dim(net)
    hp = dict(METHODS[method].default_hparams)
    model = _MODELS[method](net, feat_dim, hp)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format).train()
    decay, no_decay = get_weight_decay_parameters([model.backbone, *model.heads()])
    weight_decay = METHODS[method].default_weight_decay
    base_lr = METHODS[method].default_lr * batch_size / 256 * lr_scale
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=base_lr)
    warmup_steps = max(1, steps_per_epoch)
    budget_s = minutes * 60.0 if minutes else None

    def progress_at(s: int, elapsed: float) -> float:
        p = s / steps if steps else 0.0
        if budget_s:
            p = max(p, elapsed / budget_s)
        return min(1.0, p)

    run.mkdir(parents=True, exist_ok=True)
    created = now_iso()
    metrics_file = open(run / METRICS, "w")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"lightly {method}/{backbone}", unit="step", file=sys.stderr)
    step = epoch = 0
    last: dict[str, Any] = {}
    interval_loss, interval_steps, t_interval = 0.0, 0, time.perf_counter()
    t0 = time.perf_counter()
    done = False
    try:
        while not done:
            t_wait = time.perf_counter()
            for views in loader:
                x0, x1 = (v.contiguous(memory_format=memory_format) for v in views)
                t_compute = time.perf_counter()
                p = progress_at(step, t_compute - t0)
                lr = get_lr(base_lr, step, p, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = model(x0, x1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                now = time.perf_counter()
                model.after_step(progress_at(step, now - t0))
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise LookalikeError(f"lightly {method} diverged: loss {loss_value} at step {step}")
                now2 = time.perf_counter()
                record = {"step": step, "time": now2 - t0, "wait_s": t_compute - t_wait,
                          "compute_s": now2 - t_compute, "loss": loss_value}
                if on_step is not None:
                    on_step(record)
                interval_loss += loss_value
                interval_steps += 1
                if bar is not None:
                    bar.update(1)
                if step % 10 == 0:
                    ips = interval_steps * batch_size / max(now2 - t_interval, 1e-9)
                    last = {"step": step, "epoch": epoch + (step - epoch * steps_per_epoch) / steps_per_epoch,
                            "loss": interval_loss / interval_steps, "lr": lr, "images_per_s": ips,
                            "time": now2 - t0}
                    metrics_file.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v
                                                   for k, v in last.items()}) + "\n")
                    metrics_file.flush()
                    interval_loss, interval_steps, t_interval = 0.0, 0, now2
                if progress_at(step, now2 - t0) >= 1.0:
                    done = True
                    break
                t_wait = time.perf_counter()
            else:
                epoch += 1
    finally:
        metrics_file.close()
        if bar is not None:
            bar.close()

    # -- the run directory, in our trainer's format -----------------------------------------------------------
    import hashlib

    from safetensors.torch import save as safetensors_bytes

    weights = safetensors_bytes(backbone_tensors(model.backbone), metadata={"format": "pt"})
    sha = hashlib.sha256(weights).hexdigest()
    config = {"implementation": "lightly", "lightly_version": lightly_version(), "data_dir": str(data_dir),
              "method": method, "backbone": backbone, "stem": stem, "image_size": image_size,
              "batch_size": batch_size, "minutes": minutes, "steps": steps, "seed": seed, "workers": n_workers,
              "optimizer": "adamw", "lr": base_lr, "weight_decay": weight_decay, "hparams": hp,
              "pool": pool, "augment": dict(augment or {}), "channels_last": channels_last, "out": str(run),
              "init": init}
    from training.augment import AugmentConfig

    aug = AugmentConfig(image_size=image_size, **(augment or {}))
    metrics = {"loss": last.get("loss"), "images_per_s": last.get("images_per_s")} if last else {}
    meta = {
        "format_version": FORMAT_VERSION, "kind": "run", "backbone": backbone, "method": method,
        "image_size": image_size, "mean": list(aug.mean), "std": list(aug.std), "stem": stem, "pool": pool,
        "dim": int(feat_dim) if pool == "avg" else feature_dim(model.backbone, pool), "config": config,
        "data": {"root": str(collection.root), "count": len(paths), "fingerprint": data_fingerprint(collection),
                 "skipped": len(collection.skipped), "bad_while_training": []},
        "metrics": metrics, "epoch": epoch, "step": step, "finished": True, "created": created,
        "updated": now_iso(), "weights_sha256": sha,
        **({"interpolation": source.interpolation, "init": dict(source.identity)} if source is not None else {}),
    }
    atomic_write_bytes(run / WEIGHTS, weights)
    atomic_write_json(run / META, meta, default=str)
    return run
