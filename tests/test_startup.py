"""Commands that need no model answer without importing torch (issue: `index list` took 3 s importing it).

Each command runs in a fresh interpreter, through the same module the ``lookalike`` script runs, and reports which
heavy libraries it ended up importing; its output is checked too, so a command that got faster by doing nothing
fails. Timings are measured outside the suite (whole-process figures vary with the machine's load).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.collection import Item
from retrieval.index_store import IndexStore

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "faiss", "numpy", "PIL", "gradio")
# Runs the CLI as `lookalike ARGS...` would, then says which of HEAVY were imported (on stderr, last line).
RUNNER = f"""
import runpy, sys
sys.argv = ["lookalike", *sys.argv[1:]]
try:
    runpy.run_module("app.cli", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
print("imported:" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""
IDENTITY = {"spec": "pixels", "kind": "pixels", "backbone": None, "image_size": 32, "dim": 8, "weights": "none"}


def lookalike(*args: str) -> tuple[int, str, str, set[str]]:
    """(exit code, stdout, stderr without the report line, heavy modules imported) of ``lookalike ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LOOKALIKE_INDEXES", None)
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    err_lines = proc.stderr.rstrip("\n").splitlines()
    assert err_lines and err_lines[-1].startswith("imported:"), proc.stderr
    imported = {m for m in err_lines[-1].removeprefix("imported:").split(",") if m}
    return proc.returncode, proc.stdout, "\n".join(err_lines[:-1]), imported


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("indexes")
    vectors = np.eye(8, dtype=np.float32)[:3]
    IndexStore.create(root, "photos", IDENTITY, 8, root, index_type="flat",
                      items=[Item(f"{i}.png", 10, 1.0, None) for i in range(3)], vectors=vectors)
    return root


def test_index_list_imports_no_model_library_nor_numpy(indexes):
    code, out, err, imported = lookalike("index", "list", "--indexes", str(indexes))
    assert code == 0, err
    assert out.split()[:4] == ["photos", "3", "images", "flat"] and "pixels 32x32" in out
    assert not imported, f"'index list' imported {sorted(imported)}"


def test_index_list_json_of_an_empty_root(tmp_path):
    code, out, err, imported = lookalike("index", "list", "--json", "--indexes", str(tmp_path / "none"))
    assert (code, out.strip()) == (0, "[]"), err
    assert not imported


def test_index_info_reads_the_manifest_without_numpy_or_faiss(indexes):
    code, out, err, imported = lookalike("index", "info", "photos", "--indexes", str(indexes))
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert (fields["name"], fields["count"], fields["index_type"]) == ("photos", "3", "flat")
    assert fields["encoder"].startswith("pixels 32x32")
    assert not imported, f"'index info' imported {sorted(imported)}"


def test_index_info_of_a_missing_index_is_a_one_line_error(indexes):
    code, out, err, imported = lookalike("index", "info", "nope", "--indexes", str(indexes))
    assert code == 2 and out == ""
    assert err.startswith("error: no index named 'nope'") and "photos" in err and len(err.splitlines()) == 1
    assert "torch" not in imported


@pytest.mark.parametrize("args, expected", [
    (["--help"], "index"),
    (["index", "--help"], "refresh"),
    (["index", "build", "--help"], "--type"),
    (["train", "--help"], "--method"),
    (["search", "--help"], "IMAGE"),
])
def test_help_imports_no_model_library(args, expected):
    code, out, err, imported = lookalike(*args)
    assert code == 0, err
    assert out.startswith("usage: lookalike") and expected.lower() in out.lower()
    assert not {"torch", "timm", "faiss", "gradio"} & imported, f"{' '.join(args)} imported {sorted(imported)}"


@pytest.mark.parametrize("args, message", [
    ([], "required: COMMAND"),
    (["index", "build"], "required: dir"),
    (["index", "build", "photos", "--encoder", "pixels", "--name", "x", "--type", "kdtree"], "invalid choice"),
    (["train"], "required: dir"),
    (["train", "photos", "--epochs", "many"], "invalid int value"),
])
def test_argument_errors_import_no_model_library(args, message):
    code, out, err, imported = lookalike(*args)
    assert code == 2 and out == ""
    assert message in err and "usage: lookalike" in err
    assert not {"torch", "timm", "faiss", "gradio"} & imported, f"{' '.join(args)} imported {sorted(imported)}"
