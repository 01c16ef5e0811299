"""Real photographs offline: the Tux Paint stamps (Debian ``tuxpaint-stamps-default``) as labelled image folders.

The package installs photo cut-outs with an alpha channel under ``/usr/share/tuxpaint/stamps/<category>/…``. A
category is the folder a stamp lies in (``food/fruit``, ``animals/birds``, ``animals/mammals/bovines``…); the
``cartoon/`` folders (drawings) and ``symbols/`` are left out. A stamp is composited one of two ways:

* ``white``: cropped to its visible pixels, centred on a white square with a margin of 5% of its longer side, and
  resized to ``size`` pixels (bicubic) — so a centre crop keeps the whole object;
* ``texture``: on a generated photo-like background (:func:`texture`: a smooth random colour field, two octaves of
  value noise, sometimes stripes, an out-of-focus blur and sensor grain), its longer side 55–85% of the canvas, at a
  random place inside it. Everything is drawn from a generator seeded by (``seed``, the stamp's path), so a folder
  is the same on every machine and run, and the same stamp gets a different background under another seed.

The stamps are GPL-2 and are never committed: ``make_folder`` writes them where a benchmark or test runs.

    python bench/tuxpaint.py OUT [--min-per-category 8] [--size 256] [--background texture] [--seed 0]
"""

from __future__ import annotations

import argparse
import re
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

STAMPS = Path("/usr/share/tuxpaint/stamps")
EXCLUDED = ("cartoon", "symbols")  # folder names whose stamps are drawings, not photographs
MARGIN = 0.05
BACKGROUNDS = ("white", "texture")
OBJECT_SIDE = (0.55, 0.85)  # the stamp's longer side on a textured canvas, as a fraction of the canvas side
_MIRROR = re.compile(r"_mirror$|_flip$")  # Tux Paint's pre-flipped copies of a stamp


def stamp_categories(root: Path = STAMPS, min_per_category: int = 1) -> dict[str, list[Path]]:
    """``{category: [stamp.png, …]}`` sorted, for the categories with at least ``min_per_category`` stamps."""
    found: dict[str, list[Path]] = defaultdict(list)
    for png in sorted(Path(root).rglob("*.png")):
        rel = png.relative_to(root)
        if any(part in EXCLUDED for part in rel.parts[:-1]) or _MIRROR.search(png.stem):
            continue
        found["/".join(rel.parts[:-1])].append(png)
    return {c: files for c, files in sorted(found.items()) if len(files) >= min_per_category and c}


def _visible_rgba(path: Path) -> Image.Image:
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    box = rgba.getchannel("A").getbbox() or (0, 0, *rgba.size)
    return rgba.crop(box)


def composite_on_white(path: Path, size: int = 256) -> Image.Image:
    """The stamp at ``path`` as an RGB ``size``×``size`` photo on white (module docstring)."""
    rgba = _visible_rgba(path)
    side = round(max(rgba.size) * (1 + 2 * MARGIN))
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def _upsampled(rng: np.random.Generator, cells: int, size: int, channels: int) -> np.ndarray:
    """A (size, size, channels) float field in about [0, 1]: random values on a cells×cells grid, bicubic."""
    grid = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    planes = [np.asarray(Image.fromarray(grid[..., c]).resize((size, size), Image.Resampling.BICUBIC), np.float32)
              for c in range(channels)]
    return np.stack(planes, axis=-1) / 255.0


def texture(size: int, rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB background (module docstring), every choice drawn from ``rng``."""
    base = rng.uniform(30, 225, 3)  # the scene's dominant colour
    field = base + (_upsampled(rng, int(rng.integers(2, 6)), size, 3) - 0.5) * rng.uniform(40, 140)
    for cells, amplitude in ((int(rng.integers(6, 12)), 30.0), (int(rng.integers(24, 48)), 12.0)):
        field += (_upsampled(rng, cells, size, 1) - 0.5) * amplitude * rng.uniform(0.5, 1.5)
    if rng.random() < 0.35:  # wood, fabric, tiles: stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(size / 24, size / 6)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        field += (wave * rng.uniform(8, 25))[..., None]
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 2.5))))
    grain = rng.normal(0.0, rng.uniform(1.0, 5.0), (size, size, 1))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8))


def stamp_rng(path: Path, seed: int) -> np.random.Generator:
    """The generator of everything random about stamp ``path`` under ``seed`` (its folder and name, not where
    the stamps are installed)."""
    key = "/".join(Path(path).parts[-2:])
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def composite_on_texture(path: Path, size: int = 256, seed: int = 0) -> Image.Image:
    """The stamp at ``path`` on a generated background, ``size``×``size`` RGB (module docstring)."""
    rng = stamp_rng(path, seed)
    rgba = _visible_rgba(path)
    longer = max(2, round(size * rng.uniform(*OBJECT_SIDE)))
    scale = longer / max(rgba.size)
    rgba = rgba.resize((max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale))),
                       Image.Resampling.BICUBIC)
    canvas = texture(size, rng).convert("RGBA")
    at = (int(rng.integers(0, size - rgba.width + 1)), int(rng.integers(0, size - rgba.height + 1)))
    canvas.alpha_composite(rgba, at)
    return canvas.convert("RGB")


def composite(path: Path, size: int = 256, background: str = "white", seed: int = 0) -> Image.Image:
    """The stamp at ``path`` composited as ``background`` (one of :data:`BACKGROUNDS`) says."""
    if background == "white":
        return composite_on_white(path, size)
    if background == "texture":
        return composite_on_texture(path, size, seed)
    raise ValueError(f"unknown background {background!r}: choose one of {', '.join(BACKGROUNDS)}")


def check_installed(root: Path = STAMPS) -> None:
    """Raise FileNotFoundError when the stamps are not installed under ``root``."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root} is missing: install the Debian package tuxpaint-stamps-default")


def folder_name(category: str) -> str:
    """The folder ``make_folder`` writes ``category``'s photos to (a label of ``scan(..., labels=True)``)."""
    return category.replace("/", "__")


def make_folder(out: Path, min_per_category: int = 8, size: int = 256, root: Path = STAMPS,
                background: str = "white", seed: int = 0) -> dict[str, int]:
    """Write ``out/<category with / as __>/<stamp>.png`` for every category with at least ``min_per_category``
    stamps, composited as ``background`` says; returns the count per category. Raises FileNotFoundError when the
    stamps are not installed."""
    check_installed(root)
    counts = {}
    for category, files in stamp_categories(root, min_per_category).items():
        folder = Path(out) / folder_name(category)
        folder.mkdir(parents=True, exist_ok=True)
        for png in files:
            composite(png, size, background, seed).save(folder / f"{png.stem}.png")
        counts[category] = len(files)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--min-per-category", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--background", choices=BACKGROUNDS, default="white")
    ap.add_argument("--seed", type=int, default=0, help="seed of the textured backgrounds")
    args = ap.parse_args()
    counts = make_folder(args.out, args.min_per_category, args.size, background=args.background, seed=args.seed)
    print(f"{sum(counts.values())} photos in {len(counts)} categories under {args.out}")
    for category, n in counts.items():
        print(f"  {n:4d}  {category}")


if __name__ == "__main__":
    main()
