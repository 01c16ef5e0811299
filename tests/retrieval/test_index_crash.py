"""Kill -9 a process in the middle of index writes; the index must always open, search, and be one version.

A child process (this file run as a script) opens an index and adds, replaces and removes items in a loop, printing
``begin <count after>`` before each change and ``done <count>`` after it. The parent kills it at random moments and,
through ``LOOKALIKE_CRASH_AT``, at each named step of the write sequence, then checks that the index opens with
either the last committed count or the one being written, and that every vector still belongs to its row.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from retrieval.collection import Item
from retrieval.errors import IndexNotFoundError
from retrieval.index_store import IndexStore, list_indexes

REPO = Path(__file__).resolve().parents[2]

D = 16
IDENTITY = {"spec": "pixels", "kind": "pixels", "backbone": None, "image_size": 4, "dim": D, "weights": "none"}
WRITE_STEPS = ["items-written", "index-written", "manifest-written", "manifest-replaced"]

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9 (POSIX)")


def vec_for(path: str, version: float) -> np.ndarray:
    """The vector an item must have: derived from its path and version (stored as mtime), so a mismatch shows."""
    v = np.random.default_rng(zlib.crc32(f"{path}@{version}".encode())).standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


def item(path: str, version: float) -> Item:
    return Item(path, size=len(path), mtime=version, label=None)


# ----- the child --------------------------------------------------------------------------------------------

def child(root: str, name: str, seed: int) -> None:
    """Change the index forever (until killed): adds of new paths plus one replaced path, and removals."""
    store = IndexStore.open(root, name)
    rng = random.Random(seed)
    print("ready", store.count, flush=True)
    for step in range(10**9):
        live = store.paths()
        if rng.random() < 0.5 or len(live) < 30:
            batch = [item(f"s{seed}/{step}-{j}.png", 0.0) for j in range(4)] + [item(rng.choice(live), step + 1.0)]
            print("begin", store.count + 4, flush=True)
            store.add(batch, np.stack([vec_for(it.path, it.mtime) for it in batch]))
        else:
            print("begin", store.count - 3, flush=True)
            store.remove(rng.sample(live, 3))
        print("done", store.count, flush=True)


def child_create(root: str, name: str) -> None:
    paths = [f"new/{i}.png" for i in range(50)]
    IndexStore.create(root, name, IDENTITY, D, root, items=[item(p, 0.0) for p in paths],
                      vectors=np.stack([vec_for(p, 0.0) for p in paths]))
    print("created", flush=True)


# ----- the parent -------------------------------------------------------------------------------------------

def spawn(*args: str, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LOOKALIKE_CRASH_AT", None)
    if crash_at:
        env["LOOKALIKE_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env)


def allowed_counts(lines: list[str]) -> tuple[int, int | None]:
    """(last committed count, count of the change in flight or None) from the child's output."""
    committed, pending = None, None
    for line in lines:
        word, value = line.split()
        if word in ("ready", "done"):
            committed, pending = int(value), None
        elif word == "begin":
            pending = int(value)
    assert committed is not None, lines
    return committed, pending


def check(root: Path, name: str, counts: set[int]) -> IndexStore:
    """The index opens, its count is one of ``counts``, files agree, and every vector belongs to its row."""
    store = IndexStore.open(root, name, encoder_identity=IDENTITY)
    assert store.count in counts
    manifest = json.loads((root / name / "manifest.json").read_text())
    assert manifest["count"] == store.count
    assert all((root / name / f).is_file() for f in manifest["files"].values())
    paths, vecs = store.vectors()
    items = store.items()
    assert len(paths) == store.count == len(items)
    expected = np.stack([vec_for(p, items[p].mtime) for p in paths])
    np.testing.assert_allclose(vecs, expected, atol=1e-6)
    assert [h[0].path for h in store.search(expected[:40], 1)] == paths[:40]
    assert all(len(r) == min(5, store.count) for r in store.search(expected[-10:], 5))
    if manifest["index_type"] == "flat":
        assert store.tombstones == 0
    return store


@pytest.fixture(params=["flat", "hnsw"])
def index(request, tmp_path) -> tuple[Path, str]:
    paths = [f"base/{i}.png" for i in range(120)]
    IndexStore.create(tmp_path, "idx", IDENTITY, D, tmp_path, index_type=request.param,
                      items=[item(p, 0.0) for p in paths], vectors=np.stack([vec_for(p, 0.0) for p in paths]))
    return tmp_path, "idx"


def test_kill_at_random_moments(index):
    root, name = index
    rng = random.Random(1234)
    for seed in range(5):
        proc = spawn("child", str(root), name, str(seed))
        ready = proc.stdout.readline()
        assert ready.startswith("ready"), ready
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        lines = [ready] + proc.stdout.read().splitlines()
        committed, pending = allowed_counts(lines)
        check(root, name, {committed, pending} - {None})
    assert len(lines) > 3, "the child should have committed a few changes in up to a second"


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_kill_at_each_write_step(index, step):
    root, name = index
    generation = json.loads((root / name / "manifest.json").read_text())["generation"]
    proc = spawn("child", str(root), name, "7", crash_at=step)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 137, out
    committed, pending = allowed_counts(out.splitlines())
    assert pending is not None
    # Before the manifest is replaced the old version must be the one seen; after it, the new one.
    store = check(root, name, {pending if step == "manifest-replaced" else committed})
    # The crashed writer's files are garbage until the next writer removes them; nothing else is left behind.
    store.add([item("after/crash.png", 0.0)], vec_for("after/crash.png", 0.0)[None])
    manifest = store.manifest
    assert manifest["generation"] > generation
    assert sorted(p.name for p in (root / name).iterdir()) == sorted(
        [".lock", "manifest.json", *set(manifest["files"].values())])
    check(root, name, {pending + 1 if step == "manifest-replaced" else committed + 1})


def test_kill_during_first_build_leaves_no_index(tmp_path):
    proc = spawn("create", str(tmp_path), "fresh", crash_at="create-before-rename")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 137 and "created" not in out
    assert not (tmp_path / "fresh").exists() and list_indexes(tmp_path) == []
    with pytest.raises(IndexNotFoundError):
        IndexStore.open(tmp_path, "fresh")
    # A later build of the same name works (the half-built temp dir is ignored, and cleaned once stale).
    proc = spawn("create", str(tmp_path), "fresh")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "created" in out
    assert check(tmp_path, "fresh", {50}).count == 50


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        child_create(sys.argv[2], sys.argv[3])
