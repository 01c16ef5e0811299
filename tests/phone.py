"""Phone photos as the plugins write them: HEIC (pillow-heif) and AVIF (Pillow's own plugin), for the tests."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import Image


FORMATS = {"HEIF": ".heic", "AVIF": ".avif"}


def _registered() -> None:
    from pillow_heif import register_heif_opener

    if "HEIF" not in Image.SAVE:
        register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def phone_bytes(im: Image.Image, fmt: str, orientation: int | None = None, quality: int = 90) -> bytes:
    """``im`` encoded as HEIF or AVIF by its plugin, with an EXIF orientation tag if given."""
    _registered()
    kwargs: dict = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def quadrants(size=(64, 32), red=(220, 20, 20), blue=(20, 20, 220)) -> Image.Image:
    """Blue with a red top-left quadrant: where the red lands shows how a picture was turned."""
    w, h = size
    im = Image.new("RGB", size, blue)
    im.paste(red, (0, 0, w // 2, h // 2))
    return im


def claiming_size(data: bytes, width: int, height: int) -> bytes:
    """The file with its ``ispe`` box (the image's declared size) rewritten; the pixels stay small."""
    at = data.find(b"ispe")
    assert at > 0, "no ispe box"
    return data[:at + 8] + struct.pack(">II", width, height) + data[at + 16:]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
