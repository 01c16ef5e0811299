"""Encoders: one type that turns images into L2-normalised vectors, whatever produced its weights.

Spec strings (the same on the CLI, in the UI and in index manifests):

* ``pixels`` — the image downsampled to 32×32 RGB, standardised per image (cosine = pixel correlation). The floor
  every learned encoder has to beat. A picture with no contrast (black, white, any grey) has nothing to correlate:
  it gets the direction every such picture shares (:func:`unit_rows`), so black photos find black photos.
* ``random:NAME`` — a timm backbone with seeded random weights, the "no training" baseline.
* ``timm:NAME`` — a timm backbone with pretrained weights, only if they are already on this machine: a package
  that ships them (``timm:tf_efficientnet_lite0``, ``…lite1``, ``…lite2``: ImageNet weights from the ``pretrained``
  extra), the Hugging Face cache, torch hub's checkpoint folder, or ``timm:NAME?file=/path/weights.safetensors``
  (:mod:`retrieval.pretrained`). Nothing is ever downloaded. Images are resized with the backbone's own filter
  (``interpolation`` of its timm ``pretrained_cfg``, bicubic for the EfficientNets) and normalised with its mean/std.
* a path to a training run directory (``runs/NAME``) with ``encoder.safetensors`` + ``encoder.json``.

Each kind is a row of :data:`retrieval.encoder_kinds.KINDS` naming its builder here (:func:`pixels_encoder`,
:func:`random_encoder`, :func:`timm_encoder`, :func:`run_encoder`); :func:`load_encoder` asks the table.

``random:`` and ``timm:`` take options after ``?``: ``size`` (input pixels), ``stem`` (``default``/``small``),
``seed`` (random only), ``file`` (timm only), ``pool``, e.g. ``random:resnet18?size=64&stem=small``. A run
directory takes ``?pool=`` too (``runs/demo-simclr?pool=avg``); otherwise it uses the pooling it was trained for.

Pooling (``pool``) turns the backbone's feature maps into one vector:

* ``avg`` — global average of the last stage (the usual embedding; invariant to where things are in the image).
* ``grid`` — the second-to-last stage (stride 16 in a ResNet) averaged over a 4×4 grid of cells and flattened
  (16 × its channels: 4,096 for resnet10t). It keeps *where* colours and parts are, which is what tells apart
  aligned images such as icons, scans, screenshots and burst shots; and it skips the last stage, so it is also
  faster. On the demo's cross-vendor emoji task it lifts recall@1 of every resnet10t encoder by about 0.2
  (``bench/quality.py``).
* ``gem`` — generalised-mean pooling of the last stage (Radenović, Tolias & Chum 2018), ``(mean x^p)^(1/p)`` with
  ``p = 3``: between average (p = 1) and max (p → ∞) pooling, so strong local activations weigh more than in
  ``avg``. Same width as ``avg``.

Multi-scale (``scales``, e.g. ``timm:tf_efficientnet_lite0?scales=1,0.707,1.414``): the image is also embedded
resized by each factor, each pooled vector L2-normalised, and their mean is the descriptor (slower by the sum of
the squared factors). Part of the identity, like ``pool``. Measured effects: ``docs/retrieval-tools.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .encoder_kinds import RUN, kind_named, kind_of, specs_help
from .errors import CheckpointError, LookalikeError, WeightsUnavailableError
from .fsutil import sha256_file  # the weights' digest of an identity (also imported from here)
from .precision import embed_dtype
from .identity import IDENTITY_KEYS, POOLS, STEMS, describe_identity, identity_matches  # noqa: F401 - re-exported: callers take them with the encoders
from .runformat import META, WEIGHTS, read_run_manifest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXELS_SIZE = 32
# Resize filters an encoder may use (its ``interpolation``); a timm ``pretrained_cfg`` names one of these.
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST}
GRID_CELLS = 4  # cells per side of the "grid" pooling
DEGENERATE_NORM = 1e-6  # a row of features this short has no direction (unit_rows)
GEM_P = 3.0  # the generalised-mean exponent of "gem" pooling (the paper's fixed value)
SCALE_RANGE = (0.25, 4.0)  # the resize factors "scales" accepts


def build_backbone(backbone: str, stem: str = "default", pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm backbone with pooled features (``num_classes=0``).

    ``stem="small"`` suits tiny images (32–96 px): the stem downsamples 2× instead of 4× — the stem max-pool is
    dropped where there is one, otherwise the first convolution gets stride 1 — so a 64 px image reaches the last
    stage of a ResNet as a 4×4 map rather than 2×2, at the cost of a 128 px input, not 256 px. Parameter names and
    shapes are unchanged, so the weights stay loadable into ``timm.create_model(backbone, num_classes=0)``.
    """
    import timm

    if stem not in STEMS:
        raise LookalikeError(f"unknown stem {stem!r}: use one of {', '.join(STEMS)}")
    try:
        model = timm.create_model(backbone, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{backbone.split('.')[0][:6]}*")[:8]
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise LookalikeError(f"unknown timm backbone {backbone!r}.{hint}") from None
        raise
    if stem == "small":
        if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            model.maxpool = nn.Identity()
        else:
            _first_conv(model).stride = (1, 1)
    return model


def _first_conv(model: nn.Module) -> nn.Conv2d:
    name = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if name:
        mod = model.get_submodule(name) if name in dict(model.named_modules()) else None
        if isinstance(mod, nn.Conv2d):
            return mod
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            return mod
    raise LookalikeError("backbone has no convolution to adapt for stem='small'")


@dataclass
class Encoder:
    """Images → L2-normalised float32 vectors. Construct with :func:`load_encoder`."""

    spec: str
    kind: str
    backbone: str | None
    image_size: int
    dim: int
    model: nn.Module
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stem: str = "default"
    weights: str = "none"
    pool: str = "avg"
    extra: dict = field(default_factory=dict)  # method, metrics… from a run's encoder.json
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    interpolation: str = "bilinear"  # resize filter of preprocess (a RESAMPLE key)
    scales: tuple[float, ...] = (1.0,)  # resize factors whose pooled vectors are averaged (module docstring)
    precision: str | None = None  # of the forward pass: retrieval.precision.CHOICES, None: its environment/auto
    autocast: torch.dtype | None = field(init=False, default=None)  # what ``precision`` resolves to (None: fp32)

    def __post_init__(self) -> None:
        if kind_named(self.kind) is None:
            raise LookalikeError(f"encoder kind {self.kind!r} is not in retrieval.encoder_kinds.KINDS")
        if self.runs_network:
            self.autocast = embed_dtype(self.device, self.precision)
        if self.interpolation not in RESAMPLE:
            raise LookalikeError(f"unknown interpolation {self.interpolation!r} for encoder {self.spec!r}: use one "
                                 f"of {', '.join(RESAMPLE)}")

    @property
    def runs_network(self) -> bool:
        """Whether its model is a network on normalised images (its kind's row); else a fixed function of the raw
        0-255 pixel values, run in float32 (``pixels``)."""
        return kind_named(self.kind).network

    @property
    def identity(self) -> dict:
        ident = {
            "spec": self.spec,
            "kind": self.kind,
            "backbone": self.backbone,
            "image_size": self.image_size,
            "dim": self.dim,
            "stem": self.stem,
            "weights": self.weights,
            "pool": self.pool,
            "interpolation": self.interpolation,
            "scales": scales_text(self.scales),
        }
        if self.extra.get("method"):
            ident["method"] = self.extra["method"]
        return ident

    @property
    def name(self) -> str:
        return describe_identity(self.identity)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB → uint8 tensor (3, S, S): shorter side resized to S, centre crop. Cheap; runs in loader workers."""
        s = self.image_size
        w, h = img.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((nw, nh), RESAMPLE[self.interpolation], reducing_gap=3.0 if min(w, h) > 4 * s else None)
        left, top = (nw - s) // 2, (nh - s) // 2
        img = img.crop((left, top, left + s, top + s))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, S, S)

    @torch.inference_mode()
    def embed_uint8(self, batch: torch.Tensor) -> np.ndarray:
        """uint8 (B, 3, S, S) → float32 (B, dim), each row L2-normalised."""
        x = batch.to(self.device, non_blocking=True).float()  # (B, 3, S, S) in [0, 255]
        if not self.runs_network:
            z = self.model(x)  # (B, dim)
        else:
            x = x.div_(255.0)
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                z = self._multi_scale(x)  # (B, dim), float32 in any precision
        return unit_rows(z).cpu().numpy().astype(np.float32, copy=False)

    def _multi_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) → (B, dim): the pooled vector, or the mean of unit vectors per scale."""
        if self.scales == (1.0,):
            return pooled_features(self.model, x, self.pool).float()
        z = torch.zeros(len(x), self.dim, device=x.device)
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                                   antialias=s < 1.0)  # (B, 3, S·s, S·s)
            z += F.normalize(pooled_features(self.model, xs, self.pool).float(), dim=1)
        return z / len(self.scales)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_uint8(torch.stack([self.preprocess(im) for im in images]))


