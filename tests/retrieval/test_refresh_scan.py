"""A refresh reads the headers of new and changed files only: a file with the size and modification time it was
indexed with is an item without being opened again (at 100,000 photos the header reads were most of a refresh's
scan), and the refresh still finds every new, changed, deleted and newly broken file."""

from __future__ import annotations

import os
import shutil

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
