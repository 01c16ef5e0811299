"""Safe image decoding: any file a user points us at becomes an RGB image or a short, human reason why not.

Folders of "images" in the wild hold empty files, half-copied JPEGs, text files with the wrong extension,
decompression bombs, CMYK scans, 16-bit PNGs, transparent logos and rotated phone photos. Everything that
reads pixels in Lookalike goes through :func:`load_image`, so all of those are handled in one place and a bad
file costs one :class:`BadImageError` (turned into a skip-report entry by the caller), never a crash.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import ExifTags, Image

from .errors import BadImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}

#: Pixel budget per image (width * height), checked from the header before any pixel is decoded.
#: Same value as Pillow's own default, but enforced here so it holds whatever Pillow's global is set to.
MAX_PIXELS = 89_478_485

# Formats Pillow may identify a file as. Restricting them keeps a renamed file from reaching a plugin that
# shells out (EPS runs Ghostscript) or whose weak magic bytes claim random data (TGA). MPO is how Pillow
# opens many camera JPEGs. Phone photos: HEIF (HEIC) through the pillow-heif plugin, registered once by
# :func:`_formats`, which applies the container's rotation itself and resets EXIF orientation to 1; AVIF through
# Pillow's own plugin (Pillow >= 11.3), whose EXIF orientation :func:`_upright` applies like a JPEG's.
_ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF")

# Formats stored in ISO boxes (``ftyp`` first), whose declared image sizes :func:`_too_large_box` reads. Their
# plugins report libheif's and libavif's errors (corrupt data, their own size limits) as RuntimeError, when opening
# or decoding; from any other file a RuntimeError is a bug.
_BOXED_FORMATS = ("HEIF", "AVIF")
_BOX_ERRORS = (RuntimeError,)

# What Pillow raises for malformed input: OSError (truncated, broken stream, bad CRC), SyntaxError (bad
# header), ValueError / EOFError / struct.error / IndexError (short or inconsistent header fields), and its
# bomb guard. Anything else is a bug worth seeing, not a bad file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)

# Modes with an alpha band (LAB's "A" is a colour axis, not alpha); "a" is premultiplied alpha.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# EXIF orientation value -> the transpose that shows the photo upright (EXIF 2.3, tag 0x0112).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS, reduce_to: int | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes, binary file object or PIL image) into a new, fully loaded RGB image.

    Applies EXIF orientation, composites transparency on white, scales 16-bit / integer / float images to
    8 bits and takes the first frame of animations. ``reduce_to`` lets JPEGs decode at 1/2, 1/4 or 1/8 scale
    as long as both sides stay >= ``reduce_to`` (much faster for big photos that will be shrunk anyway).
    Raises :class:`BadImageError` with a short reason for anything that is not a usable image; the returned
    image never holds an open file.
    """
    path = _as_path(source)
    try:
        if isinstance(source, Image.Image):
            _check_size(source.size, max_pixels)
            return _decode(source, reduce_to=None)
        with _open_binary(source) as fp, _identify(fp, max_pixels) as im:
            return _decode(im, reduce_to)
    except BadImageError as exc:
        raise _with_path(exc, path) from exc.__cause__


