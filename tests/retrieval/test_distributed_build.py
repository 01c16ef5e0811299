"""``index build`` over two gloo processes (as ``torchrun --nproc-per-node 2`` starts it) writes the index a
one-process build writes: same items in the same order, same vectors, same skipped files, same manifest apart
from its timestamps; the second rank prints nothing. A job that cannot go on fails on every rank with one clear
message instead of hanging: ranks started with different encoders, a rank whose embedding breaks, an error of
rank 0's scan."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.cli import main
from retrieval import distributed
from retrieval.index_store import IndexStore
from retrieval.workspace import Workspace
from tests.hostile import write_truncated_jpeg

SPEC = "random:resnet10t?size=32"
WORLD = 2
GROUP_TIMEOUT = timedelta(seconds=90)  # a rank left waiting fails the test instead of hanging it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, argv_by_rank: list[list[str]], out: str, breaks: bool) -> None:
    """One rank, as torchrun starts it: its environment, then ``lookalike ARGV``; rc and output to files."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)  # joined here only for the shorter timeout
    distributed.GATHER_BYTES = 1  # one vector per gather step: the chunked gather runs many times
    if breaks and rank == 1:
        import retrieval.embed

        def broken(*args, **kwargs):
            raise RuntimeError("the disk went away")
        retrieval.embed.embed_collection = broken
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(argv_by_rank[rank])
    distributed.leave_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rc": rc, "stdout": stdout.getvalue(),
                                                         "stderr": stderr.getvalue(),
                                                         "threads": torch.get_num_threads()}))


def run_job(tmp_path: Path, argv_by_rank: list[list[str]], breaks: bool = False) -> list[dict]:
    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    mp.spawn(_rank_main, args=(free_port(), argv_by_rank, str(out), breaks), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture()
def folder(tmp_path, shapes_dir):
    """36 shapes, 3 more (so the shards differ in size) and a JPEG that only fails when decoded."""
    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    for i, src in enumerate(sorted(col.rglob("*.png"))[:3]):
        shutil.copy(src, col / f"extra-{i}.png")
    write_truncated_jpeg(col / "circle-0" / "cut.jpg")
    return col


def build_argv(folder: Path, indexes: Path, name: str, spec: str = SPEC) -> list[str]:
    return ["index", "build", str(folder), "--encoder", spec, "--name", name, "--indexes", str(indexes), "--json"]


def same_manifest(a: dict, b: dict) -> None:
    moments = {"created", "updated", "uid", "name", "files"}
    assert {k: v for k, v in a.items() if k not in moments} == {k: v for k, v in b.items() if k not in moments}


@pytest.mark.timeout(300)
def test_two_ranks_write_the_index_one_process_writes(tmp_path, folder):
    indexes = tmp_path / "indexes"
    ranks = run_job(tmp_path, [build_argv(folder, indexes, "two")] * WORLD)
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    assert ranks[1]["stdout"] == "" and ranks[1]["stderr"] == ""  # only rank 0 reports (and --json: no progress)
    assert [r["threads"] for r in ranks] == [max(1, distributed_cpus() // WORLD)] * WORLD
    report = json.loads(ranks[0]["stdout"])
    Workspace(indexes).build(folder, SPEC, "one", progress=False)

    two, one = IndexStore.open(indexes, "two"), IndexStore.open(indexes, "one")
    assert report["count"] == one.count == two.count == 39
    assert [s["path"] for s in report["skipped"]] == ["circle-0/cut.jpg"]  # rank-local decode failure, reported
    assert two.items() == one.items() and two.paths() == one.paths()
    assert two.skipped() == one.skipped()
    paths_two, vecs_two = two.vectors()
    paths_one, vecs_one = one.vectors()
    assert paths_two == paths_one
    np.testing.assert_allclose(vecs_two, vecs_one, rtol=1e-5, atol=1e-6)
    assert np.abs(vecs_one).sum() > 0
    # the FAISS rows are in scan order too: a search returns the same items with the same scores
    hits_two, hits_one = two.search(vecs_one[:5], 4), one.search(vecs_one[:5], 4)
    assert [[h.path for h in q] for q in hits_two] == [[h.path for h in q] for q in hits_one]
    same_manifest(two.manifest, one.manifest)


def distributed_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["other encoder", "a rank breaks", "index exists"])
def test_a_job_that_cannot_go_on_fails_on_every_rank_with_one_message(tmp_path, folder, case):
    indexes = tmp_path / "indexes"
    argv = [build_argv(folder, indexes, "idx")] * WORLD
    if case == "other encoder":
        argv = [argv[0], build_argv(folder, indexes, "idx", spec=SPEC + "&seed=1")]
    if case == "index exists":
        Workspace(indexes).build(folder, "pixels", "idx", progress=False)
    ranks = run_job(tmp_path, argv, breaks=case == "a rank breaks")
    expected = {"other encoder": "rank 1 was started with another encoder than rank 0",
                "a rank breaks": "rank 1 of 2 failed: RuntimeError: the disk went away",
                "index exists": "index 'idx' already exists"}[case]
    for r in ranks:
        assert r["rc"] == 2 and r["stdout"] == "", ranks
        assert r["stderr"].startswith("error: ") and expected in r["stderr"], r["stderr"]
    if case == "index exists":  # left as it was
        assert IndexStore.open(indexes, "idx").manifest["encoder"]["kind"] == "pixels"
    else:  # nothing written, not even a half index
        assert not indexes.exists() or not list(indexes.iterdir())


@pytest.mark.timeout(300)
def test_uniform_pictures_build_under_two_ranks(tmp_path, folder):
    """A black JPEG, a blank scan, 1x1 pixels, thin strips and a transparent PNG in the folder: the two-rank
    pixels build takes them all and writes what one process writes."""
    from tests.hostile import BLACK_SET, write_uniform_folder

    uniform = write_uniform_folder(folder)
    indexes = tmp_path / "indexes"
    ranks = run_job(tmp_path, [build_argv(folder, indexes, "two", spec="pixels")] * WORLD)
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    assert json.loads(ranks[0]["stdout"])["count"] == 39 + len(uniform)
    Workspace(indexes).build(folder, "pixels", "one", progress=False)
    (paths_two, vecs_two), (paths_one, vecs_one) = (IndexStore.open(indexes, n).vectors() for n in ("two", "one"))
    assert paths_two == paths_one
    np.testing.assert_allclose(vecs_two, vecs_one, rtol=1e-5, atol=1e-6)
    hits = Workspace(indexes).search("two", folder / "uniform" / "black.jpg", k=10)
    assert BLACK_SET <= {h.path for h in hits if h.score >= 1 - 1e-4}
