"""Hostile and awkward image files, written on demand for tests (tiny, made with Pillow or by hand).

Each ``write_*`` helper writes one file and returns its path. :func:`make_hostile_folder` lays all of them
out as one collection and says what should become of each entry, so scan, embed, index and CLI tests can
reuse the same folder and the same expectations.

Colours are chosen so a test can tell a correct decode from a plausible wrong one (e.g. which corner of a
rotated photo is red).
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

ITEM = "item"  # Expect.scan: the file is a collection item
IGNORED = "ignored"  # Expect.scan: neither an item nor skipped (hidden names)
OK = "ok"  # Expect.load: load_image returns an RGB image


@dataclass(frozen=True)
class Expect:
    """What should happen to one entry of the hostile folder.

    ``scan``: ITEM, IGNORED, or the start of its skip reason. ``load``: OK, the start of the
    BadImageError reason from ``load_image``, or None where loading the path is not meaningful.
    """

    scan: str
    load: str | None


# ------------------------------------------------------------------------------------------ bytes


def image_bytes(im: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save_args)
    return buf.getvalue()


def solid_png(color=RED, size=(8, 8)) -> bytes:
    return image_bytes(Image.new("RGB", size, color), "PNG")


def noisy_jpeg(size=(64, 64), seed=0) -> bytes:
    """A JPEG whose entropy-coded data is long enough that cutting it in half loses real pixels."""
    rng = random.Random(seed)
    im = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    return image_bytes(im, "JPEG", quality=90)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming_size(width: int, height: int) -> bytes:
    """A well-formed PNG header announcing ``width`` x ``height`` RGB pixels, with almost no pixel data.

    Only the header is honest: nothing close to width*height bytes is ever allocated here, which is the
    point of a decompression bomb test.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------ files


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_empty(path: Path) -> Path:
    return write_bytes(path, b"")


def write_truncated_jpeg(path: Path) -> Path:
    """Header intact (a scan accepts it), pixel stream cut in half (decoding must fail)."""
    data = noisy_jpeg()
    return write_bytes(path, data[: len(data) // 2])


def write_text(path: Path) -> Path:
    return write_bytes(path, b"shopping list: milk, eggs\n")


def write_random(path: Path, n: int = 4096, seed: int = 0) -> Path:
    return write_bytes(path, random.Random(seed).randbytes(n))


def write_bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    return write_bytes(path, png_claiming_size(width, height))


def write_cmyk_jpeg(path: Path) -> Path:
    """Solid CMYK (0, 255, 255, 0): red once converted."""
    return write_bytes(path, image_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))


def write_gray16_png(path: Path) -> Path:
    """16-bit greyscale row: 0, 65535, 128*257, 1000 (-> 8 bit: 0, 255, 128, 4)."""
    im = Image.new("I;16", (4, 1))
    for x, v in enumerate((0, 65535, 128 * 257, 1000)):
        im.putpixel((x, 0), v)
    return write_bytes(path, image_bytes(im, "PNG"))


def write_rgba_png(path: Path) -> Path:
    """Row of 3: opaque red, fully transparent blue (-> white), half-transparent black (-> mid grey)."""
    im = Image.new("RGBA", (3, 1))
    for x, v in enumerate(((255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128))):
        im.putpixel((x, 0), v)
    return write_bytes(path, image_bytes(im, "PNG"))


def write_palette_gif(path: Path) -> Path:
    """2x1 palette GIF: index 0 green, index 1 blue but marked transparent (-> white)."""
    im = Image.new("P", (2, 1))
    im.putpalette([0, 255, 0, 0, 0, 255] + [0, 0, 0] * 254)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    return write_bytes(path, image_bytes(im, "GIF", transparency=1))


def animation_frames() -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]


def write_animated(path: Path, fmt: str = "GIF") -> Path:
    """Three frames red, green, blue: only the first (red) may come back."""
    first, *rest = animation_frames()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return write_bytes(path, image_bytes(first, fmt, save_all=True, append_images=rest, duration=100,
                                         loop=0, **extra))


