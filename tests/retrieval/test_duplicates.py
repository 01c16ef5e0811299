"""Exact duplicates as their own tier, and the calibrated "same photo" threshold of an index."""

import shutil

import numpy as np
from PIL import Image

from retrieval.duplicates import FALLBACK_THRESHOLD, duplicate_threshold, exact_duplicates
from retrieval.workspace import Workspace


def test_exact_duplicate_tiers(tmp_path):
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    a.save(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "a-copy.png")  # same bytes
    a.save(tmp_path / "a.bmp")  # other bytes, same pixels
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "b.png")  # unrelated
    a.save(tmp_path / "a.jpg", quality=90)  # lossy: not exact
    groups = exact_duplicates(tmp_path, ["a.png", "a-copy.png", "a.bmp", "b.png", "a.jpg", "missing.png"])
    assert groups == [("same pixels", ["a-copy.png", "a.bmp", "a.png"]), ("same file", ["a-copy.png", "a.png"])]


def test_build_calibrates_a_same_photo_threshold(tmp_path, shapes_dir):
    ws = Workspace(tmp_path / "indexes")
    ws.build(shapes_dir, "pixels", "p", progress=False)
    cal = ws.info("p")["duplicates"]
    assert cal["precision"] == 0.9 and cal["precision_reached"] >= 0.9 and cal["copies"] == 36
    assert 0 < cal["recall"] <= 1 and -1 <= cal["threshold"] <= 1
    assert duplicate_threshold(ws.info("p")) == cal["threshold"]
    ws.build(shapes_dir, "pixels", "q", progress=False, calibrate=False)
    assert duplicate_threshold(ws.info("q")) == FALLBACK_THRESHOLD
