"""The layers: app → training → retrieval, never the other way. Read from the source (every import statement,
including those inside functions), so an import that only runs on some path is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> the packages of this project it must never import
FORBIDDEN = {"retrieval": {"training", "app", "bench", "tests"}, "training": {"app", "bench", "tests"}}
# Torch-free modules: importing them must not import torch (start-up of the CLI, the run format for every reader).
TORCH_FREE = ("retrieval/fsutil.py", "retrieval/runformat.py", "retrieval/identity.py", "retrieval/index_kinds.py",
              "retrieval/encoder_kinds.py",
              "retrieval/store_files.py", "retrieval/errors.py")


def imported_modules(path: Path, package: tuple[str, ...] | None = None,
                     top_level: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (only those run at import time with
    ``top_level``); relative imports are resolved against ``package``, by default the file's own."""
    package = path.relative_to(REPO).parent.parts if package is None else package
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module))
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(package):
    files = sources(package)
    assert files, f"no sources under {package}/"
    wrong = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in files for line, module in imported_modules(path)
             if module.split(".")[0] in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_modules_import_no_deep_learning_stack(name):
    imports = imported_modules(REPO / name, top_level=True)  # a function may import FAISS when it needs it
    heavy = [f"{name}:{line} imports {module}" for line, module in imports
             if module.split(".")[0] in {"torch", "timm", "torchvision", "faiss", "numpy"}]
    assert not heavy, "\n".join(heavy)
    local = [m for _, m in imports if m.startswith("retrieval.")]
    for module in local:  # and neither do the project modules they import at the top
        assert module.replace(".", "/") + ".py" in TORCH_FREE, f"{name} imports {module}, which is not torch-free"


def test_the_scan_sees_relative_and_nested_imports(tmp_path):
    # The check itself must be able to fail: a relative import two levels up and one inside a function.
    probe = tmp_path / "probe.py"
    probe.write_text("from . import errors\ndef f():\n    from ..training import trainer\n    import app.cli\n",
                     encoding="utf-8")
    assert [m for _, m in imported_modules(probe, package=("retrieval",))] == ["retrieval", "training", "app.cli"]
    assert [m for _, m in imported_modules(probe, package=("retrieval",), top_level=True)] == ["retrieval"]
