"""Every training setting, declared once (type, default, help, valid values, choices), and the config they make.

:class:`TrainConfig` (a plain ``@dataclass``) has one field per setting; the ``lookalike train`` flags
(:func:`add_arguments`), the web UI's Train form (:func:`ui_settings`, :func:`ui_default`) and the checks of
:meth:`TrainConfig.validate` are generated from :data:`SETTINGS`; choices come from the registries (method names
from :data:`training.methods.METHODS`, stems and poolings from :mod:`retrieval.identity`). What the user gave is
recorded in ``TrainConfig.explicit`` and saved with the run, so ``--resume`` knows which options were typed without
comparing values with defaults.

Torch-free: importing this module imports neither torch, timm nor faiss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.encoder_kinds import kind_of
from retrieval.errors import LookalikeError
from retrieval.identity import POOLS, STEMS

__all__ = ["Setting", "SETTINGS", "setting", "choices_of", "check_value", "TrainConfig", "ui_settings", "UI_PRESET",
           "ui_default", "add_arguments", "config_from_args", "config_from_values", "DEFAULT_BACKBONE",
           "DEFAULT_STEM", "OPTIMIZERS", "PRECISIONS", "DEVICES", "DEFAULT_DEVICE", "BATCHNORM", "FINETUNE_DEFAULTS",
           "STUDENT_SIZE", "SCRATCH", "default_init", "HEAD_WARMUP"]

# resnet10t (ResNet-10 with a 3-conv "tiered" stem) with timm's default stem: the best learner of a short CPU budget
# among the backbones tried (docs/measurements.md, "Default backbone"); on a GPU, resnet18 / stem "small" are the
# better choice.
DEFAULT_BACKBONE = "resnet10t"
DEFAULT_STEM = "default"
OPTIMIZERS = ("adamw", "sgd", "lars")
PRECISIONS = ("auto", "bf16", "fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"  # of every command (training, indexing, search): a GPU where there is one, else the CPU


# What a run started from --init gets for the settings the user did not give: a lower learning rate, BatchNorm
# statistics frozen (a small collection's batches are too few to re-estimate them), milder crops and colour jitter,
# no greyscale, and batch 32 (the native 224 px at batch 64 runs out of memory on a CPU machine). Why these values:
# docs/measurements.md, "Fine-tuning defaults".
FINETUNE_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "lr_scale": 0.4,  # times the method's from-scratch default learning rate at the run's batch size
    "batchnorm": "frozen",
    "augment": {"crop_scale": (0.3, 1.0), "strength": 0.375, "gray_p": 0.0},
}
# The default student's input size as a fraction of its teacher's: a quarter of the pixels, which keeps the goal of
# indexing at least 3x as fast as the teacher with a margin (docs/measurements.md, "Distilled student size").
STUDENT_SIZE = 0.5
# LP-FT (Kumar et al. 2022): a fine-tune first trains only its new, random heads with the backbone frozen, so their
# first, large gradients do not distort the pretrained features. A tenth of the run: the span of the learning rate's
# own warm-up (never more than a tenth of the run), so the backbone joins at the peak rate with heads that already
# point somewhere; the frozen steps are cheap (no backward through the backbone). Not tuned per method: see
# docs/keep-best-and-sweep.md for what the quick runs could and could not show.
HEAD_WARMUP = 0.1
BATCHNORM = ("auto", "batch", "frozen")
_WEIGHTS_RULE = "a pretrained spec (timm:NAME, e.g. timm:tf_efficientnet_lite0) or a training run directory"


SCRATCH = "scratch"  # --init scratch: random weights, even where a pretrained encoder is installed


def _is_weights_spec(value: str) -> bool:
    """Whether ``value`` can name trained weights (its encoder kind's ``trained``: ``pixels`` and ``random:``
    cannot); whether they are there is checked when they are loaded (a resumed run needs its init no more: its
    checkpoint holds the weights)."""
    return bool(value.strip()) and kind_of(value).trained


def _method_names() -> tuple[str, ...]:
    from .methods import METHODS  # the registry is lazy: no method module (and no torch) is imported

    return tuple(METHODS)


@dataclass(frozen=True)
class Setting:
    """One training setting. ``valid``/``rule`` check a given value (``None`` always passes where the default
    is ``None``: "chosen by the trainer"); ``rule`` completes "``--flag`` must be ..." in the error."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    ui: bool = False
    label: str = ""
    flag: str = ""
    valid: Callable[[Any], bool] | None = None
    rule: str = ""
    fixed: bool = False  # defines what is trained: a resumed run keeps the value it was started with

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name.replace("_", " ").capitalize())
        if not self.flag:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))


