"""load_image / probe_image: every awkward file decodes to the right RGB pixels or fails with the right reason."""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from retrieval.errors import BadImageError, LookalikeError
from retrieval.imageio import IMAGE_EXTENSIONS, MAX_PIXELS, is_image_path, load_image, probe_image
from tests import hostile
from tests.hostile import BLUE, GREEN, OK, RED, WHITE


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def near(actual, expected, tol=6) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, int) - np.asarray(expected, int)) <= tol))


def reason_of(source, **kwargs) -> str:
    with pytest.raises(BadImageError) as info:
        load_image(source, **kwargs)
    return info.value.reason


# ----------------------------------------------------------------------------------------- sources


def test_constants_match_the_spec():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif",
                                ".avif"}
    assert MAX_PIXELS == 89_478_485
    assert is_image_path("a/B.JPEG") and not is_image_path("notes.txt") and not is_image_path("png")


def test_path_str_bytes_fileobj_and_pil_give_the_same_pixels(tmp_path):
    path = hostile.write_bytes(tmp_path / "red.png", hostile.solid_png(RED, (5, 3)))
    data = path.read_bytes()
    with open(path, "rb") as fp:
        from_fileobj = load_image(fp)
        assert not fp.closed  # the caller's file stays the caller's
    with Image.open(path) as opened:
        from_pil = load_image(opened)
    for im in (load_image(path), load_image(str(path)), load_image(data), load_image(bytearray(data)),
               from_fileobj, from_pil):
        assert im.size == (5, 3)
        assert (pixels(im) == RED).all()


def test_pil_input_is_not_modified_and_result_is_a_copy():
    src = Image.new("P", (2, 2))
    src.putpalette([10, 20, 30] * 256)
    out = load_image(src)
    assert src.mode == "P" and out.mode == "RGB" and out is not src
    assert tuple(pixels(out)[0, 0]) == (10, 20, 30)
    rgb = Image.new("RGB", (2, 2), RED)
    copy = load_image(rgb)
    copy.putpixel((0, 0), BLUE)
    assert rgb.getpixel((0, 0)) == RED


def test_wrong_source_type_is_a_programming_error():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- bad files


def test_empty_inputs(tmp_path):
    assert reason_of(b"") == "empty file"
    assert reason_of(io.BytesIO()) == "empty file"
    assert reason_of(hostile.write_empty(tmp_path / "e.jpg")) == "empty file"
    with pytest.raises(BadImageError, match="empty file"):
        probe_image(tmp_path / "e.jpg")


def test_error_names_the_file_and_is_a_lookalike_error(tmp_path):
    path = hostile.write_empty(tmp_path / "e.jpg")
    with pytest.raises(LookalikeError) as info:
        load_image(path)
    assert info.value.path == str(path)  # type: ignore[attr-defined]
    assert str(info.value) == f"{path}: empty file"


def test_text_and_random_bytes_are_not_images(tmp_path):
    assert reason_of(hostile.write_text(tmp_path / "t.png")) == "not an image"
    assert reason_of(hostile.write_random(tmp_path / "r.webp")) == "not an image"
    with pytest.raises(BadImageError, match="not an image"):
        probe_image(tmp_path / "r.webp")


def test_truncated_jpeg_passes_probe_but_fails_decode(tmp_path):
    path = hostile.write_truncated_jpeg(tmp_path / "t.jpg")
    assert probe_image(path) == (64, 64, "JPEG")
    assert reason_of(path).startswith("truncated or corrupt image: ")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody "fixed" it globally