class CentredPixels(nn.Module):
    """The ``pixels`` encoder's model: (B, 3, S, S) whole numbers 0-255 → (B, n = 3·S·S) pixels minus their mean,
    times n (exact in float32 while n·255 < 2**24, so a uniform picture gives exactly zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)  # (B, n)
        return z * z.shape[1] - z.sum(dim=1, keepdim=True)  # (B, n) = n·(x - mean)


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """(B, dim) → (B, dim) with unit rows. A row with no direction — a uniform picture's pixels once centred (black,
    white, any grey), or a network's all-zero features — becomes the all-ones direction: every such picture gets
    the same well-defined vector, so a black photo finds the other black and uniform photos, and an index of a
    folder with a lens-cap shot in it builds. Centred pixel rows are orthogonal to it, so it never ties with a
    picture that has any contrast."""
    norms = z.norm(dim=1, keepdim=True)  # (B, 1)
    flat = torch.full_like(z, z.shape[1] ** -0.5)
    return torch.where(norms > DEGENERATE_NORM, z / norms.clamp_min(DEGENERATE_NORM), flat)


def _parse_options(rest: str) -> tuple[str, dict[str, str]]:
    name, _, query = rest.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    allowed = {"size", "stem", "seed", "file", "pool", "scales"}
    unknown = set(opts) - allowed
    if unknown:
        raise LookalikeError(f"unknown encoder option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if not name:
        raise LookalikeError("encoder spec is missing the timm model name, e.g. random:resnet18")
    return name, opts


def _int_opt(opts: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(opts.get(key, default))
    except ValueError:
        raise LookalikeError(f"encoder option {key}={opts[key]!r} must be an integer") from None
    if value <= 0 and key != "seed":
        raise LookalikeError(f"encoder option {key} must be positive")
    return value


def _default_size(model: nn.Module) -> int:
    return int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])


def _finish(model: nn.Module, device: torch.device) -> nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last)


def _pool_opt(opts: dict[str, str], default: str = "avg") -> str:
    pool = opts.get("pool", default)
    if pool not in POOLS:
        raise LookalikeError(f"encoder option pool={pool!r}: use one of {', '.join(POOLS)}")
    return pool


def scales_opt(text: str | None) -> tuple[float, ...]:
    """``"1,0.707,1.414"`` → (1.0, 0.707, 1.414); None → (1.0,). Factors in :data:`SCALE_RANGE`, no repeats."""
    if text is None:
        return (1.0,)
    try:
        scales = tuple(float(t) for t in str(text).split(","))
    except ValueError:
        raise LookalikeError(f"encoder option scales={text!r}: give comma-separated numbers, e.g. "
                             "scales=1,0.707,1.414") from None
    lo, hi = SCALE_RANGE
    if not all(lo <= s <= hi for s in scales) or len(set(scales)) != len(scales):
        raise LookalikeError(f"encoder option scales={text!r}: each factor between {lo:g} and {hi:g}, no repeats")
    return scales


def scales_text(scales: tuple[float, ...]) -> str:
    """The identity's form of ``scales`` (a string, so it compares equal after a JSON round trip)."""
    return ",".join(f"{s:g}" for s in scales)