def write_exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """Stored 64x32 (landscape), blue with a red top-left 32x16 quadrant, EXIF orientation tag set.

    Orientation 6 means "rotate 90° clockwise to view": the viewer sees 32x64 with red in the top-right.
    """
    im = Image.new("RGB", (64, 32), BLUE)
    im.paste(RED, (0, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return write_bytes(path, image_bytes(im, "JPEG", quality=95, subsampling=0, exif=exif.tobytes()))


def write_uniform(path: Path, colour=(0, 0, 0), size=(64, 48), mode: str = "RGB") -> Path:
    """One colour everywhere: a lens-cap shot (black JPEG), a blank scan (white), a 1x1 pixel, a 1x4000 strip, a
    fully transparent PNG (``mode="RGBA"``, alpha 0: white once composited). The format follows the suffix."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP"}[path.suffix.lower()]
    extra = {"quality": 95} if fmt == "JPEG" else {}
    return write_bytes(path, image_bytes(Image.new(mode, size, colour), fmt, **extra))


# Uniform and degenerate pictures, {relative path: (colour, size, mode)}; each is a collection item. The ones that
# decode to black (BLACK_SET) must find each other with any encoder: the same pixels once resized.
UNIFORM = {
    "uniform/black.jpg": ((0, 0, 0), (64, 48), "RGB"),
    "uniform/black-1x1.png": ((0, 0, 0), (1, 1), "RGB"),
    "uniform/black-strip-1x4000.png": ((0, 0, 0), (1, 4000), "RGB"),
    "uniform/black-strip-4000x1.jpg": ((0, 0, 0), (4000, 1), "RGB"),
    "uniform/white-scan.png": (WHITE, (48, 64), "RGB"),
    "uniform/grey.gif": ((128, 128, 128), (16, 16), "RGB"),
    "uniform/transparent.png": ((0, 0, 0, 0), (32, 32), "RGBA"),
    "uniform/red-1x1.png": (RED, (1, 1), "RGB"),
    "uniform/blue-strip-3000x2.png": (BLUE, (3000, 2), "RGB"),
}
BLACK_SET = {"uniform/black.jpg", "uniform/black-1x1.png", "uniform/black-strip-1x4000.png",
             "uniform/black-strip-4000x1.jpg"}


def write_uniform_folder(root: Path) -> list[str]:
    """Every picture of :data:`UNIFORM` under ``root``; their relative paths."""
    for rel, (colour, size, mode) in UNIFORM.items():
        write_uniform(root / rel, colour, size, mode)
    return sorted(UNIFORM)


def try_symlink(target: str, link: Path) -> bool:
    """Make a symbolic link if the platform allows it."""
    try:
        os.symlink(target, link)
        return True
    except (OSError, NotImplementedError):
        return False


def make_hostile_folder(root: Path, fifo: bool = False) -> dict[str, Expect]:
    """Write every hostile kind under ``root``; return {relative posix path: Expect} for each entry.

    Symbolic links (including loops) are included where the platform allows them, so copy the folder with
    ``shutil.copytree(root, dst, symlinks=True)``. ``fifo=True`` adds a named pipe called ``bad/pipe.png``
    (opening it for reading would block, which is the point; ``copytree`` would block on it too). Labels
    (first-level folders) are "good", "bad" and "folder.jpg".
    """
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, Expect] = {}

    def add(rel: str, scan: str, load: str | None) -> Path:
        expect[rel] = Expect(scan, load)
        return root / rel

    write_bytes(add("plain.png", ITEM, OK), solid_png(RED))
    write_bytes(add("SHOUTING.JPG", ITEM, OK), noisy_jpeg(seed=1))
    write_bytes(add("good/été 🌞 photo.png", ITEM, OK), solid_png(GREEN))
    write_bytes(add("good/many   spaces  .jpeg", ITEM, OK), noisy_jpeg(seed=2))
    write_cmyk_jpeg(add("good/cmyk.jpg", ITEM, OK))
    write_gray16_png(add("good/gray16.png", ITEM, OK))
    write_rgba_png(add("good/rgba.png", ITEM, OK))
    write_palette_gif(add("good/palette.gif", ITEM, OK))
    write_animated(add("good/animated.gif", ITEM, OK))
    write_exif_rotated_jpeg(add("good/rotated.jpg", ITEM, OK))
    write_bytes(add("good/actually-a-png.jpg", ITEM, OK), solid_png(BLUE))  # extension lies, content fine
    for rel in write_uniform_folder(root / "good"):  # one colour, 1x1 pixels, long thin strips, fully transparent
        add(f"good/{rel}", ITEM, OK)

    write_empty(add("bad/empty.jpg", "empty file", "empty file"))
    write_truncated_jpeg(add("bad/truncated.jpg", ITEM, "truncated or corrupt image"))
    write_text(add("bad/text.png", "not an image", "not an image"))
    write_random(add("bad/random.webp", "not an image", "not an image"))
    write_bomb_png(add("bad/bomb.png", "too large: 40000x40000 pixels", "too large: 40000x40000 pixels"))
    write_text(add("bad/notes.txt", "unsupported file type (.txt)", "not an image"))
    write_text(add("bad/README", "unsupported file type (no extension)", "not an image"))

    # A folder whose name looks like an image: just a folder.
    write_bytes(add("folder.jpg/inside.png", ITEM, OK), solid_png(RED))
    expect["folder.jpg"] = Expect(IGNORED, "is a directory")

    # Hidden entries are nobody's business.
    write_bytes(add(".hidden.png", IGNORED, OK), solid_png(RED))
    write_bytes(add(".cache/thumb.png", IGNORED, OK), solid_png(RED))

    if try_symlink(".", root / "loop"):
        add("loop", "link to a folder already scanned", None)
        if try_symlink("..", root / "good" / "up"):
            add("good/up", "link to a folder already scanned", None)
    if try_symlink("nowhere.jpg", root / "dangling.jpg"):
        add("dangling.jpg", "broken symbolic link", "unreadable: no such file or directory")
    if try_symlink("self.png", root / "self.png"):
        add("self.png", "broken symbolic link", "unreadable: too many levels of symbolic links")
    if try_symlink("plain.png", root / "link-to-plain.png"):
        add("link-to-plain.png", ITEM, OK)
    if fifo and hasattr(os, "mkfifo"):
        os.mkfifo(root / "bad" / "pipe.png")
        add("bad/pipe.png", "not a regular file", "not a regular file")
    return expect
