"""The pure pieces of the real-photo benchmarks: the IDX reader, the textured composites, the copy edits, the rows.

None of these needs the Tux Paint stamps or Fashion-MNIST: the files they read are written here."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from bench import photos
from bench.datasets import COPY_EDITS as EDITS
from bench.datasets import COPY_SINGLE as SINGLE
from bench.datasets import composite_on_texture, read_idx, subsample
from bench.datasets import copy_edit as edit
from bench.datasets import copy_query_edit as query_edit
from bench.datasets import copy_split_photos as split_photos
from retrieval.errors import LookalikeError


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def test_read_idx_reads_plain_and_gzipped_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    labels = np.array([3, 1, 4], np.uint8)
    (tmp_path / "l.idx").write_bytes(_idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.idx"), labels)


@pytest.mark.parametrize("damage", ["magic", "type", "short"])
def test_read_idx_refuses_a_damaged_file(tmp_path, damage):
    data = bytearray(_idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    if damage == "magic":
        data[0] = 1
    elif damage == "type":
        data[2] = 0x0D  # float32
    else:
        data = data[:-1]
    (tmp_path / "x.idx").write_bytes(bytes(data))
    with pytest.raises(LookalikeError):
        read_idx(tmp_path / "x.idx")


def test_subsample_is_seeded_sorted_and_keeps_all_without_a_limit():
    a, b = subsample(100, 10, seed=0, salt=1), subsample(100, 10, seed=0, salt=1)
    np.testing.assert_array_equal(a, b)
    assert len(set(a)) == 10 and list(a) == sorted(a)
    assert not np.array_equal(a, subsample(100, 10, seed=1, salt=1))
    np.testing.assert_array_equal(subsample(5, None, 0, 0), np.arange(5))


@pytest.fixture()
def stamp(tmp_path):
    """A 60×40 red ellipse with alpha outside it, filed like a stamp (category/name.png)."""
    rgba = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    from PIL import ImageDraw

    ImageDraw.Draw(rgba).ellipse((0, 0, 59, 39), fill=(250, 0, 0, 255))
    path = tmp_path / "fruit" / "apple.png"
    path.parent.mkdir()
    rgba.save(path)
    return path


def test_textured_composite_is_seeded_and_keeps_the_object(stamp):
    a = np.asarray(composite_on_texture(stamp, 96, seed=0))
    assert a.shape == (96, 96, 3)
    np.testing.assert_array_equal(a, np.asarray(composite_on_texture(stamp, 96, seed=0)))
    assert not np.array_equal(a, np.asarray(composite_on_texture(stamp, 96, seed=1)))
    red = (a[..., 0] > 240) & (a[..., 1] < 10) & (a[..., 2] < 10)
    assert red.mean() > 0.15  # the ellipse, 55-85% of the side, is there


def test_copy_edits_are_deterministic_and_change_the_image(stamp):
    img = composite_on_texture(stamp, 128, seed=0)
    for i, kind in enumerate(EDITS):
        assert query_edit(i, 0)[0] == kind
        a = np.asarray(edit(img, kind, query_edit(i, 0)[1]))
        np.testing.assert_array_equal(a, np.asarray(edit(img, kind, query_edit(i, 0)[1])))
        assert a.shape != np.asarray(img).shape or not np.array_equal(a, np.asarray(img)), kind
    assert set(SINGLE) < set(EDITS) and "combo" in EDITS


def test_crop_keeps_30_to_70_percent_of_the_area():
    img = Image.new("RGB", (200, 160))
    for i in range(50):
        w, h = SINGLE["crop"](img, np.random.default_rng(i)).size
        assert 0.28 <= w * h / (200 * 160) <= 0.72


def test_split_is_a_seeded_partition():
    paths = list(range(40))
    refs, distractors, unseen = split_photos(paths, seed=0)
    assert (len(refs), len(distractors), len(unseen)) == (20, 10, 10)
    assert sorted(refs + distractors + unseen) == paths
    assert split_photos(paths, seed=0) == (refs, distractors, unseen)
    assert split_photos(paths, seed=1)[0] != refs


def test_rows_follow_the_method_registry():
    from training.methods import METHODS

    rows = photos.plan(photos.GROUPS, photos.trainable_methods())
    scratch = [r.train["method"] for r in rows if r.group == "scratch"]
    assert scratch == [m for m in METHODS if m != "distill"]
    assert all(r.train.get("init") == photos.PRETRAINED for r in rows if r.group == "pretrained")
    assert [r.spec for r in rows if r.group == "baselines"][0] == "pixels"
    assert [r.name for r in photos.plan(["baselines"], ["simclr"])] == [r.name for r in rows[:4]]


def test_a_row_needing_a_missing_trainer_feature_says_so():
    photos.check_trainer({"method": "simclr"})
    with pytest.raises(photos.NeedsTrainerFeature, match="needs --method"):
        photos.check_trainer({"method": "no-such-method"})


def test_lightly_from_pretrained_is_refused_with_the_reason_when_the_peer_takes_no_init(monkeypatch, tmp_path):
    import types

    calls = []

    def train_lightly(method, data_dir, out, *, backbone, stem, image_size, batch_size, minutes, progress):
        calls.append(method)
        return out

    monkeypatch.setattr(photos, "peers_or_reason", lambda: (types.SimpleNamespace(train_lightly=train_lightly), None))
    row = next(r for r in photos.plan(["lightly"], []) if "init" in r.peer)
    with pytest.raises(photos.NeedsTrainerFeature, match="takes no init"):
        photos.train_peer_row(row, tmp_path, tmp_path / "run", 0.1)
    assert calls == []


def test_lightly_from_pretrained_gets_the_init_and_the_fine_tuning_batch(monkeypatch, tmp_path):
    import types

    from training.settings import FINETUNE_DEFAULTS, setting

    calls = []

    def train_lightly(method, data_dir, out, *, batch_size, minutes, progress, init=None, backbone=None,
                      stem=None, image_size=None):
        calls.append({"method": method, "batch_size": batch_size, "init": init, "backbone": backbone,
                      "image_size": image_size})
        return out

    monkeypatch.setattr(photos, "peers_or_reason", lambda: (types.SimpleNamespace(train_lightly=train_lightly), None))
    scratch, from_init = photos.plan(["lightly"], [])
    photos.train_peer_row(from_init, tmp_path, tmp_path / "a", 0.1)
    photos.train_peer_row(scratch, tmp_path, tmp_path / "b", 0.1)
    assert calls[0] == {"method": "simclr", "batch_size": FINETUNE_DEFAULTS["batch_size"], "init": photos.PRETRAINED,
                        "backbone": None, "image_size": None}  # the rest comes from the init, as in our trainer
    assert calls[1] == {"method": "simclr", "batch_size": setting("batch_size").default, "init": None,
                        "backbone": setting("backbone").default, "image_size": setting("image_size").default}


def test_goals_compare_rows_on_every_headline_metric():
    def row(group, a, b, speed=10.0):
        return {"group": group, "m1": a, "m2": b, "images_per_s": speed}

    rows = {"pixels": row("baselines", 0.2, 0.2), "random:resnet10t": row("baselines", 0.1, 0.3),
            "timm:x": row("baselines", 0.5, 0.5, speed=10.0), "simclr": row("scratch", 0.3, 0.25),
            "simclr from x": row("pretrained", 0.6, 0.55), "distill from x": row("distill", 0.48, 0.5, speed=40.0),
            "lightly-simclr": row("lightly", 0.3, 0.2), "lightly-simclr from x": {"group": "lightly", "skipped": "no"}}
    g = photos.goals(rows, ("m1", "m2"), "timm:x", "timm:x")
    assert g["best_trained"] == "simclr from x" and g["best_beats_pretrained"] is True
    assert g["scratch_beat_pixels_and_random"]["simclr"] == {"pixels": True, "random": False}
    assert g["distill_vs_teacher"] == {"m1": 0.96, "m2": 1.0, "speed": 4.0}
    assert g["vs_lightly"] == {"lightly-simclr": True, "lightly-simclr from x": None}


def test_parts_run_apart_merge_into_one_result_in_table_order_the_last_part_winning(monkeypatch, tmp_path):
    import json

    from bench import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    settings = {"methods": ["simclr"], "pretrained": "timm:x", "teacher": "timm:x", "groups": [], "seed": 0}

    def part(name, rows):
        common.save_result(photos.part_name("bench", name), {"rows": rows}, **{**settings, "groups": [name]})

    part("b", {"simclr from x": {"group": "pretrained", "m": 0.6}, "lightly-simclr": {"group": "lightly", "m": 0.2}})
    part("a", {"pixels": {"group": "baselines", "m": 0.1}, "timm:x": {"group": "baselines", "m": 0.5},
               "simclr": {"group": "scratch", "m": 0.3}})
    ap = photos.photo_parser("t")
    assert photos.run_benchmark("bench", ap.parse_args(["--merge", "b", "a", "--json"]), None, None, ("m",), ("m",),
                                "t") == 0
    merged = json.loads((tmp_path / "bench.json").read_text())
    assert list(merged["figures"]["rows"]) == ["pixels", "timm:x", "simclr", "simclr from x", "lightly-simclr"]
    assert merged["figures"]["goals"]["best_trained"] == "simclr from x"
    assert merged["figures"]["goals"]["best_beats_pretrained"] is True  # judged across the parts
    assert set(merged["settings"]["merged_from"]) == {"a", "b"}
    assert merged["figures"]["rows"]["pixels"]["part"] == "a" and merged["settings"]["replaced_rows"] == {}
    part("c", {"simclr from x": {"group": "pretrained", "m": 0.4}})  # a row run again: the last part named wins
    photos.run_benchmark("bench", ap.parse_args(["--merge", "a", "b", "c", "--json"]), None, None, ("m",), ("m",),
                         "t")
    merged = json.loads((tmp_path / "bench.json").read_text())
    assert merged["figures"]["rows"]["simclr from x"] == {"group": "pretrained", "m": 0.4, "part": "c"}
    assert merged["settings"]["replaced_rows"] == {"simclr from x": "part b replaced by part c"}
    assert merged["figures"]["goals"]["best_beats_pretrained"] is False  # judged on the row that replaced it
    with pytest.raises(SystemExit, match="missing"):
        photos.run_benchmark("bench", ap.parse_args(["--merge", "a", "z"]), None, None, ("m",), ("m",), "t")