def test_truncated_png_fails_decode():
    data = hostile.image_bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    assert reason_of(data[: len(data) * 2 // 3]).startswith("truncated or corrupt image")


def test_png_with_broken_crc_is_refused():
    data = bytearray(hostile.solid_png(RED, (4, 4)))
    data[-20] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    assert reason_of(bytes(data)).startswith("truncated or corrupt image")


def test_directory_and_missing_file(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    assert reason_of(tmp_path / "x.jpg") == "is a directory"
    assert reason_of(tmp_path / "missing.png") == "unreadable: no such file or directory"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    assert reason_of(tmp_path / "pipe.png") == "not a regular file"
    with pytest.raises(BadImageError, match="not a regular file"):
        probe_image(tmp_path / "pipe.png")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path):
    path = hostile.write_bytes(tmp_path / "secret.png", hostile.solid_png())
    path.chmod(0)
    try:
        assert reason_of(path) == "unreadable: permission denied"
    finally:
        path.chmod(0o644)


def test_permission_error_reason_without_needing_a_non_root_user(tmp_path, monkeypatch):
    path = hostile.write_bytes(tmp_path / "secret.png", hostile.solid_png())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("retrieval.imageio.open", refuse, raising=False)
    assert reason_of(path) == "unreadable: permission denied"


# ---------------------------------------------------------------------------- decompression bombs


def test_bomb_header_is_refused_without_allocating(tmp_path):
    path = hostile.write_bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    expected = f"too large: 40000x40000 pixels exceeds limit of {MAX_PIXELS}"
    assert reason_of(path) == expected
    with pytest.raises(BadImageError) as info:
        probe_image(path)
    assert info.value.reason == expected


def test_bomb_guard_does_not_depend_on_pillows_global(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone switched Pillow's guard off
    assert reason_of(hostile.png_claiming_size(40000, 40000)) == \
        f"too large: 40000x40000 pixels exceeds limit of {MAX_PIXELS}"
    assert reason_of(hostile.png_claiming_size(300, 200), max_pixels=50_000) == \
        "too large: 300x200 pixels exceeds limit of 50000"


def test_bomb_between_pillows_warning_and_error_thresholds():
    data = hostile.png_claiming_size(10000, 10000)  # 1e8 px: Pillow only warns, we refuse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert reason_of(data) == f"too large: 10000x10000 pixels exceeds limit of {MAX_PIXELS}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning now raises inside Image.open
        assert reason_of(data) == f"too large: 10000x10000 pixels exceeds limit of {MAX_PIXELS}"


def test_limit_above_pillows_own_still_refuses_with_a_clear_reason():
    reason = reason_of(hostile.png_claiming_size(40000, 40000), max_pixels=10**10)
    assert reason.startswith("too large: 40000x40000 pixels exceeds Pillow's limit")


def test_custom_limit_applies_to_real_images_and_pil_input():
    data = hostile.solid_png(RED, (100, 80))
    assert reason_of(data, max_pixels=7999) == "too large: 100x80 pixels exceeds limit of 7999"
    assert load_image(data, max_pixels=8000).size == (100, 80)
    assert reason_of(Image.new("RGB", (100, 80)), max_pixels=10) == "too large: 100x80 pixels exceeds limit of 10"


# ---------------------------------------------------------------------------------- colour modes


def test_rgba_transparency_is_composited_on_white(tmp_path):
    px = pixels(load_image(hostile.write_rgba_png(tmp_path / "a.png")))
    assert tuple(px[0, 0]) == RED
    assert tuple(px[0, 1]) == WHITE  # fully transparent blue must not show blue
    assert near(px[0, 2], (127, 127, 127), tol=1)  # half-transparent black over white


def test_la_and_pa_alpha_modes():
    la = Image.new("LA", (2, 1), (0, 255))
    la.putpixel((1, 0), (0, 0))
    assert pixels(load_image(la)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    pa = Image.new("PA", (1, 1))
    pa.putpalette([0, 0, 255] * 256)
    pa.putpixel((0, 0), (0, 0))
    assert tuple(pixels(load_image(pa))[0, 0]) == WHITE


def test_palette_gif_with_transparency(tmp_path):
    im = load_image(hostile.write_palette_gif(tmp_path / "p.gif"))
    assert pixels(im).tolist() == [[list(GREEN), list(WHITE)]]


def test_grey_png_with_trns_transparency():
    im = Image.new("L", (2, 1), 40)
    im.putpixel((1, 0), 7)
    px = pixels(load_image(hostile.image_bytes(im, "PNG", transparency=7)))
    assert px.tolist() == [[[40, 40, 40], [255, 255, 255]]]


def test_cmyk_jpeg(tmp_path):
    path = hostile.write_cmyk_jpeg(tmp_path / "c.jpg")
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    px = pixels(load_image(path))
    assert near(px, RED, tol=8)


def test_16bit_png_scales_to_8bit(tmp_path):
    path = hostile.write_gray16_png(tmp_path / "g.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16")
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 255, 128, 4]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_modes_in_memory(mode):
    arr = np.array([[0, 65535, 257 * 200]], dtype=">u2" if mode.endswith("B") else "<u2")
    im = Image.frombytes(mode, (3, 1), arr.tobytes())
    assert pixels(load_image(im))[0, :, 0].tolist() == [0, 255, 200]


def test_32bit_integer_and_float_modes():
    def make(mode, values):
        im = Image.new(mode, (len(values), 1))
        for x, v in enumerate(values):
            im.putpixel((x, 0), v)
        return pixels(load_image(im))[0, :, 0].tolist()

    assert make("I", [0, 100, 255]) == [0, 100, 255]  # 8-bit data kept as is
    assert make("I", [0, 65535, 257 * 10]) == [0, 255, 10]  # 16-bit data scaled
    assert make("I", [-1000, 0, 1000]) == [0, 128, 255]  # anything else stretched
    assert make("F", [0.0, 0.5, 1.0]) == [0, 128, 255]  # 0..1 floats
    assert make("F", [0.0, 12.0, 200.0]) == [0, 12, 200]  # 0..255 floats
    assert make("F", [float("nan"), -2.0, 2.0]) == [128, 0, 255]  # NaN treated as 0, then stretched
    assert make("I", [7, 7]) == [7, 7]


def test_one_bit_and_greyscale():
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert pixels(load_image(one)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert tuple(pixels(load_image(hostile.image_bytes(Image.new("L", (1, 1), 77), "PNG")))[0, 0]) == (77,) * 3


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_other_formats(fmt):
    data = hostile.image_bytes(Image.new("RGB", (6, 4), BLUE), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    im = load_image(data)
    assert im.size == (6, 4) and (pixels(im) == BLUE).all()


def test_formats_that_shell_out_or_sniff_loosely_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert reason_of(eps) == "not an image"
    assert reason_of(hostile.image_bytes(Image.new("RGB", (4, 4)), "TGA")) == "not an image"


# ------------------------------------------------------------------------------- frames, rotation


@pytest.mark.parametrize("fmt, name", [("GIF", "a.gif"), ("PNG", "a.png"), ("WEBP", "a.webp")])
def test_first_frame_of_animations(tmp_path, fmt, name):
    path = hostile.write_animated(tmp_path / name, fmt)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 3  # it really is animated
    px = pixels(load_image(path))
    assert px.shape == (8, 8, 3) and near(px, RED, tol=2)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    path = hostile.write_exif_rotated_jpeg(tmp_path / "r.jpg", orientation=6)
    assert probe_image(path)[:2] == (64, 32)  # the header speaks of the stored size
    im = load_image(path)
    assert im.size == (32, 64)
    px = pixels(im)
    assert near(px[8, 24], RED, tol=12)  # red quadrant is now top-right...
    for y, x in ((8, 8), (48, 8), (48, 24)):  # ... and only there
        assert near(px[y, x], BLUE, tol=12)


@pytest.mark.parametrize("orientation, red_corner", [
    (1, "top-left"), (2, "top-right"), (3, "bottom-right"), (4, "bottom-left"),
    (5, "top-left"), (6, "top-right"), (7, "bottom-right"), (8, "bottom-left"),
])
def test_every_exif_orientation(tmp_path, orientation, red_corner):
    im = load_image(hostile.write_exif_rotated_jpeg(tmp_path / "r.jpg", orientation=orientation))
    assert im.size == ((32, 64) if orientation >= 5 else (64, 32))
    w, h = im.size
    px = pixels(im)
    corners = {"top-left": px[h // 8, w // 8], "top-right": px[h // 8, w - 1 - w // 8],
               "bottom-left": px[h - 1 - h // 8, w // 8], "bottom-right": px[h - 1 - h // 8, w - 1 - w // 8]}
    assert [name for name, value in corners.items() if near(value, RED, tol=12)] == [red_corner]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_broken_exif_does_not_cost_the_image():
    buf = hostile.image_bytes(Image.new("RGB", (16, 8), GREEN), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    im = load_image(buf)
    assert im.size == (16, 8) and near(pixels(im), GREEN, tol=8)


def test_reduce_to_uses_jpeg_draft_but_keeps_the_minimum_side():
    data = hostile.image_bytes(Image.new("RGB", (256, 128), RED), "JPEG")
    assert load_image(data, reduce_to=32).size == (64, 32)
    assert load_image(data, reduce_to=100).size == (256, 128)
    assert load_image(hostile.solid_png(RED, (256, 128)), reduce_to=32).size == (256, 128)  # PNG: no-op


# ---------------------------------------------------------------------------------- hostile folder


def test_every_hostile_file_loads_or_fails_as_expected(tmp_path):
    expect = hostile.make_hostile_folder(tmp_path / "c", fifo=True)
    checked = 0
    for rel, outcome in expect.items():
        if outcome.load is None:
            continue
        path = tmp_path / "c" / rel
        if outcome.load == OK:
            assert load_image(path).mode == "RGB", rel
        else:
            assert reason_of(path).startswith(outcome.load), rel
        checked += 1
    assert checked >= 20


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors via /proc")
def test_no_file_handles_leak(tmp_path):
    expect = hostile.make_hostile_folder(tmp_path / "c", fifo=True)
    paths = [tmp_path / "c" / rel for rel, e in expect.items() if e.load is not None]

    def load_all():
        for path in paths:
            for fn in (load_image, probe_image):
                try:
                    fn(path)
                except BadImageError:
                    pass

    load_all()  # warm-up: plugin imports, caches
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        load_all()
    assert len(os.listdir("/proc/self/fd")) == before


# ------------------------------------------------------------------------------ guards seen from outside


def test_an_empty_pil_image_is_refused_not_returned():
    # Files with a zero side are refused by Pillow itself; an image object handed over directly is checked here.
    for size in ((0, 5), (5, 0), (0, 0)):
        assert reason_of(Image.new("RGB", size)) == f"truncated or corrupt image: {size[0]}x{size[1]} pixels"


def test_a_nul_byte_in_a_path_is_a_reason_not_a_crash():
    assert reason_of("bad\0name.png").startswith("unreadable")
    with pytest.raises(BadImageError, match="unreadable"):
        probe_image("bad\0name.png")


def test_pillow_errors_of_other_types_become_reasons():
    """Pillow reports some damage with ValueError or SyntaxError rather than OSError; both must become reasons."""
    import struct
    import zlib

    from tests.hostile import png_chunk

    signature = b"\x89PNG\r\n\x1a\n"
    short_header = signature + png_chunk(b"IHDR", struct.pack(">II", 4, 4)) + png_chunk(b"IEND", b"")
    assert reason_of(short_header) == "truncated or corrupt image: Truncated IHDR chunk"  # ValueError at open

    pixels_4x4 = zlib.compress(b"".join(b"\0" + b"\x10" * 12 for _ in range(4)))
    broken_chunk = (signature + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
                    + png_chunk(b"IDAT", pixels_4x4[:5]) + png_chunk(b"\xb6mv\xbb", b"xx")
                    + png_chunk(b"IDAT", pixels_4x4[5:]) + png_chunk(b"IEND", b""))
    assert reason_of(broken_chunk).startswith("truncated or corrupt image: broken PNG file")  # SyntaxError at load
