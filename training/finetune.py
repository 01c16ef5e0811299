"""Where a run starts from (``--init``) and whom it learns from (``--teacher``): what each decides of a run.

:func:`resolve_sources` fills in what the starting weights or the teacher imply, before anything is built:

* ``--init SPEC`` (a pretrained spec such as ``timm:tf_efficientnet_lite0``, or an earlier run directory): the
  backbone, stem and pooling are the init's (a conflicting ``--backbone``/``--stem`` is an error), the image size
  is the init's native one unless given, the normalisation of the views is the init's mean/std, and the settings
  the user left out get :data:`FINETUNE_DEFAULTS`. The run's ``encoder.json`` records the init's resize filter
  (so the run indexes exactly as the pretrained encoder does) and its identity (spec and weights digest).
* ``--teacher SPEC`` (``--method distill`` only): the frozen teacher, loaded here; without ``--backbone`` or
  ``--init`` the student is the teacher's own architecture and weights at :data:`STUDENT_SIZE` of its input size.

A resumed run keeps its init and teacher (``training.config.FIXED_ON_RESUME``): the init is not loaded again
(``state.pt`` holds the weights), the teacher is, and must still have the weights the run started with.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from retrieval.errors import LookalikeError

from .config import TrainConfig
from .optim import default_lr
from .settings import FINETUNE_DEFAULTS, STUDENT_SIZE

__all__ = ["FINETUNE_DEFAULTS", "STUDENT_SIZE", "Sources", "resolve_sources", "freeze_batchnorm",
           "frozen_layers", "freeze_layers", "uses_teacher"]


@dataclass
class Sources:
    """The weights a run starts from and the teacher it learns from (either may be None), and their identities
    as the run records them (``encoder.json``'s ``init`` / ``teacher``, kept in ``state.pt`` for a resume)."""

    init: Any = None  # retrieval.init_weights.InitWeights, only for a new run
    teacher: Any = None  # retrieval.init_weights.InitWeights
    record: dict[str, dict] = field(default_factory=dict)

    def view_size(self, image_size: int) -> int:
        """Side of the training views: the run's image size, or the teacher's input size where that is larger
        (the teacher sees sharp views; the student gets them resized to its own size, as an index would)."""
        return max(image_size, self.teacher.image_size) if self.teacher is not None else image_size

    @property
    def interpolation(self) -> str | None:
        """The init's resize filter, which the run's index preprocessing keeps."""
        return self.record.get("init", {}).get("interpolation")


def uses_teacher(method: str) -> bool:
    from .methods import get_method

    return get_method(method).uses_teacher


def resolve_sources(cfg: TrainConfig, state: dict | None = None) -> tuple[TrainConfig, Sources]:
    """``cfg`` with what ``init``/``teacher`` decide filled in, and the loaded sources. ``state`` is the
    checkpoint of a resumed run (whose ``cfg`` already holds the run's own settings)."""
    if uses_teacher(cfg.method) != (cfg.teacher is not None):
        raise LookalikeError(f"--method {cfg.method} needs --teacher SPEC (the encoder to learn from, e.g. "
                             "timm:tf_efficientnet_lite0)" if cfg.teacher is None else
                             f"--teacher is for --method distill; --method {cfg.method} learns without one")
    saved = dict(state.get("sources", {})) if state is not None else {}
    sources = Sources(record=saved)
    if cfg.teacher is not None:
        sources.teacher = _load("teacher", cfg.teacher)
        _check_unchanged("teacher", sources.teacher, saved)
        sources.record["teacher"] = dict(sources.teacher.identity)
    cfg = dataclasses.replace(cfg, hparams=dict(cfg.hparams), augment=dict(cfg.augment))
    if state is not None:  # the run's own settings say the rest, and state.pt holds its weights
        _finetune_lr(cfg)
        return cfg, sources
    size = None
    if cfg.init is None and sources.teacher is not None and not cfg.given("backbone"):
        # the default student: the teacher's architecture and weights (a copy) at STUDENT_SIZE of its input size
        teacher = sources.teacher
        sources.init = dataclasses.replace(teacher, model=copy.deepcopy(teacher.model).train().requires_grad_(True))
        cfg.init, size = cfg.teacher, max(16, round(teacher.image_size * STUDENT_SIZE))
    elif cfg.init is not None:
        sources.init = _load("init", cfg.init)
    if sources.init is not None:
        sources.record["init"] = dict(sources.init.identity)
        _apply_init(cfg, sources.init, size)
    elif cfg.batchnorm == "auto":
        cfg.batchnorm = "batch"
    return cfg, sources


def _apply_init(cfg: TrainConfig, init, image_size: int | None = None) -> None:
    """Backbone, stem, pooling, image size and normalisation from the init; FINETUNE_DEFAULTS where not given."""
    for name, value in (("backbone", init.backbone), ("stem", init.stem)):
        if cfg.given(name) and getattr(cfg, name) != value:
            raise LookalikeError(f"--{name} {getattr(cfg, name)} conflicts with --init {cfg.init}, whose weights "
                                 f"are for {name} {value}; drop --{name} (the init's is used)")
        setattr(cfg, name, value)
    if not cfg.given("image_size"):
        cfg.image_size = image_size or init.image_size
    if not cfg.given("batch_size"):
        cfg.batch_size = FINETUNE_DEFAULTS["batch_size"]
    if not cfg.given("pool"):
        cfg.pool = init.pool
    cfg.augment.setdefault("mean", tuple(init.mean))
    cfg.augment.setdefault("std", tuple(init.std))
    for key, value in FINETUNE_DEFAULTS["augment"].items():
        cfg.augment.setdefault(key, value)
    if cfg.batchnorm == "auto":
        cfg.batchnorm = FINETUNE_DEFAULTS["batchnorm"]
    _finetune_lr(cfg)


def _finetune_lr(cfg: TrainConfig) -> None:
    """The fine-tuning learning rate of a run with an init, unless one was given (each segment of a resumed run
    chooses it anew, as a run without an init does)."""
    if cfg.init is not None and cfg.lr is None:
        from .methods import get_method

        cfg.lr = default_lr(cfg.optimizer, cfg.batch_size, get_method(cfg.method)) * FINETUNE_DEFAULTS["lr_scale"]


def _load(flag: str, spec: str):
    from pathlib import Path

    from retrieval.encoder_kinds import kind_of
    from retrieval.init_weights import load_init

    if kind_of(spec).folder:
        path, mark, options = spec.partition("?")
        if not Path(path).expanduser().is_dir():
            raise LookalikeError(f"--{flag} {spec}: no such training run directory (give a run's folder or a "
                                 "pretrained spec, timm:NAME, e.g. timm:tf_efficientnet_lite0)")
        spec = str(Path(path).expanduser()) + mark + options  # what was checked is what is loaded
    return load_init(spec)


def _check_unchanged(what: str, loaded, saved: dict[str, dict]) -> None:
    before = saved.get(what, {}).get("weights")
    if before is not None and before != loaded.weights:
        raise LookalikeError(f"the {what} {loaded.spec} has other weights ({loaded.weights}) than when this run "
                             f"started ({before}); resume with the same {what}, or train into a new --out")


def _eval_mode(module: nn.Module, args) -> None:
    module.training = False  # running statistics, whatever .train() said: the stats neither update nor vary


def freeze_batchnorm(model: nn.Module) -> None:
    """Make every BatchNorm layer of ``model`` normalise with its running statistics (eval mode) in every
    forward, while its affine weights still train. The hooks survive ``copy.deepcopy`` (momentum copies made
    afterwards are frozen too), not a swap of the layer: see :func:`frozen_layers`."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not _is_frozen(module):
            module.register_forward_pre_hook(_eval_mode)


def frozen_layers(model: nn.Module) -> list[str]:
    """Names of the layers :func:`freeze_batchnorm` froze, to freeze again after their conversion to
    synchronised BatchNorm (``freeze_layers(model, names)``)."""
    return [name for name, module in model.named_modules() if _is_frozen(module)]


def freeze_layers(model: nn.Module, names: list[str]) -> None:
    for name in names:
        freeze_batchnorm(model.get_submodule(name))


def _is_frozen(module: nn.Module) -> bool:
    return any(hook is _eval_mode for hook in module._forward_pre_hooks.values())