def gem(fmap: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over space: (B, C, H, W) → (B, C) = (mean over H·W of clamp(x, eps)^p)^(1/p)."""
    return fmap.float().clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def pooled_features(model: nn.Module, x: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """(B, 3, S, S) normalised images → (B, dim) unnormalised features, pooled as ``pool`` says (module docstring).

    ``model`` is a timm backbone built with ``num_classes=0`` (its forward already average-pools the last stage).
    """
    if pool == "avg":
        return model(x)  # (B, C_last)
    if pool == "gem":
        fmap = model.forward_features(x)  # (B, C_last, H, W)
        if fmap.ndim != 4:
            raise LookalikeError(f"pool=gem needs a convolutional backbone; {type(model).__name__} gives "
                                 f"{fmap.ndim}-d features, use pool=avg")
        return gem(fmap)  # (B, C_last)
    if pool != "grid":
        raise LookalikeError(f"unknown pooling {pool!r}: use one of {', '.join(POOLS)}")
    stages = getattr(model, "feature_info", None)
    if not stages or not hasattr(model, "forward_intermediates") or len(stages) < 2:
        raise LookalikeError(f"pool=grid needs a timm backbone with feature stages; {type(model).__name__} has "
                             "none, use pool=avg")
    fmap = model.forward_intermediates(x, indices=[len(stages) - 2], stop_early=True,
                                       intermediates_only=True)[0]  # (B, C, H, W), stride 16 in a ResNet
    return F.adaptive_avg_pool2d(fmap, GRID_CELLS).flatten(1)  # (B, C·4·4)


def feature_dim(model: nn.Module, pool: str = "avg") -> int:
    """Width of the pooled output. Measured, because ``num_features`` is the pre-head width for models with a head
    after pooling (e.g. MobileNetV3: 576 vs 1024)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device)
        dim = int(pooled_features(model, x, pool).shape[-1])
    model.train(was_training)
    return dim


