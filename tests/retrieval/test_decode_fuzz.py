"""Fuzzing the decoder: whatever bytes arrive, load_image returns an RGB image or raises BadImageError.

Anything else (a KeyError deep in a plugin, a MemoryError from a lying header, a hang) would crash a scan or
an embedding job over a real-world folder, so random bytes and mutated real files are thrown at it.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retrieval.errors import BadImageError
from retrieval.imageio import load_image, probe_image
from tests import hostile
from tests.phone import phone_bytes

# Pillow warns (rather than raises) about some recoverable damage, e.g. corrupt EXIF in a TIFF; that is fine.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_LIMIT = 4096 * 4096  # keep lying headers cheap to act on


@cache
def seeds() -> tuple[bytes, ...]:
    """Small valid files of every format the decoder accepts, to mutate."""
    rgb = Image.effect_noise((12, 9), 60).convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    frames = hostile.animation_frames()
    return (
        hostile.image_bytes(rgb, "PNG"),
        hostile.image_bytes(rgba, "PNG"),
        hostile.image_bytes(rgb, "JPEG", quality=80),
        hostile.image_bytes(rgb.convert("CMYK"), "JPEG"),
        hostile.image_bytes(rgb.convert("P"), "GIF", transparency=0),
        hostile.image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        hostile.image_bytes(rgb, "BMP"),
        hostile.image_bytes(rgb, "TIFF"),
        hostile.image_bytes(rgb, "WEBP", lossless=True),
        written_bytes(hostile.write_gray16_png),
        written_bytes(hostile.write_exif_rotated_jpeg),
        phone_bytes(rgb, "HEIF", quality=60),
        phone_bytes(rgb, "AVIF", quality=60, orientation=6),
    )


def written_bytes(writer) -> bytes:
    """The bytes a ``tests.hostile`` file writer produces."""
    with tempfile.TemporaryDirectory() as tmp:
        return writer(Path(tmp) / "f").read_bytes()


@st.composite
def mutated(draw) -> bytes:
    """A real file with a few bytes overwritten, a slice removed, a chunk inserted and/or the tail cut."""
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data) - 1))
        del data[start:start + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=32))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def check_decodes_or_refuses(data: bytes) -> None:
    try:
        im = load_image(data, max_pixels=FUZZ_LIMIT)
    except BadImageError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert im.mode == "RGB"
    assert im.width > 0 and im.height > 0 and im.width * im.height <= FUZZ_LIMIT
    im.getpixel((0, 0))  # pixels really are loaded


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    check_decodes_or_refuses(data)


@FUZZ
@given(st.sampled_from(seeds()).map(lambda b: b[:16]).flatmap(
    lambda magic: st.binary(max_size=1024).map(lambda rest: magic + rest)))
def test_real_magic_numbers_with_random_bodies(data):
    check_decodes_or_refuses(data)


@FUZZ
@given(mutated())
def test_mutated_real_files(data):
    check_decodes_or_refuses(data)


@settings(max_examples=60, deadline=None, database=None)
@given(mutated())
def test_probe_on_files_only_raises_bad_image(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzz.png")
        with open(path, "wb") as fp:
            fp.write(data)
        try:
            width, height, fmt = probe_image(path, max_pixels=FUZZ_LIMIT)
        except BadImageError:
            return
        assert width > 0 and height > 0 and fmt


def test_seeds_are_valid_images():
    for data in seeds():
        assert load_image(data).mode == "RGB"
