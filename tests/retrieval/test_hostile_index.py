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

import numpy as np
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


def _tiny_run(tmp_path):
    """A training run folder (encoder.json + encoder.safetensors) of a tiny backbone, as `lookalike train` writes."""
    from safetensors.torch import save_file

    from retrieval.encoders import build_backbone, sha256_file

    run = tmp_path / "run"
    run.mkdir()
    model = build_backbone("resnet10t")
    save_file(model.state_dict(), str(run / "encoder.safetensors"))
    meta = {"format_version": 1, "kind": "run", "backbone": "resnet10t", "method": "simclr", "image_size": 32,
            "dim": model.num_features, "weights_sha256": sha256_file(run / "encoder.safetensors")}
    (run / "encoder.json").write_text(json.dumps(meta))
    return str(run)


def _encoder_specs():
    from retrieval.pretrained import available_pretrained

    specs = ["pixels", "random:resnet10t?size=32", "random:resnet10t?size=32&pool=grid", "run"]
    if available_pretrained():
        specs.append(available_pretrained()[0] + "?size=32")
    return specs


@pytest.mark.parametrize("spec", _encoder_specs())
def test_uniform_and_degenerate_pictures_index_with_every_encoder_kind(tmp_path, spec):
    """Black, white and grey pictures, 1x1 pixels, long thin strips and a fully transparent PNG beside ordinary
    photos: the build takes them all, and a black photo searched for finds the other black pictures first."""
    root = tmp_path / "c"
    uniform = hostile.write_uniform_folder(root)
    hostile.write_bytes(root / "photo-1.jpg", hostile.noisy_jpeg(seed=1))
    hostile.write_bytes(root / "photo-2.jpg", hostile.noisy_jpeg(seed=2))
    spec = _tiny_run(tmp_path) if spec == "run" else spec
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["index", "build", str(root), "--encoder", spec, "--name", "u", "--indexes",
                     str(tmp_path / "ix"), "--json"])
    assert code == 0, out.getvalue()
    report = json.loads(out.getvalue())
    assert report["count"] == len(uniform) + 2 and report["skipped"] == []
    ws = Workspace(tmp_path / "ix")
    hits = ws.search("u", root / "uniform" / "black.jpg", k=len(uniform) + 2)
    top = {h.path for h in hits if h.score >= 1 - 1e-4}
    assert hostile.BLACK_SET <= top, [(h.path, round(h.score, 4)) for h in hits]
    assert not top & {"photo-1.jpg", "photo-2.jpg"}
    _, vectors = ws.store("u").vectors()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_a_black_photo_finds_the_other_uniform_photos_with_pixels(tmp_path):
    """The pixels encoder correlates pixels: a picture with no contrast has none to correlate, so every uniform
    grey (black, white, grey, transparent) shares one direction, orthogonal to every picture with contrast."""
    root = tmp_path / "c"
    hostile.write_uniform_folder(root)
    hostile.write_bytes(root / "photo.jpg", hostile.noisy_jpeg(seed=1))
    ws = Workspace(tmp_path / "ix")
    ws.build(root, "pixels", "u", progress=False)
    scores = {h.path: h.score for h in ws.search("u", root / "uniform" / "black.jpg", k=20)}
    greys = hostile.BLACK_SET | {"uniform/white-scan.png", "uniform/grey.gif", "uniform/transparent.png"}
    assert all(scores[p] == pytest.approx(1.0, abs=1e-5) for p in greys)
    assert abs(scores["photo.jpg"]) < 1e-3  # nothing in common with a picture that has contrast