SETTINGS: tuple[Setting, ...] = (
    Setting("method", str, "simclr", "self-supervised method", choices=_method_names, ui=True, fixed=True),
    Setting("backbone", str, DEFAULT_BACKBONE, "any timm model name", ui=True, label="Backbone (timm name)",
            valid=bool, rule="a timm model name, e.g. resnet10t", fixed=True),
    Setting("init", str, None, "weights to start from: a pretrained spec (timm:NAME, e.g. timm:tf_efficientnet_lite0 "
            "from the 'pretrained' extra), an earlier run directory, or 'scratch' (random weights); sets the backbone, "
            "image size and normalisation (default: the packaged pretrained encoder where the 'pretrained' extra is "
            "installed and no --backbone/--stem/--teacher is given, else random weights)", ui=True,
            label="Start from (pretrained spec or run)", valid=_is_weights_spec, rule=_WEIGHTS_RULE, fixed=True),
    Setting("teacher", str, None, "the encoder --method distill learns from (a pretrained spec or a run directory); "
            f"without --backbone/--init the student is its architecture and weights at {STUDENT_SIZE:g}x its image "
            "size",
            ui=True, label="Teacher (distill)", valid=_is_weights_spec, rule=_WEIGHTS_RULE, fixed=True),
    Setting("image_size", int, 64, "side of the training (and later index) images in pixels (with --init: the "
            "init's own size)", ui=True,
            valid=lambda v: 16 <= v <= 1024, rule="an integer from 16 to 1024", fixed=True),
    Setting("batch_size", int, 128, "global batch (split among torchrun processes)", ui=True,
            valid=lambda v: v >= 2, rule="an integer >= 2 (contrastive losses and BatchNorm need pairs)", fixed=True),
    Setting("local_crops", int, None, "multi-crop: small crops of the image beside the two views, for the methods "
            "that take them (swav, dino, byol; default: the method's own, 4 for swav and dino, 0 for the others)",
            valid=lambda v: 0 <= v <= 16, rule="a whole number from 0 to 16", fixed=True),
    Setting("local_size", int, None, "side of the multi-crop's small crops in pixels (default: 96/224 of "
            "--image-size, the papers' 96 px beside 224)", valid=lambda v: v >= 8, rule="an integer >= 8",
            fixed=True),
    Setting("epochs", int, None, "passes over the folder (with --minutes: whichever ends first)",
            valid=lambda v: v >= 1, rule="a whole number >= 1"),
    Setting("minutes", float, None, "time budget", ui=True, label="Minutes budget",
            valid=lambda v: v > 0, rule="a positive number"),
    Setting("stem", str, DEFAULT_STEM, "small: no early downsampling (more detail, ~3x the compute)",
            choices=STEMS, ui=True, fixed=True),
    Setting("pool", str, "avg", "how the run's index vectors are pooled: avg (global) or grid (4x4 layout; best "
            "for aligned images such as icons and scans)", choices=POOLS),
    Setting("lr", float, None, "base learning rate (default: the method's suggestion, scaled with the batch; "
            f"{FINETUNE_DEFAULTS['lr_scale']:g}x that with --init)",
            valid=lambda v: 0 < v < 100, rule="a positive number (e.g. 1e-3)"),
    Setting("weight_decay", float, None, "weight decay (default: the method's suggestion for AdamW, else the "
            "optimiser's)", valid=lambda v: v >= 0, rule=">= 0"),
    Setting("batchnorm", str, "auto", "BatchNorm statistics: batch (re-estimated from each batch), frozen (the "
            "starting weights' running statistics, eval-mode BN) or auto (frozen with --init, else batch)",
            choices=BATCHNORM, fixed=True),
    Setting("optimizer", str, "adamw", "optimiser (lars: SGD with layer-wise trust ratios, for large batches)",
            choices=OPTIMIZERS, fixed=True),
    Setting("warmup_epochs", float, 1.0, "epochs of linear warm-up (never more than a tenth of the run)",
            valid=lambda v: v >= 0, rule=">= 0", fixed=True),
    Setting("head_warmup", float, HEAD_WARMUP, "with --init: the share of the run that trains only the new heads "
            "(projector, predictor) with the backbone frozen, before the whole network trains (LP-FT); 0 turns it "
            "off", valid=lambda v: 0 <= v < 1, rule="a number from 0 to below 1", fixed=True),
    Setting("keep_best", bool, True, "with --init: score a held-out sample of the folder with the label-free "
            "scorecard at the start and at checkpoints, and keep the best as the run's encoder (the start unless a "
            "checkpoint beats it beyond its bootstrap interval)", fixed=True),
    Setting("seed", int, 0, "seed of the views, the batch order and the initial weights",
            valid=lambda v: v >= 0, rule="a non-negative integer", fixed=True),
    Setting("out", str, None, "run directory (default runs/METHOD-BACKBONE-TIME)"),
    Setting("resume", bool, False, "continue the run in --out where it stopped"),
    Setting("val_dir", str, None, "labelled folder for a kNN monitor each epoch", flag="--val",
            label="Validation folder", valid=lambda v: Path(v).expanduser().is_dir(), rule="an existing folder"),
    Setting("device", str, DEFAULT_DEVICE, "auto, cpu, cuda or cuda:N",
            valid=lambda v: v in DEVICES or v.startswith("cuda:"), rule="auto, cpu, cuda or cuda:N"),
    Setting("precision", str, "auto", "autocast precision (auto: bf16 where the hardware has it, else fp32)",
            choices=PRECISIONS),
    Setting("channels_last", bool, True, "channels-last memory format for the model"),
    Setting("workers", int, None, "DataLoader worker processes (default: from the CPU count and folder size)",
            valid=lambda v: v >= 0, rule="an integer >= 0"),
    Setting("log_every", int, 10, "write the mean loss to metrics.jsonl every N steps",
            valid=lambda v: v >= 1, rule="an integer >= 1"),
    Setting("checkpoint_minutes", float, 10.0, "save a checkpoint at least this often within an epoch",
            valid=lambda v: v > 0, rule="a positive number"),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_AUGMENT_SETTINGS = ("local_crops", "local_size")  # settings of their own that end up in the AugmentConfig

# The one preset of web-UI defaults that differ from the CLI's. Everything else in the Train form starts at the
# CLI default (batch 128, stem "default": see DEFAULT_BACKBONE's measurement above).
UI_PRESET: dict[str, Any] = {
    # the CLI has no default length; 2 minutes is the budget at which the defaults above were measured
    # (docs/measurements.md, "Default backbone")
    "minutes": 2.0,
    # a point on the live loss curve every step: one JSON line, nothing next to a step (docs/measurements.md,
    # "Logging every step")
    "log_every": 1,
}


def setting(name: str) -> Setting:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise LookalikeError(f"unknown training setting {name!r}: choose one of {', '.join(_BY_NAME)}") from None


def choices_of(s: Setting) -> tuple[str, ...] | None:
    return s.choices() if callable(s.choices) else s.choices


def ui_settings() -> list[Setting]:
    return [s for s in SETTINGS if s.ui]


def ui_default(s: Setting) -> Any:
    return UI_PRESET.get(s.name, s.default)


def check_value(s: Setting, value: Any) -> None:
    """Raise LookalikeError naming ``s.flag`` unless ``value`` has the setting's type, choice and range."""
    if value is None and s.default is None:
        return
    if not _has_type(value, s.type):
        raise LookalikeError(f"{s.flag} must be {s.rule or _TYPE_WORDS[s.type]}, got {value!r}")
    choices = choices_of(s)
    if choices is not None and value not in choices:
        raise LookalikeError(f"unknown {s.flag} {value!r}: choose one of {', '.join(choices)}")
    if s.valid is not None and not s.valid(value):
        raise LookalikeError(f"{s.flag} must be {s.rule}, got {value!r}")


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}


