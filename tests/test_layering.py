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


# ---------------------------------------------------------------------------------------------------- bench/
def bench_imports(root: Path = REPO) -> dict[str, list[tuple[int, str]]]:
    """bench module -> (line, name) of every bench module or module attribute it imports, anywhere in the file
    (``from bench import photos`` is ``bench.photos``; ``from bench.common import ROOT`` is ``bench.common.ROOT``)."""
    out = {}
    for path in sorted((root / "bench").rglob("*.py")):
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bench":
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "bench"]
        out[".".join(path.relative_to(root).with_suffix("").parts)] = found
    return out


def bench_graph(root: Path = REPO) -> dict[str, set[str]]:
    """bench module -> the bench modules it imports."""
    imports = bench_imports(root)
    return {module: {next((m for m in (name, name.rsplit(".", 1)[0]) if m in imports), name) for _, name in found}
            - {module} for module, found in imports.items()}


def bench_problems(root: Path = REPO, scripts: set[str] | None = None) -> list[str]:
    """A benchmark script imported by another bench file, a private name imported from a bench module, a circle."""
    if scripts is None:
        from bench.registry import BENCHMARKS, module

        scripts = {module(name) for name in BENCHMARKS}
    graph = bench_graph(root)
    wrong = [f"{m} imports the benchmark {other}" for m, imports in graph.items() for other in imports
             if other in scripts]
    wrong += [f"{m}:{line} imports the private {name}" for m, found in bench_imports(root).items()
              for line, name in found if name.rsplit(".", 1)[-1].startswith("_")]
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        if module in stack:
            wrong.append("import circle: " + " -> ".join((*stack[stack.index(module):], module)))
        elif module not in done:
            done.add(module)
            for other in sorted(graph.get(module, ())):
                visit(other, (*stack, module))

    for module in graph:
        visit(module, ())
    return wrong


def test_no_benchmark_file_touches_sys_path():
    wrong = [f"{path.relative_to(REPO)}:{node.lineno}" for path in sources("bench")
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"]
    assert not wrong, "sys.path in " + ", ".join(wrong)


def test_benchmarks_import_shared_modules_not_each_other_no_privates_no_circle():
    assert not bench_problems(), "\n".join(bench_problems())


def test_the_bench_checks_can_fail(tmp_path):
    # Two made-up scripts importing each other, one through a private name, one inside a function.
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "a.py").write_text("from bench.b import _x\n", encoding="utf-8")
    (tmp_path / "bench" / "b.py").write_text("def f():\n    from bench import a\n", encoding="utf-8")
    assert bench_graph(tmp_path) == {"bench.a": {"bench.b"}, "bench.b": {"bench.a"}}
    problems = bench_problems(tmp_path, scripts={"bench.a"})
    assert "bench.b imports the benchmark bench.a" in problems
    assert "bench.a:1 imports the private bench.b._x" in problems
    assert any(p.startswith("import circle: bench.a -> bench.b -> bench.a") for p in problems)