def pixels_encoder(spec: str, device: torch.device) -> Encoder:
    return Encoder(spec, "pixels", None, PIXELS_SIZE, 3 * PIXELS_SIZE * PIXELS_SIZE, CentredPixels(), device=device)


def random_encoder(spec: str, device: torch.device) -> Encoder:
    name, opts = _parse_options(spec.partition(":")[2])
    seed = _int_opt(opts, "seed", 0)
    stem = opts.get("stem", "default")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(name, stem=stem)
    size = _int_opt(opts, "size", _default_size(model))
    pool = _pool_opt(opts)
    return Encoder(spec, "random", name, size, feature_dim(model, pool), _finish(model, device),
                   stem=stem, weights=f"seed:{seed}", pool=pool, device=device)


def _packaged_backbone(name: str, stem: str, file: Path) -> nn.Module:
    """``build_backbone(name, stem)`` holding a package's weights (all of them but the classifier's)."""
    from .pretrained import packaged_state_dict

    model = build_backbone(name, stem=stem)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in packaged_state_dict(name, file).items() if k in own}, strict=True)
    return model


def timm_encoder(spec: str, device: torch.device) -> Encoder:
    import timm

    from . import pretrained  # the packaged weights' table (imports torch, like this module)

    name, opts = _parse_options(spec.partition(":")[2])
    stem = opts.get("stem", "default")
    file = opts.get("file")
    if file is None:
        if not timm.is_model(name.split(".")[0]):
            raise LookalikeError(f"unknown timm backbone {name!r}")
        file = pretrained.local_weights_file(name)
        if file is None:
            raise WeightsUnavailableError(
                f"pretrained weights for {name!r} are not on this machine (looked in installed packages, the "
                f"Hugging Face cache and torch hub's checkpoints); Lookalike never downloads: "
                f"{pretrained.install_hint(name) or 'put the file there'}, or pass "
                f"'timm:{name}?file=/path/to/weights.safetensors', or use 'random:{name}'.")
    elif not Path(file).is_file():
        raise WeightsUnavailableError(f"weights file {file!r} does not exist")
    try:
        if Path(file) == pretrained.packaged_file(name):
            model = _packaged_backbone(name, stem, file)
        else:
            model = build_backbone(name, stem=stem, pretrained=True, pretrained_cfg_overlay={"file": str(file)})
    except LookalikeError:
        raise
    except Exception as exc:  # not a weights file, a pickle with code in it (refused by weights_only), wrong shapes
        raise WeightsUnavailableError(
            f"{file} could not be loaded as weights for {name!r} ({type(exc).__name__}: {_first_line(exc)}); "
            "give a .safetensors or plain state-dict file made for this backbone") from None
    cfg = model.pretrained_cfg
    size = _int_opt(opts, "size", _default_size(model))
    pool = _pool_opt(opts)
    return Encoder(spec, "timm", name, size, feature_dim(model, pool), _finish(model, device),
                   mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                   stem=stem, weights="sha256:" + sha256_file(file)[:16], pool=pool, device=device,
                   interpolation=cfg.get("interpolation") or "bilinear")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def run_encoder(spec: str, device: torch.device) -> Encoder:
    """A training run's folder (``runs/NAME``, or ``runs/NAME?pool=avg``)."""
    if Path(spec).is_dir():
        return _run_encoder(spec, device)
    path, sep, query = spec.rpartition("?")
    if sep and Path(path).is_dir():
        return _run_encoder(path, device, dict(parse_qsl(query, keep_blank_values=True)))
    raise LookalikeError(f"unknown encoder {spec!r}: use {specs_help(' or ')} (a training run folder)")


