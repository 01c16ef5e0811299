"""The hostile folder end to end: indexed with the CLI, searched with each of its files, refreshed after damage.

Good files become items, bad ones are reported with their reason (including a JPEG that only fails when its
pixels are decoded), nothing crashes, a bad query image fails with a clear reason, and only items of the index
resolve to files that may be served.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from app.cli import main
from retrieval.errors import BadImageError, LookalikeError
from retrieval.workspace import Workspace
from tests import hostile
from tests.hostile import IGNORED, ITEM, OK

TRUNCATED = "bad/truncated.jpg"  # passes the header scan, fails when embedded


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(indexes root, collection root, expectations, CLI report): the hostile folder indexed as 'hostile'."""
    tmp = tmp_path_factory.mktemp("hostile_index")
    root = tmp / "collection"
    expect = hostile.make_hostile_folder(root, fifo=True)
    indexes = tmp / "indexes"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["index", "build", str(root), "--encoder", "pixels", "--name", "hostile", "--indexes",
                     str(indexes), "--json"])
    assert code == 0, out.getvalue()
    return indexes, root, expect, json.loads(out.getvalue())


def test_good_files_are_indexed_and_bad_ones_reported_with_a_reason(built):
    indexes, root, expect, report = built
    good = {rel for rel, e in expect.items() if e.scan == ITEM} - {TRUNCATED}
    bad = {rel: e.scan for rel, e in expect.items() if e.scan not in (ITEM, IGNORED)}
    bad[TRUNCATED] = "truncated or corrupt image"

    store = Workspace(indexes).store("hostile")
    assert set(store.paths()) == good and report["count"] == len(good)
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(bad)
    for rel, start in bad.items():
        assert reasons[rel].startswith(start), (rel, reasons[rel])
    assert {s.path: s.reason for s in store.skipped()} == reasons  # kept with the index, for the UI


def test_each_good_file_finds_itself_and_each_bad_query_says_why(built):
    indexes, root, expect, _ = built
    ws = Workspace(indexes)
    items = set(ws.store("hostile").paths())
    checked_good = checked_bad = 0
    for rel, e in expect.items():
        if e.load is None:
            continue
        if e.load == OK:
            hits = ws.search("hostile", root / rel, k=10)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4), rel
            if rel in items:  # identical images (solid red in several files) tie at the top
                assert rel in {h.path for h in hits if h.score >= hits[0].score - 1e-4}, rel
            checked_good += 1
        else:
            with pytest.raises(BadImageError) as info:
                ws.search("hostile", root / rel, k=3)
            assert info.value.reason.startswith(e.load), (rel, info.value.reason)
            checked_bad += 1
    assert checked_good >= 12 and checked_bad >= 8


def test_a_file_that_stops_decoding_is_dropped_on_refresh(tmp_path):
    root = tmp_path / "c"
    hostile.write_bytes(root / "a.png", hostile.solid_png(hostile.RED))
    hostile.write_bytes(root / "b.jpg", hostile.noisy_jpeg(seed=4))
    ws = Workspace(tmp_path / "ix")
    ws.build(root, "pixels", "idx", progress=False)
    assert ws.store("idx").paths() == ["a.png", "b.jpg"]

    hostile.write_truncated_jpeg(root / "b.jpg")  # same name, damaged: header fine, pixels cut off
    t = os.stat(root / "b.jpg").st_mtime + 10
    os.utime(root / "b.jpg", (t, t))
    report = ws.refresh("idx", progress=False)
    store = ws.store("idx")
    assert store.paths() == ["a.png"]  # not left in the index with the vector of its old content
    assert [(s.path, s.reason.split(":")[0]) for s in report.skipped] == [("b.jpg", "truncated or corrupt image")]
    assert [s.path for s in store.skipped()] == ["b.jpg"]


def test_only_items_of_the_index_resolve_to_files(built):
    indexes, root, _, _ = built
    ws = Workspace(indexes)
    assert ws.resolve("hostile", "good/cmyk.jpg") == root / "good" / "cmyk.jpg"
    for not_an_item in ("../indexes/hostile/manifest.json", "/etc/passwd", "good/../plain.png", "bad/empty.jpg",
                        TRUNCATED, ".hidden.png", "folder.jpg", "missing.png", ""):
        with pytest.raises(LookalikeError, match="is not an item of index"):
            ws.resolve("hostile", not_an_item)


def test_files_outside_the_collection_cannot_be_added(built, tmp_path):
    indexes, root, _, _ = built
    outside = hostile.write_bytes(tmp_path / "elsewhere.png", hostile.solid_png(hostile.BLUE))
    ws = Workspace(indexes)
    before = ws.store("hostile").paths()
    for path in (outside, "/etc/passwd"):
        with pytest.raises(LookalikeError, match="is not inside the indexed collection"):
            ws.add("hostile", [path], progress=False)
    assert ws.store("hostile").paths() == before