def jpeg_round_trip(img: Image.Image, quality: int) -> Image.Image:
    """``img`` saved as a JPEG of ``quality`` and decoded again, RGB (the edited copies of the scorecard, the
    duplicate calibration and the copy-detection benchmark)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def probe_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int, str]:
    """Cheap check of a file from its header alone: ``(width, height, format)`` or :class:`BadImageError`.

    Catches what a scan can see without decoding (empty, not an image, too large, unreadable); a truncated
    pixel stream only shows when :func:`load_image` decodes it.
    """
    try:
        with _open_binary(path) as fp, _identify(fp, max_pixels) as im:
            return im.size[0], im.size[1], str(im.format)
    except BadImageError as exc:
        raise _with_path(exc, os.fspath(path)) from exc.__cause__


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a file name has one of the extensions Lookalike indexes (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------- opening


def _as_path(source: object) -> str | None:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None  # type: ignore[arg-type]


def _with_path(exc: BadImageError, path: str | None) -> BadImageError:
    """Helpers raise bare reasons; the public functions name the file once, here."""
    return exc if exc.path or not path else BadImageError(exc.reason, path)


def _decode(im: Image.Image, reduce_to: int | None) -> Image.Image:
    """Read the pixels (this is where truncation shows) and convert them to upright RGB."""
    try:
        if reduce_to and im.format in ("JPEG", "MPO"):
            im.draft(None, (reduce_to, reduce_to))
        im.load()
        return _to_rgb(im)
    except _DECODE_ERRORS + (_BOX_ERRORS if im.format in _BOXED_FORMATS else ()) as exc:
        raise BadImageError(_decode_reason(exc)) from exc


@contextmanager
def _open_binary(source: object) -> Iterator[IO[bytes]]:
    """A seekable binary stream over ``source``, closed on exit if we opened it (never the caller's)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImageError("empty file")
        yield io.BytesIO(source)
        return
    if hasattr(source, "read"):
        yield source  # type: ignore[misc]  # caller's file object: theirs to close
        return
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path, bytes, a binary file or a PIL image, not {type(source).__name__}")
    path = os.fspath(source)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BadImageError(_os_reason(exc)) from exc
    except ValueError as exc:  # a NUL byte in the name
        raise BadImageError(f"unreadable: {exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise BadImageError("is a directory")
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block forever
        raise BadImageError("not a regular file")
    if st.st_size == 0:
        raise BadImageError("empty file")
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise BadImageError(_os_reason(exc)) from exc
    with fp:
        yield fp


@contextmanager
def _identify(fp: IO[bytes], max_pixels: int) -> Iterator[Image.Image]:
    """Open ``fp`` lazily (header only), refusing non-images and images over the pixel budget."""
    formats = _formats()
    try:
        im = Image.open(fp, formats=formats)
    except Image.UnidentifiedImageError as exc:
        raise BadImageError(_too_large_box(fp, max_pixels) or _empty_or_not_image(fp)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired before handing us the image; read the size ourselves for the report.
        raise BadImageError(_bomb_reason(fp, formats, max_pixels, exc)) from exc
    except _DECODE_ERRORS as exc:
        raise BadImageError(_decode_reason(exc)) from exc
    except _BOX_ERRORS as exc:
        if not _is_boxed(fp):
            raise
        raise BadImageError(_decode_reason(exc)) from exc
    with im:
        _check_size(im.size, max_pixels)
        if im.format in _BOXED_FORMATS and (reason := _too_large_box(fp, max_pixels)):
            raise BadImageError(reason)
        yield im


@cache
def _formats() -> tuple[str, ...]:
    """The allowed formats this Pillow build can read (``Image.open`` fails on unregistered names)."""
    Image.init()
    _register_heif()
    return tuple(f for f in _ALLOWED_FORMATS if f in Image.OPEN)


def _register_heif() -> None:
    """Register pillow-heif's HEIF opener, once per process (a missing plugin leaves HEIC files "not an image")."""
    if "HEIF" in Image.OPEN:
        return
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadImageError(f"truncated or corrupt image: {width}x{height} pixels")
    if width * height > max_pixels:
        raise BadImageError(f"too large: {width}x{height} pixels exceeds limit of {max_pixels}")


def _header_size(fp: IO[bytes], formats: tuple[str, ...]) -> tuple[int, int] | None:
    """Width and height as the header states them, using the format plugins directly (no bomb check)."""
    try:
        fp.seek(0)
        prefix = fp.read(16)
    except OSError:
        return None
    for name in formats:
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept is not None else True
        if not verdict or isinstance(verdict, str):  # a str is Pillow's "almost, but no"
            continue
        try:
            fp.seek(0)
            return factory(fp, "").size  # type: ignore[no-any-return]
        except _DECODE_ERRORS:
            continue
    return None


def _bomb_reason(fp: IO[bytes], formats: tuple[str, ...], max_pixels: int, exc: Exception) -> str:
    size = _header_size(fp, formats)
    pillow_limit = (Image.MAX_IMAGE_PIXELS or 0) * (2 if isinstance(exc, Image.DecompressionBombError) else 1)
    if size is None:
        return f"too large: {exc}".split(",")[0]
    width, height = size
    if width * height > max_pixels:
        return f"too large: {width}x{height} pixels exceeds limit of {max_pixels}"
    return f"too large: {width}x{height} pixels exceeds Pillow's limit of {pillow_limit}"


def _is_boxed(fp: IO[bytes]) -> bool:
    """Whether the file starts like an ISO box file (HEIF, AVIF)."""
    try:
        fp.seek(0)
        return fp.read(8)[4:8] == b"ftyp"
    except OSError:
        return False


def _too_large_box(fp: IO[bytes], max_pixels: int) -> str | None:
    """Why a HEIF or AVIF file must be refused for its size, if it must: the largest image its ``ispe`` boxes
    declare is over the budget. Their plugins report a smaller size (a crop, one tile) than what libheif would
    allocate, or will not open a huge file at all (libavif stops at 16384x16384), so the boxes are read here."""
    try:
        pos = fp.tell()
        fp.seek(0)
        head = fp.read(1 << 18)
        fp.seek(pos)
    except OSError:
        return None
    if head[4:8] != b"ftyp":
        return None
    sizes, at = [], head.find(b"ispe")
    while 0 <= at <= len(head) - 16:
        sizes.append(struct.unpack(">II", head[at + 8:at + 16]))  # after the box's version and flags
        at = head.find(b"ispe", at + 4)
    width, height = max(sizes, key=lambda wh: wh[0] * wh[1], default=(0, 0))
    if width * height > max_pixels:
        return f"too large: {width}x{height} pixels exceeds limit of {max_pixels}"
    return None


def _empty_or_not_image(fp: IO[bytes]) -> str:
    """File objects and bytes are only known to be empty once read."""
    try:
        fp.seek(0)
        return "not an image" if fp.read(1) else "empty file"
    except OSError:
        return "not an image"


def _os_reason(exc: OSError) -> str:
    """``unreadable: permission denied`` rather than a traceback-style errno dump."""
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return f"unreadable: {(exc.strerror or str(exc)).lower()}"


def _decode_reason(exc: BaseException) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too large: {exc}".split(",")[0]
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(detail) > 100:
        detail = detail[:97] + "..."
    return f"truncated or corrupt image: {detail}"


# ----------------------------------------------------------------------------------------- conversion


def _to_rgb(im: Image.Image) -> Image.Image:
    """Upright RGB copy of a loaded image, sharing nothing with it (so the source file can close)."""
    out = _upright(_rgb_pixels(im), im)
    return out.copy() if out is im else out


def _upright(rgb: Image.Image, original: Image.Image) -> Image.Image:
    """Apply EXIF orientation. Read by hand rather than ImageOps.exif_transpose, which also rewrites
    metadata we throw away; unreadable EXIF just means "no rotation", since the pixels themselves are fine."""
    try:
        orientation = original.getexif().get(ExifTags.Base.Orientation, 1)
    except (*_DECODE_ERRORS, KeyError, TypeError):  # EXIF is a TIFF-in-a-blob: its parser has more ways to fail
        return rgb
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return rgb.transpose(method) if method is not None else rgb


def _rgb_pixels(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(im).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")  # no direct La -> RGBA
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:  # a mode Pillow cannot turn into RGB
        raise BadImageError(f"unsupported colour mode {mode}") from exc


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float greyscale to 0..255 by what the values look like.

    16-bit modes are full-range by definition. Plain ``I`` holds 8-bit or 16-bit data more often than true
    32-bit data, and float images are usually 0..1 or 0..255; anything else is stretched min..max.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray(((arr.astype(np.uint32) + 128) // 257).astype(np.uint8))
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif im.mode != "F" and lo >= 0.0 and hi <= 65535.0:
        values = values / 257.0
    else:
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))

