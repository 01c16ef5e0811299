"""Copy detection on real photographs: edited copies of Tux Paint photos searched among the originals and distractors.

Every Tux Paint photo (``bench.datasets``, all categories: 430 photos with the Debian package of 2026) is
composited on a generated texture (seeded). A seeded permutation splits them: half are the **references**, a
quarter are **distractors** in the database, a quarter are never indexed. The database is the references, those
distractors, and Fashion-MNIST images (upscaled to 112 px RGB; 300 with ``--quick``, 2,000 otherwise) when
``dataset-fashion-mnist`` is installed. Queries are edited copies (:data:`EDITS`, :func:`edit`: a crop keeping
30–70% of the area, a rotation by 10–40°, a colour shift (hue, saturation, brightness, contrast), JPEG at quality
25–35, an overlaid shape and word drawn with PIL (no demo data needed), a mirror flip, a Gaussian blur, or two of
these then JPEG): of every reference (a **positive** query, whose one true match is that reference) and of every
never-indexed photo (a **negative** query: no copy in the database, as most DISC21 queries). Query i gets edit
``EDITS[i % 8]``, its parameters drawn from a generator seeded by (``--seed``, i): the whole benchmark is the same
on every run. With the 2026 package: 215 positive and 108 negative queries, 215 + 107 + 2,000 database images.

Columns: recall@1 -- the positive queries whose first result is their reference; micro-AP -- DISC21's
micro-average precision over the top 10 of every query, positive and negative
(``retrieval.metrics.micro_average_precision``); ``r1/<edit>`` -- recall@1 per edit. Trained rows train on the
database folder (no labels, transductive). Rows, budget and result files: :mod:`bench.photos`.

Rerun:  python -m bench.copy_detection --quick --groups baselines   # untrained rows
        python -m bench.copy_detection --minutes 3 --runs-dir runs/bench-copy-detection
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from bench import photos
from bench.common import logger
from bench.datasets import check_installed, composite_on_texture, load_split, stamp_categories

NAME = "copy_detection"
log = logger(NAME)
SIZE = 256
TOP_K = 10
SPLIT = (0.5, 0.25)  # references, indexed distractors; the rest are the negative queries' photos
FMNIST = {"quick": 300, "full": 2000}
FMNIST_SIZE = 112
WORDS = ("SALE", "copy", "Lookalike", "2026", "hello", "photo", "OK", "news")
HEADLINE = ("micro_ap", "recall@1")  # what "beats" means in the goals
COLUMNS = ("recall@1", "micro_ap", "r1/crop", "r1/rotate", "r1/overlay", "r1/combo")


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 30-70% of the area, aspect ratio within 3/4..4/3, anywhere in the image."""
    w, h = img.size
    area, ratio = rng.uniform(0.3, 0.7), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(w * np.sqrt(area * ratio))), min(h, round(h * np.sqrt(area / ratio)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(10, 40) * rng.choice([-1, 1])
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=fill)


def _colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue rotated by up to a sixth of the circle, saturation, brightness and contrast changed."""
    h, s, v = img.convert("HSV").split()
    shift = int(rng.uniform(-43, 43))
    h = h.point(lambda x: (x + shift) % 256)
    img = Image.merge("HSV", (h, s, v)).convert("RGB")
    for enhance, lo, hi in ((ImageEnhance.Color, 0.4, 1.8), (ImageEnhance.Brightness, 0.65, 1.35),
                            (ImageEnhance.Contrast, 0.65, 1.4)):
        img = enhance(img).enhance(rng.uniform(lo, hi))
    return img


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(25, 36)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A filled shape (15-35% of the side) and a word in a random colour, at random places."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    side = round(min(w, h) * rng.uniform(0.15, 0.35))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + side, y + side), fill=colour)
    font = ImageFont.load_default(size=max(10, round(min(w, h) * rng.uniform(0.08, 0.16))))
    word = WORDS[int(rng.integers(len(WORDS)))]
    at = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - h // 6))))
    draw.text(at, word, font=font, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def _flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(img)


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.5, 3.5) * min(img.size) / SIZE))


SINGLE = {"crop": _crop, "rotate": _rotate, "colour": _colour, "jpeg": _jpeg, "overlay": _overlay, "flip": _flip,
          "blur": _blur}
EDITS = (*SINGLE, "combo")  # combo: two other edits in random order, then JPEG


def edit(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """``img`` with edit ``kind`` (one of :data:`EDITS`) applied, every parameter drawn from ``rng``."""
    if kind == "combo":
        others = [k for k in SINGLE if k != "jpeg"]
        for k in rng.choice(others, size=2, replace=False):
            img = SINGLE[str(k)](img, rng)
        return _jpeg(img, rng)
    return SINGLE[kind](img.convert("RGB"), rng)


def query_edit(i: int, seed: int) -> tuple[str, np.random.Generator]:
    """The edit of query ``i`` and the generator of its parameters."""
    return EDITS[i % len(EDITS)], np.random.default_rng([seed, 7, i])


def split_photos(paths: list[Path], seed: int) -> tuple[list[Path], list[Path], list[Path]]:
    """(references, indexed distractors, never indexed): a seeded permutation cut by :data:`SPLIT`."""
    order = [paths[i] for i in np.random.default_rng([seed, 3]).permutation(len(paths))]
    a, b = round(len(order) * SPLIT[0]), round(len(order) * sum(SPLIT))
    return order[:a], order[a:b], order[b:]


def build(root: Path, seed: int, fmnist: int) -> dict:
    """Write ``root/db`` and ``root/queries``; return the ground truth and the counts."""
    stamps = [p for files in stamp_categories(min_per_category=1).values() for p in files]
    refs, distractors, unseen = split_photos(stamps, seed)
    db, qdir = root / "db", root / "queries"
    for sub in ("ref", "distractor"):
        (db / sub).mkdir(parents=True, exist_ok=True)
    qdir.mkdir(parents=True)
    originals = {}
    for i, p in enumerate(refs):
        originals[f"ref/{i:04d}.png"] = composite_on_texture(p, SIZE, seed)
    for name, im in originals.items():
        im.save(db / name)
    for j, p in enumerate(distractors):
        composite_on_texture(p, SIZE, seed).save(db / "distractor" / f"tux{j:04d}.png")
    n_fm = 0
    try:
        images, _ = load_split("train")
        for k in np.random.default_rng([seed, 5]).permutation(len(images))[:fmnist]:
            Image.fromarray(images[k]).convert("RGB").resize((FMNIST_SIZE,) * 2, Image.Resampling.BICUBIC).save(
                db / "distractor" / f"fmnist{k:05d}.png")
            n_fm += 1
    except FileNotFoundError as exc:
        log(f"no Fashion-MNIST distractors: {exc}")
    truth: dict[str, str | None] = {}
    sources: list = list(originals.items())
    sources += [(None, composite_on_texture(p, SIZE, seed)) for p in unseen]
    for i, (ref, im) in enumerate(sources):
        kind, rng = query_edit(i, seed)
        qname = f"{'pos' if ref else 'neg'}{i:04d}_{kind}.png"
        edit(im, kind, rng).save(qdir / qname)
        truth[qname] = ref
    return {"truth": truth, "references": len(refs), "tux_distractors": len(distractors),
            "fmnist_distractors": n_fm, "positive_queries": len(refs), "negative_queries": len(unseen)}


def score(encoder, root: Path, truth: dict[str, str | None]) -> dict:
    from retrieval.collection import scan
    from retrieval.embed import embed_collection
    from retrieval.metrics import micro_average_precision, top_k

    t0 = time.perf_counter()
    db = embed_collection(encoder, scan(root / "db"), progress=False)
    qs = embed_collection(encoder, scan(root / "queries"), progress=False)
    seconds = time.perf_counter() - t0
    where = {p: i for i, p in enumerate(db.paths)}
    target = np.array([where.get(truth[q], -2) if truth[q] else -1 for q in qs.paths])  # -1: no copy indexed
    scores, idx = top_k(qs.vectors, db.vectors, TOP_K)
    rel = idx == target[:, None]
    pos = target != -1
    kinds = np.array([q.rsplit("_", 1)[1].removesuffix(".png") for q in qs.paths])
    out = {"recall@1": float(rel[pos, 0].mean()),
           "micro_ap": micro_average_precision(scores, rel, int(pos.sum())),
           **{f"r1/{k}": float(rel[pos & (kinds == k), 0].mean()) for k in EDITS if (pos & (kinds == k)).any()}}
    return {**out, "database": len(db.paths), "queries": len(qs.paths),
            "unreadable": len(db.skipped) + len(qs.skipped), "embedded": len(db.paths) + len(qs.paths),
            "embed_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = photos.photo_parser(__doc__).parse_args(argv)
    check_installed()
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as tmp:
        root = Path(tmp)
        facts = build(root, args.seed, FMNIST["quick" if args.quick else "full"])
        truth = facts.pop("truth")
        return photos.run_benchmark(
            NAME, args, lambda enc: score(enc, root, truth), lambda: root / "db", COLUMNS, HEADLINE,
            f"Copy detection: {facts['positive_queries']} + {facts['negative_queries']} (no copy indexed) edited "
            f"photos against {facts['references']} originals + {facts['tux_distractors']} + "
            f"{facts['fmnist_distractors']} distractors",
            data={**facts, "size": SIZE, "edits": list(EDITS), "top_k": TOP_K,
                  "backgrounds": "generated textures (bench.datasets.texture), seeded",
                  "fmnist_size": FMNIST_SIZE, "micro_ap": "DISC21: all top-k pairs ranked by score, one list"})


if __name__ == "__main__":
    sys.exit(main())
