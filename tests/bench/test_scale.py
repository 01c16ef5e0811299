"""The pieces of bench/scale.py that decide its figures: the 1% of files it changes before the refresh (a refresh
must see exactly those), and the latency summary."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.scale import change_files, latency
from retrieval.workspace import Workspace


def test_the_changed_files_are_what_a_refresh_then_embeds_and_drops(tmp_path):
    folder = tmp_path / "col"
    rng = np.random.default_rng(0)
    for i in range(300):
        path = folder / f"class{i % 3}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
    ws = Workspace(tmp_path / "indexes")
    ws.build(folder, "pixels", "idx", progress=False)
    changes = change_files(folder, tmp_path / "work", "fashion")
    assert changes == {"added": 3, "changed": 3, "deleted": 3}
    report = ws.refresh("idx", progress=False)
    assert (report.added, report.removed, report.count) == (6, 3, 300)  # new + changed embedded, deleted dropped


def test_latency_summary():
    got = latency([float(ms) for ms in range(1, 101)])
    assert got["n"] == 100 and got["p50_ms"] == 50.5 and 94 <= got["p95_ms"] <= 96 and got["max_ms"] == 100
    assert got["meets_goal"] is True
    assert latency([150.0] * 3)["meets_goal"] is False and latency([])["n"] == 0
