"""The one atomic write and timestamp (retrieval.fsutil) and the run format's readers (retrieval.runformat)."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from retrieval import fsutil, runformat
from retrieval.errors import CheckpointError


def test_a_write_that_dies_before_the_replace_leaves_the_old_content(tmp_path):
    target = tmp_path / "manifest.json"
    fsutil.atomic_write_json(target, {"generation": 1})

    def dies():
        raise SystemExit("killed")

    with pytest.raises(SystemExit):
        fsutil.atomic_write_json(target, {"generation": 2}, before_replace=dies)
    assert json.loads(target.read_text()) == {"generation": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # the temporary went with it


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors via /proc")
def test_the_data_and_then_the_folder_reach_the_disk(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    fsutil.atomic_write_bytes(tmp_path / "w.bin", b"data")
    tmp = str(fsutil.temp_path(tmp_path / "w.bin"))
    assert events == [f"fsync {tmp}", "replace", f"fsync {tmp_path}"]
    assert (tmp_path / "w.bin").read_bytes() == b"data"


def test_temporaries_are_named_per_process_and_thread_and_recognised(tmp_path):
    main = fsutil.temp_path(tmp_path / "state.pt")
    assert main.name == f".state.pt.tmp-{os.getpid()}" and main.parent == tmp_path
    other: list[Path] = []
    thread = threading.Thread(target=lambda: other.append(fsutil.temp_path(tmp_path / "state.pt")))
    thread.start()
    thread.join()
    assert other[0] != main and other[0].name.startswith(main.name + "-")
    assert fsutil.is_temp(main.name, of="state.pt") and fsutil.is_temp(other[0].name, of="state.pt")
    assert not fsutil.is_temp(main.name, of="encoder.json") and not fsutil.is_temp("state.pt")
    assert runformat.is_run_temporary(main.name) and not runformat.is_run_temporary(".notes.txt.tmp-12")


def test_now_iso_is_utc_to_the_second():
    stamp = datetime.fromisoformat(fsutil.now_iso())
    assert stamp.utcoffset().total_seconds() == 0 and stamp.microsecond == 0
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60


def test_json_is_written_as_the_project_writes_it(tmp_path):
    fsutil.atomic_write_json(tmp_path / "a.json", {"b": 1, "a": Path("x")}, sort_keys=True, default=str)
    assert (tmp_path / "a.json").read_text() == '{\n  "a": "x",\n  "b": 1\n}\n'


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    (tmp_path / runformat.METRICS).write_text('{"step": 1, "loss": 2.0}\n{"step": 2}\n{"step": 3, "lo')
    assert runformat.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2}]
    assert runformat.read_metrics(tmp_path / "missing") == []


def test_read_meta_and_the_validated_manifest(tmp_path):
    assert runformat.read_meta(tmp_path) is None
    with pytest.raises(CheckpointError, match="has no encoder.json"):
        runformat.read_run_manifest(tmp_path)
    (tmp_path / runformat.META).write_text("[1, 2]")
    assert runformat.read_meta(tmp_path) is None
    with pytest.raises(CheckpointError, match="not a JSON object"):
        runformat.read_run_manifest(tmp_path)
    meta = {"format_version": runformat.FORMAT_VERSION, "backbone": "resnet10t", "image_size": 64, "dim": 512,
            "weights_sha256": "0" * 64}
    (tmp_path / runformat.META).write_text(json.dumps(meta))
    assert runformat.read_meta(tmp_path) == runformat.read_run_manifest(tmp_path) == meta
