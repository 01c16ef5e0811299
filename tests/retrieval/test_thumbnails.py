"""Thumbnails: small upright JPEGs, made once, keyed by the file's content identity, written atomically, swept."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from retrieval import fsutil
from retrieval.errors import BadImageError
from retrieval.thumbnails import THUMB_SIZE, ThumbnailCache, identity, make_thumbnail, thumbnail_dir
from tests import hostile


def _photo(path, size=(1200, 900), seed=0):
    im = Image.effect_noise(size, 40 + seed).convert("RGB")
    im.save(path, quality=90)
    return path


def _files(directory) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_a_thumbnail_is_a_small_upright_jpeg(tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbs")
    thumb = cache.get(_photo(tmp_path / "big.jpg"))
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size == (THUMB_SIZE, 192)
    assert thumb.stat().st_size < 40_000 < (tmp_path / "big.jpg").stat().st_size
    rotated = cache.get(hostile.write_exif_rotated_jpeg(tmp_path / "rotated.jpg", orientation=6))
    with Image.open(rotated) as im:
        assert im.size == (32, 64)  # small images are not enlarged; the EXIF rotation is applied
    assert thumb.parent.parent == cache.directory and thumbnail_dir(tmp_path) == tmp_path / ".thumbnails"


def test_made_once_then_served_from_the_cache(tmp_path, monkeypatch):
    cache = ThumbnailCache(tmp_path / "thumbs")
    photo = _photo(tmp_path / "p.jpg")
    first = cache.get(photo)
    monkeypatch.setattr("retrieval.thumbnails.make_thumbnail", lambda *a: pytest.fail("made twice"))
    assert cache.get(photo) == first


def test_an_edited_file_gets_a_new_thumbnail(tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbs")
    photo = _photo(tmp_path / "p.jpg")
    first = cache.get(photo)
    st = photo.stat()
    _photo(photo, seed=30)  # new content
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = cache.get(photo)
    assert second != first and identity(photo) in second.name
    assert first.read_bytes() != second.read_bytes()


def test_a_crash_before_the_rename_leaves_no_thumbnail(tmp_path, monkeypatch):
    cache = ThumbnailCache(tmp_path / "thumbs")
    photo = _photo(tmp_path / "p.jpg")

    def die(tmp, path):
        raise KeyboardInterrupt  # the process stops between writing the temporary and publishing it

    monkeypatch.setattr(fsutil, "publish", die)
    with pytest.raises(KeyboardInterrupt):
        cache.get(photo)
    assert not cache.path_of(identity(photo)).exists()
    monkeypatch.undo()
    assert Image.open(cache.get(photo)).size == (THUMB_SIZE, 192)


def test_a_file_that_does_not_decode_has_no_thumbnail(tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbs")
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        cache.get(hostile.write_truncated_jpeg(tmp_path / "t.jpg"))
    with pytest.raises(BadImageError, match="too large"):
        make_thumbnail(hostile.png_claiming_size(40000, 40000))
    assert not cache.directory.exists() or _files(cache.directory) == []


def test_sweep_drops_the_thumbnails_of_files_no_longer_live(tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbs")
    kept, gone, edited = (_photo(tmp_path / f"{n}.jpg", seed=i) for i, n in enumerate(("kept", "gone", "edited")))
    thumbs = {p.stem: cache.get(p) for p in (kept, gone, edited)}
    leftover = fsutil.temp_path(thumbs["kept"].with_name("dead.jpg"))
    leftover.write_bytes(b"half a thumbnail")  # a killed writer's temporary
    stranger = cache.directory / "README"
    stranger.write_text("not ours")
    assert cache.sweep([kept, gone, edited]) == 0  # all young: a sweep spares what was just made
    for f in (*thumbs.values(), leftover):
        os.utime(f, (1, 1))
    os.utime(edited, ns=(1, edited.stat().st_mtime_ns + 5))  # changed since its thumbnail was made
    assert cache.sweep([kept, edited, tmp_path / "never-existed.jpg"]) == 3
    assert thumbs["kept"].exists() and not thumbs["gone"].exists() and not thumbs["edited"].exists()
    assert not leftover.exists() and stranger.exists()