def _has_type(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


# -- the config they make -----------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything a training run needs. Field names follow the ``lookalike train`` flags (``--batch-size`` ->
    ``batch_size``; the one exception is ``--val`` -> ``val_dir``, a folder of labelled sub-folders for the kNN
    monitor); the whole config is saved in the run's ``encoder.json``.

    ``epochs`` and ``minutes`` may be given alone or together (the run stops at whichever ends first). ``lr`` and
    ``weight_decay`` default to the method's suggestion for AdamW (or 0.05 / 0.3 per 256 images for SGD / LARS),
    scaled linearly with ``batch_size``. ``workers=None`` picks a number from the CPU count. ``hparams`` go to the
    method (e.g. ``{"temperature": 0.5}``), ``augment`` overrides :class:`training.augment.AugmentConfig` fields.
    ``explicit`` names the settings that were given: the flags typed (:func:`config_from_args`), the form fields
    filled (:func:`config_from_values`) or the keywords passed to ``TrainConfig(...)``; ``--resume`` compares only
    those with the run's own settings.
    """

    # One field per setting of SETTINGS, in its order, with its type and default (tests/training/test_settings.py
    # checks that the two agree); then the folder's and the structured settings.
    data_dir: str
    method: str = "simclr"
    backbone: str = DEFAULT_BACKBONE
    init: str | None = None
    teacher: str | None = None
    image_size: int = 64
    batch_size: int = 128
    local_crops: int | None = None
    local_size: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    stem: str = DEFAULT_STEM
    pool: str = "avg"
    lr: float | None = None
    weight_decay: float | None = None
    batchnorm: str = "auto"
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    head_warmup: float = HEAD_WARMUP
    keep_best: bool = True
    seed: int = 0
    out: str | None = None
    resume: bool = False
    val_dir: str | None = None
    device: str = DEFAULT_DEVICE
    precision: str = "auto"
    channels_last: bool = True
    workers: int | None = None
    log_every: int = 10
    checkpoint_minutes: float = 10.0
    hparams: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    explicit: tuple[str, ...] = None  # type: ignore[assignment]  # None: the arguments passed (see __new__)

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainConfig:
        """Note what was passed, for ``explicit``: a config built in code says what it set as the CLI does
        (``dataclasses.replace`` passes ``explicit`` on)."""
        self = super().__new__(cls)
        if args or kwargs:  # not a copy (copy and pickle call __new__ bare, then restore the fields)
            names = [f.name for f in dataclasses.fields(cls)]
            self._passed = tuple(n for n in (*names[1:len(args)], *kwargs) if n not in ("data_dir", "explicit"))
        return self

    def __post_init__(self) -> None:
        self.explicit = tuple(getattr(self, "_passed", ()) if self.explicit is None else self.explicit)
        self.__dict__.pop("_passed", None)
        for name in ("data_dir", "out", "val_dir"):  # folders may come as Path objects
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.init == SCRATCH:  # random weights, in code as on the command line
            self.init = None

    def given(self, name: str) -> bool:
        """Whether setting ``name`` was given (a flag typed, a form field filled, a keyword passed)."""
        return name in self.explicit

    def validate(self) -> None:
        """Raise LookalikeError naming the flag and a valid value for the first bad setting."""
        if not self.data_dir and not self.resume:
            raise LookalikeError("no training folder given: pass the folder of images to train on")
        if self.data_dir and not Path(self.data_dir).expanduser().is_dir():
            raise LookalikeError(f"training folder not found: {self.data_dir}")
        for s in SETTINGS:
            check_value(s, getattr(self, s.name))
        if self.epochs is None and self.minutes is None and not self.resume:
            raise LookalikeError("say how long to train: --epochs N, --minutes M, or both (it stops at whichever "
                                 "comes first)")
        if self.resume and self.out is not None and not Path(self.out).is_dir():
            raise LookalikeError(f"--resume: run folder {self.out} does not exist (give the --out of an earlier run)")
        known = {f.name for f in dataclasses.fields(self)}
        if not set(self.explicit) <= known:
            raise LookalikeError(f"explicit names unknown settings: {sorted(set(self.explicit) - known)}")
        self._validate_structured()

    def _validate_structured(self) -> None:
        from .augment import AugmentConfig
        from .methods import METHODS

        if not isinstance(self.hparams, dict):
            raise LookalikeError("hparams must be a dict of method settings")
        if not isinstance(self.augment, dict):
            raise LookalikeError("augment must be a dict of augmentation settings")
        valid = METHODS[self.method].default_hparams
        unknown = sorted(set(self.hparams) - set(valid))
        if unknown:
            raise LookalikeError(f"unknown setting(s) for {self.method}: {', '.join(unknown)}; valid: "
                                 f"{', '.join(sorted(valid))}")
        fields = {f.name for f in dataclasses.fields(AugmentConfig)} - {"image_size", *_AUGMENT_SETTINGS}
        bad = sorted(set(self.augment) - fields)
        if bad:
            raise LookalikeError(f"unknown augmentation setting(s) {', '.join(bad)}; valid: "
                                 f"{', '.join(sorted(fields))}")
        if self.local_crops and not METHODS[self.method].multi_crop:
            takers = ", ".join(m for m in METHODS if METHODS[m].multi_crop)
            raise LookalikeError(f"--local-crops: {self.method} takes two views only; the methods that take local "
                                 f"crops are {takers}")
        self.augment_config()  # AugmentConfig validates its own values

    def augment_config(self):
        """The run's :class:`training.augment.AugmentConfig`: ``augment`` over the defaults, the multi-crop's
        settings from ``--local-crops`` / ``--local-size`` (the method's own number of local crops by default)."""
        from .augment import AugmentConfig
        from .methods import METHODS

        crops = METHODS[self.method].default_local_crops if self.local_crops is None else self.local_crops
        return AugmentConfig(image_size=self.image_size, local_crops=crops, local_size=self.local_size, **self.augment)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


# -- the command line -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lookalike train`` arguments: the folder, then one flag per setting. A flag not typed leaves no
    attribute behind (``argparse.SUPPRESS``), which is how :func:`config_from_args` knows what was given."""
    parser.add_argument("dir", help="folder of images to train on")
    for s in SETTINGS:
        extra: dict[str, Any] = {}
        if s.type is bool:
            extra["action"] = argparse.BooleanOptionalAction if s.default else "store_true"
        else:
            metavar = None if s.choices else s.flag[2:].upper().replace("-", "_")
            extra.update(type=s.type, choices=choices_of(s), metavar=metavar)
        shown = "" if s.default is None or s.type is bool else f" (default: {s.default})"
        parser.add_argument(s.flag, dest=s.name, default=argparse.SUPPRESS, help=s.help + shown, **extra)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``lookalike train`` arguments; the flags typed are recorded as explicit."""
    given = {s.name: getattr(args, s.name) for s in SETTINGS if hasattr(args, s.name)}
    return _config(getattr(args, "dir", ""), given)


def config_from_values(data_dir: str, values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of form values (the web UI): each is converted to its setting's type (gradio gives floats
    for numbers, ``""`` for an empty text box: empty means "not given"), the config is validated, and the keys
    given are recorded as explicit. Raises LookalikeError naming the setting."""
    given = {}
    for name, value in values.items():
        s = setting(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        given[name] = _convert(s, value)
    config = _config(data_dir, given)
    config.validate()
    return config


def _config(data_dir: str, given: dict[str, Any]) -> TrainConfig:
    values = dict(given)  # init=scratch becomes None in TrainConfig
    start = default_init(given)
    if start is not None:
        values["init"] = start
    return TrainConfig(data_dir=data_dir or "", **values, explicit=tuple(given))


def default_init(given: dict[str, Any]) -> str | None:
    """What a run of ``lookalike train`` or of the Train tab starts from when the user names no weights, backbone,
    stem or teacher (and resumes nothing): the packaged pretrained encoder where the ``pretrained`` extra is
    installed, else None (random weights). ``--init scratch`` asks for random weights whatever is installed.

    Measured (bench/tuxpaint_retrieval.py, bench/copy_detection.py, bench/fashion_mnist.py, README "Real
    photographs"): on each of these photo benchmarks every method fine-tuned from the pretrained encoder scores far
    above the same method trained from random weights for the same budget. A ``TrainConfig`` built in code keeps
    ``init=None``: the library does what it is told."""
    if any(name in given for name in ("init", "backbone", "stem", "teacher", "resume")):
        return None
    from retrieval.pretrained import DEFAULT_SPEC, available_pretrained

    return DEFAULT_SPEC if DEFAULT_SPEC in available_pretrained() else None


def _convert(s: Setting, value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
    try:
        if s.type is int:
            number = float(value) if isinstance(value, (str, float)) else value
            if isinstance(number, bool) or not float(number).is_integer():
                raise ValueError
            return int(number)
        if s.type is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if s.type is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        return str(value)
    except (TypeError, ValueError):
        raise LookalikeError(f"{s.label} ({s.flag}) must be {_TYPE_WORDS[s.type]}, got {value!r}") from None