def _run_encoder(spec: str, device: torch.device, opts: dict[str, str] | None = None) -> Encoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(spec)
    meta = read_run_manifest(run)
    opts = opts or {}
    unknown = set(opts) - {"pool", "scales"}
    if unknown:
        raise LookalikeError(f"unknown option(s) {sorted(unknown)} for a run directory; allowed: ['pool', 'scales']")
    pool = _pool_opt(opts, default=meta.get("pool", "avg"))
    weights = run / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{run} has {META} but no {WEIGHTS}")
    digest = sha256_file(weights)
    if digest != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match the sha256 in {META} (a partial or foreign file); "
            "re-run training with --resume to rewrite it")
    stem = meta.get("stem", "default")
    model = build_backbone(meta["backbone"], stem=stem)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({_first_line(exc)}); "
                              "re-run training with --resume to rewrite it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit backbone {meta['backbone']!r}: {exc}") from None
    extra = {k: meta.get(k) for k in ("method", "metrics", "config", "data", "epoch", "step", "updated")}
    dim = int(meta["dim"]) if pool == meta.get("pool", "avg") else feature_dim(model, pool)
    name = str(run.resolve()) + ("" if pool == meta.get("pool", "avg") else f"?pool={pool}")
    return Encoder(name, RUN, meta["backbone"], int(meta["image_size"]), dim, _finish(model, device),
                   mean=tuple(meta.get("mean", IMAGENET_MEAN)), std=tuple(meta.get("std", IMAGENET_STD)), stem=stem,
                   weights=digest, pool=pool, extra=extra, device=device,
                   interpolation=meta.get("interpolation", "bilinear"))


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LookalikeError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
    return dev


def load_encoder(spec: str, device: str | torch.device = "cpu") -> Encoder:
    """Build an :class:`Encoder` from a spec string (see module docstring) with its kind's builder."""
    spec = str(spec).strip()
    encoder = kind_of(spec).builder()(spec, resolve_device(device))
    _, sep, query = spec.rpartition("?")
    scales = scales_opt(dict(parse_qsl(query)).get("scales") if sep else None)
    if scales != (1.0,):
        encoder.scales = scales
        if encoder.kind == RUN and "scales=" not in encoder.spec:  # its spec is rebuilt from the run's path
            encoder.spec += ("&" if "?" in encoder.spec else "?") + f"scales={scales_text(scales)}"
    return encoder
