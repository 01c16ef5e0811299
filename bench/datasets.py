"""The benchmarks' data sets: each a function that writes or loads one, so benchmarks import data, not each other.

* **synthetic photos** (:func:`make_jpegs`, :func:`link_folder`): distinct photo-like JPEGs (a soft gradient,
  shapes, sensor noise), seeded; hard links make a big collection that costs no disk;
* **clustered vectors** (:class:`ClusteredGaussian`): a seeded mixture of Gaussian clusters on the unit sphere, for
  the index benchmarks at a million vectors without embedding a million images;
* **Fashion-MNIST** (Debian ``dataset-fashion-mnist``, :func:`load_split`): 70,000 28x28 product photos, 10 classes;
* **Tux Paint stamps** (Debian ``tuxpaint-stamps-default``, :func:`make_folder`): photo cut-outs with an alpha
  channel under ``/usr/share/tuxpaint/stamps/<category>/…``. A category is the folder a stamp lies in
  (``food/fruit``, ``animals/birds``…); the ``cartoon/`` folders (drawings) and ``symbols/`` are left out. A stamp
  is composited ``white`` (cropped to its visible pixels, centred on a white square with a 5% margin, resized:
  a centre crop keeps the whole object) or on a ``texture`` (a generated photo-like background: a smooth random
  colour field, two octaves of value noise, sometimes stripes, an out-of-focus blur and sensor grain; its longer
  side 55–85% of the canvas, at a random place), everything drawn from a generator seeded by (``seed``, the stamp's
  path). The stamps are GPL-2 and never committed: :func:`make_folder` writes them where a benchmark runs;
* **the demo's emoji** (:class:`EmojiPairs`, :func:`emoji_codes`): ``app.demo_data``'s two-vendor collection and
  its ground truth.

    python -m bench.datasets tuxpaint OUT [--min-per-category 8] [--size 256] [--background texture] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from retrieval.errors import LookalikeError
from retrieval.imageio import jpeg_round_trip

# ------------------------------------------------------------------------------------------- synthetic photos
JPEG_SIZE = (640, 480)
JPEG_QUALITY = 90


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = JPEG_SIZE, quality: int = JPEG_QUALITY,
               seed: int = 0) -> dict:
    """``n`` distinct photo-like JPEGs under ``folder`` (16 sub-folders); returns what was written."""
    from PIL import ImageDraw

    w, h = size
    cw, ch = w // 2, h // 2  # gradient and shapes are drawn at half size, then upscaled: soft edges, no blur pass
    rng = np.random.default_rng(seed)
    noise_bank = np.clip(rng.normal(0.0, 7.0, (h + 64, w + 64, 3)), -127, 127).astype(np.int16)
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    yy /= ch
    xx /= cw
    total = 0
    for i in range(n):
        corners = rng.uniform(30, 225, (3, 3)).astype(np.float32)
        base = corners[:, 0] + (corners[:, 1] - corners[:, 0]) * xx[..., None] + (corners[:, 2] - corners[:, 0]) * \
            yy[..., None]
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(6, 16))):
            x0, y0 = rng.uniform(-0.1 * cw, cw), rng.uniform(-0.1 * ch, ch)
            sw, sh = rng.uniform(0.05, 0.45) * cw, rng.uniform(0.05, 0.45) * ch
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = int(rng.integers(3))
            box = [x0, y0, x0 + sw, y0 + sh]
            if shape == 0:
                draw.ellipse(box, fill=fill)
            elif shape == 1:
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(x0, y0 + sh), (x0 + sw / 2, y0), (x0 + sw, y0 + sh)], fill=fill)
        img = img.resize((w, h), Image.Resampling.BICUBIC)
        oy, ox = int(rng.integers(64)), int(rng.integers(64))
        arr = np.asarray(img).astype(np.int16) + noise_bank[oy:oy + h, ox:ox + w]
        path = folder / f"g{i % 16:02d}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=quality)
        total += path.stat().st_size
    return {"count": n, "width": w, "height": h, "jpeg_quality": quality, "seed": seed,
            "mean_file_bytes": round(total / max(n, 1)), "decoded_bytes_per_image": w * h * 3}


def link_folder(src_files: list[Path], dest: Path, n: int) -> None:
    """``n`` hard links (cycling over ``src_files``) under ``dest``: a big collection that costs no disk."""
    for i in range(n):
        target = dest / f"g{i % 16:02d}" / f"img{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src_files[i % len(src_files)], target)
        except OSError:  # a filesystem without hard links: real copies then
            target.write_bytes(src_files[i % len(src_files)].read_bytes())


def jpeg_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


# ------------------------------------------------------------------------------------------ clustered vectors
class ClusteredGaussian:
    """Seeded mixture of Gaussian clusters in a ``latent``-d subspace of R^dim, plus isotropic noise, normalised."""

    def __init__(self, dim: int = 512, clusters: int = 4096, latent: int = 32, within: float = 0.5,
                 noise: float = 0.05, seed: int = 0):
        self.dim, self.clusters, self.latent, self.within, self.noise, self.seed = (dim, clusters, latent, within,
                                                                                      noise, seed)
        rng = np.random.default_rng(seed)
        self.proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # orthonormal rows
        self.centres = rng.standard_normal((clusters, latent)).astype(np.float32)

    def describe(self) -> dict:
        return {"kind": "mixture of isotropic Gaussian clusters in a latent subspace + isotropic noise, "
                        "L2-normalised",
                "formula": "x = normalise((c_j + within*N(0,I_latent)) @ P + noise*N(0,I_dim)), c_j ~ N(0,I_latent), "
                           "j uniform, P random orthonormal rows",
                "dim": self.dim, "clusters": self.clusters, "latent_dim": self.latent, "within_std": self.within,
                "noise_std": self.noise, "seed": self.seed, "base_stream": self.seed + 1,
                "query_stream": self.seed + 2}

    def sample(self, n: int, stream: int, chunk: int = 65536) -> np.ndarray:
        rng = np.random.default_rng(stream)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = self.centres[rng.integers(0, self.clusters, m)]
            z += self.within * rng.standard_normal((m, self.latent), dtype=np.float32)
            x = z @ self.proj
            x += self.noise * rng.standard_normal((m, self.dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start:start + m] = x
        return out


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """The array in an IDX file (``.gz`` or not): unsigned bytes only, as the MNIST family uses. Raises
    LookalikeError for anything else or a file whose size does not match its header."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise LookalikeError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise LookalikeError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise LookalikeError(f"{path}: IDX element type 0x{data[2]:02x} is not supported (only unsigned bytes)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise LookalikeError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise LookalikeError(f"{path}: {len(data) - header} bytes of data for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


GREY_BATCH = 64  # at 224 px, batches of 256 embedded slower than 64 on a 2-core CPU (activations past the caches)


def embed_grey(encoder, images: np.ndarray, batch: int = GREY_BATCH) -> tuple[np.ndarray, float]:
    """(N, H, W) uint8 grey images -> ((N, dim) vectors, seconds), resized on the encoder's own terms."""
    import torch
    import torch.nn.functional as F

    mode = "bicubic" if encoder.interpolation == "bicubic" else "bilinear"
    s = encoder.image_size
    out = np.zeros((len(images), encoder.dim), np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).float()[:, None]  # (B, 1, H, W)
        x = F.interpolate(x, size=(s, s), mode=mode, align_corners=False).round_().clamp_(0, 255)
        out[start:start + len(x)] = encoder.embed_uint8(x.to(torch.uint8).expand(-1, 3, -1, -1).contiguous())
    return out, time.perf_counter() - t0


def load_split(split: str, root: Path = FASHION_MNIST) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of ``split`` ("train" or "test")."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root} is missing: install the Debian package dataset-fashion-mnist")
    images, labels = (read_idx(Path(root) / name) for name in FILES[split])
    if len(images) != len(labels):
        raise LookalikeError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def subsample(n: int, keep: int | None, seed: int, salt: int) -> np.ndarray:
    """Indices of ``keep`` of ``n`` items (a seeded permutation's first ``keep``, sorted), or all of them."""
    if keep is None or keep >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, salt]).permutation(n)[:keep])


