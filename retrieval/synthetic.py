"""Generated image collections for tests, benchmarks and the demo's no-npm fallback.

Each class is a shape drawn in a colour family on a textured background; its members vary position, scale,
rotation, hue and background, so that telling classes apart takes more than comparing average colours.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "stripes", "checker")
HUES = ((220, 50, 50), (50, 160, 60), (50, 80, 210), (230, 180, 30), (150, 60, 190), (30, 170, 180))


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        n, radii = 3, [r]
    elif kind == "star":
        n, radii = 10, [r, r * 0.45]
    else:  # square
        n, radii = 4, [r]
    pts = []
    for i in range(n):
        a = rot + 2 * math.pi * i / n
        rr = radii[i % len(radii)]
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(kind: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """One member of a class: ``kind`` in ``colour`` with random placement, scale, rotation and background."""
    bg = tuple(int(v) for v in rng.integers(170, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    noise = rng.integers(-18, 19, (size, size, 3))
    img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    jitter = rng.integers(-25, 26, 3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = size / 2 + rng.uniform(-0.15, 0.15) * size, size / 2 + rng.uniform(-0.15, 0.15) * size
    rot = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    w = max(1, int(r * 0.35))
    if kind == "circle":
        d.ellipse(box, fill=fill)
    elif kind == "ring":
        d.ellipse(box, outline=fill, width=w)
    elif kind == "cross":
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=fill, width=w)
        d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=fill, width=w)
    elif kind == "stripes":
        step = max(2, int(r / 2))
        for x in range(int(cx - r), int(cx + r), step * 2):
            d.rectangle((x, cy - r, x + step - 1, cy + r), fill=fill)
    elif kind == "checker":
        step = max(2, int(r / 2))
        for i, x in enumerate(range(int(cx - r), int(cx + r), step)):
            for j, y in enumerate(range(int(cy - r), int(cy + r), step)):
                if (i + j) % 2 == 0:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=fill)
    else:
        d.polygon(_polygon(kind, cx, cy, r, rot), fill=fill)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img


def make_collection(root: str | Path, n_classes: int = 8, per_class: int = 8, size: int = 48, seed: int = 0,
                    fmt: str = "png", labelled: bool = True, draw_seed: int | None = None) -> list[Path]:
    """Write ``n_classes × per_class`` images under ``root`` (in ``root/<class>/`` when ``labelled``).

    Classes combine a shape and a colour family (``n_classes`` ≤ 48); ``seed`` picks the classes, ``draw_seed``
    (default: ``seed``) the individual drawings, so two calls with the same ``seed`` and different ``draw_seed``
    give new members of the same classes. Returns the written paths, sorted.
    """
    combos = [(s, c) for c in range(len(HUES)) for s in SHAPES]
    if n_classes > len(combos):
        raise ValueError(f"at most {len(combos)} classes")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(combos))[:n_classes]
    if draw_seed is not None:
        rng = np.random.default_rng(draw_seed)
    root = Path(root)
    paths = []
    for ci in order:
        shape, hue = combos[ci]
        label = f"{shape}-{hue}"
        folder = root / label if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = draw_shape(shape, HUES[hue], size, rng)
            path = folder / (f"{j:03d}.{fmt}" if labelled else f"{label}-{j:03d}.{fmt}")
            img.save(path, quality=92) if fmt in ("jpg", "jpeg") else img.save(path)
            paths.append(path)
    return sorted(paths)
