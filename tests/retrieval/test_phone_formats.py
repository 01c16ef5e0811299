"""HEIC/HEIF and AVIF phone photos, as their plugins write them: decoded upright in scanning, indexing and queries,
and refused with a reason when truncated, mislabelled or claiming huge dimensions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.collection import scan
from retrieval.errors import BadImageError
from retrieval.imageio import IMAGE_EXTENSIONS, MAX_PIXELS, load_image, probe_image
from retrieval.workspace import Workspace
from tests import hostile
from tests.phone import FORMATS, claiming_size, phone_bytes, quadrants, write

RED, BLUE = (220, 20, 20), (20, 20, 220)
PHONE = pytest.mark.parametrize("fmt", list(FORMATS))


def near(px, colour, tol=30) -> bool:
    return bool(np.all(np.abs(np.asarray(px, int) - np.asarray(colour, int)) <= tol))


def reason_of(source, **kwargs) -> str:
    with pytest.raises(BadImageError) as info:
        load_image(source, **kwargs)
    return info.value.reason


def test_phone_extensions_are_scanned():
    assert {".heic", ".heif", ".avif"} <= IMAGE_EXTENSIONS


@PHONE
def test_a_phone_photo_decodes_from_a_path_or_bytes(tmp_path, fmt):
    data = phone_bytes(quadrants(), fmt)
    path = write(tmp_path / f"p{FORMATS[fmt]}", data)
    assert probe_image(path) == (64, 32, fmt)
    for im in (load_image(path), load_image(data)):
        px = np.asarray(im)
        assert im.mode == "RGB" and im.size == (64, 32)
        assert near(px[8, 8], RED) and near(px[24, 48], BLUE)


@PHONE
@pytest.mark.parametrize("orientation, red_corner", [(1, "top-left"), (3, "bottom-right"), (6, "top-right"),
                                                      (8, "bottom-left")])
def test_exif_orientation_is_applied_once(fmt, orientation, red_corner):
    im = load_image(phone_bytes(quadrants(), fmt, orientation=orientation))
    assert im.size == ((32, 64) if orientation >= 5 else (64, 32))
    w, h = im.size
    px = np.asarray(im)
    corners = {"top-left": px[h // 8, w // 8], "top-right": px[h // 8, w - 1 - w // 8],
               "bottom-left": px[h - 1 - h // 8, w // 8], "bottom-right": px[h - 1 - h // 8, w - 1 - w // 8]}
    assert [name for name, value in corners.items() if near(value, RED)] == [red_corner]


@PHONE
def test_a_truncated_phone_photo_is_refused_with_a_reason(fmt):
    data = phone_bytes(Image.effect_noise((96, 64), 60).convert("RGB"), fmt)
    assert reason_of(data[:-10]).startswith("truncated or corrupt image")
    assert reason_of(data[:40]) == "not an image"


@PHONE
def test_huge_declared_dimensions_are_refused_before_decoding(tmp_path, fmt):
    data = phone_bytes(quadrants(), fmt)
    bomb = write(tmp_path / f"bomb{FORMATS[fmt]}", claiming_size(data, 40000, 40000))
    expected = f"too large: 40000x40000 pixels exceeds limit of {MAX_PIXELS}"
    assert reason_of(bomb) == expected
    with pytest.raises(BadImageError, match=expected):
        probe_image(bomb)
    assert reason_of(claiming_size(data, 12000, 8000)).startswith("too large: 12000x8000 pixels")


@PHONE
def test_mislabelled_files_are_judged_by_their_content(tmp_path, fmt):
    as_jpeg = write(tmp_path / "really-a-phone-photo.jpg", phone_bytes(quadrants(), fmt))
    assert load_image(as_jpeg).size == (64, 32)
    jpeg_named_phone = write(tmp_path / f"really-a-jpeg{FORMATS[fmt]}", hostile.noisy_jpeg())
    assert load_image(jpeg_named_phone).size == (64, 64)
    for bad, reason in ((hostile.write_random(tmp_path / f"random{FORMATS[fmt]}"), "not an image"),
                        (hostile.write_text(tmp_path / f"text{FORMATS[fmt]}"), "not an image"),
                        (write(tmp_path / f"empty{FORMATS[fmt]}", b""), "empty file")):
        assert reason_of(bad) == reason


def test_a_folder_of_phone_photos_is_indexed_and_searched(tmp_path):
    photos = tmp_path / "phone"
    rng = np.random.default_rng(0)
    made = []
    for i in range(3):
        for fmt, ext in FORMATS.items():
            im = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((64, 48))
            made.append(write(photos / f"{i}{ext}", phone_bytes(im, fmt, orientation=6 if i == 0 else None)))
    write(photos / "broken.heic", phone_bytes(quadrants(), "HEIF")[:-10])
    collection = scan(photos)
    assert sorted(it.path for it in collection.items) == sorted(p.name for p in made) + ["broken.heic"]
    ws = Workspace(tmp_path / "indexes")
    report = ws.build(photos, "pixels", "phone", progress=False)
    assert report.count == 6
    assert [(s.path, s.reason.split(":")[0]) for s in report.skipped] == [("broken.heic", "truncated or corrupt image")]
    for query in made:
        hits = ws.search("phone", query.read_bytes(), k=2)
        assert hits[0].path == query.name and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_the_plugins_runtime_errors_become_reasons_and_only_theirs(monkeypatch):
    """libheif and libavif report damage as RuntimeError; from any other plugin it stays a bug worth seeing."""
    from PIL import AvifImagePlugin, PngImagePlugin
    from pillow_heif.as_plugin import HeifImageFile

    def broken(self):
        raise RuntimeError("Failed to decode image: Not implemented")

    for cls in (HeifImageFile, AvifImagePlugin.AvifImageFile, PngImagePlugin.PngImageFile):
        monkeypatch.setattr(cls, "load", broken)
    for fmt in FORMATS:
        assert reason_of(phone_bytes(quadrants(), fmt)) == \
            "truncated or corrupt image: Failed to decode image: Not implemented"
    with pytest.raises(RuntimeError):
        load_image(hostile.solid_png())
