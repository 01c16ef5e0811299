"""A refresh reads the headers of new and changed files only: a file with the size and modification time it was
indexed with is an item without being opened again (at 100,000 photos the header reads were most of a refresh's
scan), and the refresh still finds every new, changed, deleted and newly broken file."""

from __future__ import annotations

import os
import shutil

import pytest

from retrieval import collection as collection_module
from retrieval.collection import scan
from retrieval.workspace import Workspace
from tests.hostile import write_text


def test_refresh_probes_only_new_and_changed_files(tmp_path, shapes_dir, monkeypatch):
    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    ws = Workspace(tmp_path / "indexes")
    ws.build(col, "pixels", "idx", progress=False)
    files = sorted(col.rglob("*.png"))
    shutil.copy(files[0], col / "new.png")
    changed = files[1]
    shutil.copy(files[2], changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, whatever the clock's grain
    files[3].unlink()
    broken = files[4]
    write_text(broken)  # was an image, now text under the same name: must be probed and dropped

    probed = []
    real = collection_module.probe_image
    monkeypatch.setattr(collection_module, "probe_image", lambda path, *a: probed.append(path) or real(path, *a))
    report = ws.refresh("idx", progress=False)

    rel = {p.relative_to(col).as_posix() for p in (col / "new.png", changed, broken)}
    assert {os.path.relpath(p, col) for p in probed} == rel
    assert (report.added, report.removed, report.count) == (2, 2, 35)
    assert [s.path for s in report.skipped] == [broken.relative_to(col).as_posix()]
    # the same folder scanned from nothing agrees with what the refresh left in the index
    assert sorted(ws.store("idx").items()) == [it.path for it in scan(col).items]


def _no_model(monkeypatch):
    """Make building any encoder (or decoding any image for embedding) fail the test."""
    from retrieval import workspace as workspace_module

    def refuse(*args, **kwargs):
        raise AssertionError("the refresh built an encoder")
    monkeypatch.setattr(workspace_module, "load_encoder", refuse)


def test_an_unchanged_folder_refreshes_without_a_model_a_decode_or_a_write(tmp_path, shapes_dir, monkeypatch):
    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    write_text(col / "broken.png")  # a skipped file stays skipped, and is not a change
    built = Workspace(tmp_path / "indexes")
    built.build(col, "random:resnet10t?size=32", "idx", progress=False)
    manifest = (tmp_path / "indexes" / "idx" / "manifest.json").read_bytes()

    _no_model(monkeypatch)
    probed = []
    real = collection_module.probe_image
    monkeypatch.setattr(collection_module, "probe_image", lambda path, *a: probed.append(path) or real(path, *a))
    report = Workspace(tmp_path / "indexes").refresh("idx", progress=False)

    assert [os.path.relpath(p, col) for p in probed] == ["broken.png"]  # only the file that was skipped is read

    assert (report.added, report.removed, report.count) == (0, 0, 36)
    assert [(s.path, s.reason) for s in report.skipped] == [(s.path, s.reason) for s in built.store("idx").skipped()]
    assert report.encoder == built.store("idx").manifest["encoder"]
    assert (tmp_path / "indexes" / "idx" / "manifest.json").read_bytes() == manifest  # no new generation


def test_one_changed_file_is_the_only_one_embedded(tmp_path, shapes_dir, monkeypatch):
    from retrieval import embed as embed_module

    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    ws = Workspace(tmp_path / "indexes")
    ws.build(col, "random:resnet10t?size=32", "idx", progress=False)
    files = sorted(col.rglob("*.png"))
    shutil.copy(files[0], files[1])
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    embedded = []
    real = embed_module.embed_collection
    monkeypatch.setattr(embed_module, "embed_collection",
                        lambda enc, col_, paths=None, **kw: embedded.append(paths) or real(enc, col_, paths, **kw))
    report = Workspace(tmp_path / "indexes").refresh("idx", progress=False)

    assert embedded == [[files[1].relative_to(col).as_posix()]]
    assert (report.added, report.removed, report.count) == (1, 0, 36)
    assert ws.search("idx", files[0], k=2)[1].score == pytest.approx(1.0, abs=1e-4)  # the copy is found as itself


def test_a_folder_that_only_lost_files_refreshes_without_a_model(tmp_path, shapes_dir, monkeypatch):
    col = tmp_path / "col"
    shutil.copytree(shapes_dir, col)
    Workspace(tmp_path / "indexes").build(col, "random:resnet10t?size=32", "idx", progress=False)
    gone = sorted(col.rglob("*.png"))[:2]
    for f in gone:
        f.unlink()

    _no_model(monkeypatch)
    ws = Workspace(tmp_path / "indexes")
    report = ws.refresh("idx", progress=False)

    assert (report.added, report.removed, report.count) == (0, 2, 34)
    assert not {f.relative_to(col).as_posix() for f in gone} & set(ws.store("idx").items())