def write_pngs(images: np.ndarray, folder: Path, prefix: str = "") -> Path:
    """Each grey image as ``folder/<prefix><index>.png``; returns ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{prefix}{i:05d}.png")
    return folder


# ------------------------------------------------------------------------------------------- Tux Paint stamps
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
    """The stamp at ``path`` as an RGB ``size``×``size`` photo on white (module docstring, Tux Paint)."""
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
    """A photo-like RGB background (module docstring, Tux Paint), every choice drawn from ``rng``."""
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
    """The stamp at ``path`` on a generated background, ``size``×``size`` RGB (module docstring, Tux Paint)."""
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

# ------------------------------------------------------------------------------------------------- demo emoji
def emoji_codes(meta: Path | None) -> dict[str, str]:
    """Relative file path (``subcategory/short_name.png``) -> unified code, from the demo's ``emoji.json``
    (``app.demo_data.prepare_demo_data``); empty without it."""
    if meta is None or not Path(meta).is_file():
        return {}
    from app.demo_data import file_name

    return {f"{r['subcategory']}/{file_name(r)}": r["unified"] for r in json.loads(Path(meta).read_text())}


class EmojiPairs:
    """The demo's two vendors as a retrieval data set: ``collection`` and ``queries`` (scanned, labels = subcategory),
    ``query_paths`` (the queries whose emoji the collection holds), ``truth`` (query path -> index of its one
    relevant collection item, by unified code, or by relative file name without ``emoji.json``)."""

    def __init__(self, collection_dir: Path, queries_dir: Path, meta: Path | None):
        from retrieval.collection import scan

        self.collection = scan(collection_dir, labels=True)
        self.queries = scan(queries_dir, labels=True)
        codes = emoji_codes(meta)
        key = (lambda p: codes.get(p, p))  # the unified code, or the file's relative path without emoji.json
        self.db_keys = [key(it.path) for it in self.collection.items]
        self.db_labels = [it.label or "" for it in self.collection.items]
        where = {k: i for i, k in enumerate(self.db_keys)}
        self.query_paths = [it.path for it in self.queries.items if key(it.path) in where]
        self.query_labels = {it.path: it.label or "" for it in self.queries.items}
        self.truth = {p: where[key(p)] for p in self.query_paths}
        self.ground_truth = "unified code (emoji.json)" if codes else "relative file name"
        self.dropped = len(self.queries.items) - len(self.query_paths)



# ----- copy detection: edited copies of the Tux Paint photos among distractors (DISC21's protocol) -----------------
COPY_SIZE = 256
COPY_SPLIT = (0.5, 0.25)  # references, indexed distractors; the rest are the negative queries' photos
COPY_FMNIST = {"quick": 300, "full": 2000}
COPY_FMNIST_SIZE = 112
COPY_WORDS = ("SALE", "copy", "Lookalike", "2026", "hello", "photo", "OK", "news")


def _copy_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 30-70% of the area, aspect ratio within 3/4..4/3, anywhere in the image."""
    w, h = img.size
    area, ratio = rng.uniform(0.3, 0.7), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(w * np.sqrt(area * ratio))), min(h, round(h * np.sqrt(area / ratio)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _copy_rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(10, 40) * rng.choice([-1, 1])
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=fill)


def _copy_colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue rotated by up to a sixth of the circle, saturation, brightness and contrast changed."""
    h, s, v = img.convert("HSV").split()
    shift = int(rng.uniform(-43, 43))
    h = h.point(lambda x: (x + shift) % 256)
    img = Image.merge("HSV", (h, s, v)).convert("RGB")
    for enhance, lo, hi in ((ImageEnhance.Color, 0.4, 1.8), (ImageEnhance.Brightness, 0.65, 1.35),
                            (ImageEnhance.Contrast, 0.65, 1.4)):
        img = enhance(img).enhance(rng.uniform(lo, hi))
    return img


def _copy_jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return jpeg_round_trip(img, int(rng.integers(25, 36)))


def _copy_overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A filled shape (15-35% of the side) and a word in a random colour, at random places."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    side = round(min(w, h) * rng.uniform(0.15, 0.35))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + side, y + side), fill=colour)
    font = ImageFont.load_default(size=max(10, round(min(w, h) * rng.uniform(0.08, 0.16))))
    word = COPY_WORDS[int(rng.integers(len(COPY_WORDS)))]
    at = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - h // 6))))
    draw.text(at, word, font=font, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def _copy_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(img)


def _copy_blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.5, 3.5) * min(img.size) / COPY_SIZE))


COPY_SINGLE = {"crop": _copy_crop, "rotate": _copy_rotate, "colour": _copy_colour, "jpeg": _copy_jpeg,
               "overlay": _copy_overlay, "flip": _copy_flip, "blur": _copy_blur}
COPY_EDITS = (*COPY_SINGLE, "combo")  # combo: two other edits in random order, then JPEG


def copy_edit(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """``img`` with edit ``kind`` (one of :data:`COPY_EDITS`) applied, every parameter drawn from ``rng``."""
    if kind == "combo":
        others = [k for k in COPY_SINGLE if k != "jpeg"]
        for k in rng.choice(others, size=2, replace=False):
            img = COPY_SINGLE[str(k)](img, rng)
        return _copy_jpeg(img, rng)
    return COPY_SINGLE[kind](img.convert("RGB"), rng)


def copy_query_edit(i: int, seed: int) -> tuple[str, np.random.Generator]:
    """The edit of query ``i`` and the generator of its parameters."""
    return COPY_EDITS[i % len(COPY_EDITS)], np.random.default_rng([seed, 7, i])


def copy_split_photos(paths: list[Path], seed: int) -> tuple[list[Path], list[Path], list[Path]]:
    """(references, indexed distractors, never indexed): a seeded permutation cut by :data:`COPY_SPLIT`."""
    order = [paths[i] for i in np.random.default_rng([seed, 3]).permutation(len(paths))]
    a, b = round(len(order) * COPY_SPLIT[0]), round(len(order) * sum(COPY_SPLIT))
    return order[:a], order[a:b], order[b:]


def build_copy_detection(root: Path, seed: int, fmnist: int) -> dict:
    """Write ``root/db`` and ``root/queries``; return the ground truth and the counts."""
    stamps = [p for files in stamp_categories(min_per_category=1).values() for p in files]
    refs, distractors, unseen = copy_split_photos(stamps, seed)
    db, qdir = root / "db", root / "queries"
    for sub in ("ref", "distractor"):
        (db / sub).mkdir(parents=True, exist_ok=True)
    qdir.mkdir(parents=True)
    originals = {}
    for i, p in enumerate(refs):
        originals[f"ref/{i:04d}.png"] = composite_on_texture(p, COPY_SIZE, seed)
    for name, im in originals.items():
        im.save(db / name)
    for j, p in enumerate(distractors):
        composite_on_texture(p, COPY_SIZE, seed).save(db / "distractor" / f"tux{j:04d}.png")
    n_fm = 0
    try:
        images, _ = load_split("train")
        for k in np.random.default_rng([seed, 5]).permutation(len(images))[:fmnist]:
            Image.fromarray(images[k]).convert("RGB").resize((COPY_FMNIST_SIZE,) * 2, Image.Resampling.BICUBIC).save(
                db / "distractor" / f"fmnist{k:05d}.png")
            n_fm += 1
    except FileNotFoundError as exc:
        print(f"no Fashion-MNIST distractors: {exc}", file=sys.stderr)
    truth: dict[str, str | None] = {}
    sources: list = list(originals.items())
    sources += [(None, composite_on_texture(p, COPY_SIZE, seed)) for p in unseen]
    for i, (ref, im) in enumerate(sources):
        kind, rng = copy_query_edit(i, seed)
        qname = f"{'pos' if ref else 'neg'}{i:04d}_{kind}.png"
        copy_edit(im, kind, rng).save(qdir / qname)
        truth[qname] = ref
    return {"truth": truth, "references": len(refs), "tux_distractors": len(distractors),
            "fmnist_distractors": n_fm, "positive_queries": len(refs), "negative_queries": len(unseen)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="write a data set's folder")
    sub = ap.add_subparsers(dest="data", required=True)
    tux = sub.add_parser("tuxpaint", help="the Tux Paint stamps as labelled folders")
    tux.add_argument("out", type=Path)
    tux.add_argument("--min-per-category", type=int, default=8)
    tux.add_argument("--size", type=int, default=256)
    tux.add_argument("--background", choices=BACKGROUNDS, default="white")
    tux.add_argument("--seed", type=int, default=0, help="seed of the textured backgrounds")
    args = ap.parse_args(argv)
    counts = make_folder(args.out, args.min_per_category, args.size, background=args.background, seed=args.seed)
    print(f"{sum(counts.values())} photos in {len(counts)} categories under {args.out}")
    for category, n in counts.items():
        print(f"  {n:4d}  {category}")


if __name__ == "__main__":
    main()
