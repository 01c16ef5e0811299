"""Duplicates that mean something: exact copies as their own tier, and a "same photo" cosine threshold calibrated per
index on synthetic edited copies of its own collection.

A fixed cosine (Explore's old 0.95) means different things for different encoders and pipelines. Instead, when an
index is built, :func:`calibrate` takes a seeded sample of its images, makes a mildly edited copy of each (what a
photo goes through without becoming another photo: re-encoding as JPEG, resizing, a small crop, a tone change),
embeds the copies with the index's encoder and searches them: a copy's score with its original is a *positive*
pair, its scores with the other nearest images *negative* ones. The threshold is the lowest score at which
:data:`retrieval.pipeline.COPY_PRECISION` of the pairs at or above it are true copies
(:func:`retrieval.pipeline.calibrate_threshold`); the manifest keeps it with the precision and recall reached.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance

from .errors import BadImageError
from .imageio import jpeg_round_trip
from .pipeline import COPY_PRECISION, calibrate_threshold

if TYPE_CHECKING:  # pragma: no cover
    from .collection import Collection
    from .encoders import Encoder
    from .index_store import IndexStore

CALIBRATION_SAMPLE = 100  # images a calibration copies (all of them in a smaller collection)
NEGATIVES_PER_COPY = 5  # nearest other images per copy counted as "not the same photo"
FALLBACK_THRESHOLD = 0.95  # for indexes built before calibration existed, or too small to calibrate (< 3 images)


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return jpeg_round_trip(img, int(rng.integers(40, 81)))


def _resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    f = rng.uniform(0.5, 0.9)
    return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BILINEAR)


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    keep = np.sqrt(rng.uniform(0.8, 0.95))  # 80-95% of the area
    cw, ch = min(w, max(8, round(w * keep))), min(h, max(8, round(h * keep)))  # tiny images: kept whole
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _tone(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
    return ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))


SAME_PHOTO_EDITS = {"jpeg": _jpeg, "resize": _resize, "crop": _crop, "tone": _tone}


def same_photo_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``img`` after one or two of :data:`SAME_PHOTO_EDITS`, parameters drawn from ``rng``."""
    names = list(SAME_PHOTO_EDITS)
    for name in rng.choice(names, size=int(rng.integers(1, 3)), replace=False):
        img = SAME_PHOTO_EDITS[str(name)](img.convert("RGB"), rng)
    return img


def calibrate(store: IndexStore, encoder: Encoder, collection: Collection, precision: float = COPY_PRECISION,
              sample: int = CALIBRATION_SAMPLE, seed: int = 0) -> dict | None:
    """The "same photo" threshold of ``store`` (module docstring), or None when it holds fewer than 3 images."""
    from .imageio import load_image

    paths = store.paths()
    if len(paths) < 3:
        return None
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in np.sort(rng.choice(len(paths), min(sample, len(paths)), replace=False))]
    originals, copies = [], []
    for p in chosen:
        try:
            copies.append(same_photo_copy(load_image(Path(collection.root) / p), rng))
            originals.append(p)
        except (BadImageError, OSError):
            continue
    if not copies:
        return None
    vectors = np.concatenate([encoder.embed_images(copies[i:i + 32]) for i in range(0, len(copies), 32)])
    pos, neg = [], []
    for original, hits in zip(originals, store.search(vectors, NEGATIVES_PER_COPY + 1)):
        for hit in hits:
            (pos if hit.path == original else neg).append(hit.score)
    if not pos:
        return None
    threshold, reached, recall = calibrate_threshold(np.array(pos), np.array(neg), precision)
    return {"threshold": round(threshold, 6), "precision": precision, "precision_reached": round(reached, 4),
            "recall": round(recall, 4), "copies": len(copies), "edits": sorted(SAME_PHOTO_EDITS)}


def duplicate_threshold(manifest: dict) -> float:
    """The calibrated "same photo" cosine of an index, or :data:`FALLBACK_THRESHOLD` where it has none."""
    return float((manifest.get("duplicates") or {}).get("threshold", FALLBACK_THRESHOLD))


def _hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_pixels(path: Path) -> str | None:
    from .imageio import load_image

    try:
        img = load_image(path)
    except (BadImageError, OSError):
        return None
    return hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()


def exact_duplicates(root: str | Path, paths: list[str]) -> list[tuple[str, list[str]]]:
    """Groups of items that are the same file content (``"same file"``) or whose different files decode to the same
    pixels (``"same pixels"``: a PNG and its lossless re-save, a copy with other metadata). Reads every file once and
    decodes one file per distinct content. Returns ``[(tier, [path, …]), …]``, the largest groups first."""
    root = Path(root)
    by_bytes: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        try:
            by_bytes[_hash_file(root / p)].append(p)
        except OSError:
            continue
    groups = [("same file", sorted(g)) for g in by_bytes.values() if len(g) > 1]
    by_pixels: dict[str, list[list[str]]] = defaultdict(list)
    for g in by_bytes.values():
        digest = _hash_pixels(root / g[0])
        if digest is not None:
            by_pixels[digest].append(g)
    groups += [("same pixels", sorted(p for g in contents for p in g))
               for contents in by_pixels.values() if len(contents) > 1]
    return sorted(groups, key=lambda t: (-len(t[1]), t[1]))
