"""Where the time of ``lookalike index build`` goes, phase by phase, on a generated folder of JPEGs.

Two measurements on the same folder (``--n`` JPEGs of 640x480, quality 90: gradients and noise, seeded):

* **the command** — ``lookalike index build`` in a fresh process, wall seconds, as a user runs it (re-exec under
  tcmalloc included where installed), and a bare ``python -c pass`` and ``import app.cli`` for the process start;
* **the phases, one after another in one process** (no decode workers, so each is timed alone): imports (torch,
  timm, faiss, the retrieval modules, each timed in a fresh process: what a cold command pays), model build
  (``load_encoder``), scan (``retrieval.collection.scan``: walk + header reads), decode (``load_image``, the
  loader's ``reduce_to`` draft included), preprocess (``Encoder.preprocess``: resize, crop, to uint8), forward
  (``Encoder.embed_uint8`` in the product's precision, batches of 64), index write (``IndexStore.create``: FAISS +
  SQLite + manifest) and thumbnails (``ThumbnailCache.get`` per item, which the app makes on first view, not the
  build).

The build overlaps decode/preprocess (worker processes) with the forward, so the command's wall time is below the
phases' sum when the workers keep up; the rows say which phase bounds it.

Rerun:  python -m bench.build_profile --quick    # 96 JPEGs
        python -m bench.build_profile            # 384 JPEGs (the issue's small folder)
Writes ``bench/results/build_profile.json`` (``build_profile_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import quick_name, save_result

ENCODER = "random:tf_efficientnet_lite0?size=224"
IMPORTS = {"python_start": "pass", "app.cli": "import app.cli", "torch": "import torch",
           "torch+timm": "import torch, timm", "torch+timm+faiss": "import torch, timm, faiss",
           "retrieval.embed+index_store": "import retrieval.embed, retrieval.index_store"}


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    files = []
    for i in range(n):
        sub = folder / f"d{i % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a / w, yy * b / h, (xx + yy) * c / (w + h)], axis=-1) * 255
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        files.append(sub / f"{i:05d}.jpg")
        Image.fromarray(img).save(files[-1], quality=90)
    return files


def seconds_of(code: str) -> float:
    """Wall seconds of a fresh ``python -c code`` (start-up included)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
    return time.perf_counter() - t


def command(folder: Path, indexes: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app.cli", "index", "build", str(folder), "--encoder", ENCODER,
                    "--name", "cmd", "--indexes", str(indexes), "--json"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def phases(folder: Path, indexes: Path, work: Path) -> dict:
    out = {}
    t = time.perf_counter()
    import torch

    from retrieval.collection import scan
    from retrieval.embed import decode_size
    from retrieval.encoders import load_encoder
    from retrieval.imageio import load_image
    from retrieval.index_store import IndexStore
    from retrieval.thumbnails import ThumbnailCache
    out["imports_in_process_s"] = time.perf_counter() - t

    def timed(name, fn):
        t = time.perf_counter()
        value = fn()
        out[f"{name}_s"] = time.perf_counter() - t
        return value

    encoder = timed("model_build", lambda: load_encoder(ENCODER))
    collection = timed("scan", lambda: scan(folder, labels=True))
    paths = [folder / it.path for it in collection.items]
    images = timed("decode", lambda: [load_image(p, reduce_to=decode_size(encoder)) for p in paths])
    x = timed("preprocess", lambda: torch.stack([encoder.preprocess(im) for im in images]))
    vecs = timed("forward", lambda: np.concatenate([encoder.embed_uint8(x[i:i + 64]) for i in range(0, len(x), 64)]))
    timed("index_write", lambda: IndexStore.create(indexes, "phases", encoder.identity, encoder.dim, folder,
                                                   items=collection.items, vectors=vecs))
    cache = ThumbnailCache(work / "thumbs")
    timed("thumbnails", lambda: [cache.get(p) for p in paths])
    return {k: round(v, 3) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="96 JPEGs")
    parser.add_argument("--n", type=int, help="JPEGs (default 384; 96 with --quick)")
    args = parser.parse_args(argv)
    n = args.n or (96 if args.quick else 384)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_jpegs(work / "photos", n)
        imports = {k: round(seconds_of(code), 3) for k, code in IMPORTS.items()}
        wall = command(work / "photos", work / "indexes")
        figures = {"command_wall_s": round(wall, 3), "command_images_per_s": round(n / wall, 1),
                   "imports_fresh_process_s": imports, "phases": phases(work / "photos", work / "indexes", work)}
    p = figures["phases"]
    figures["phases_sum_s"] = round(sum(v for k, v in p.items() if k.endswith("_s")), 3)
    figures["forward_images_per_s"] = round(n / p["forward_s"], 1)  # the bare forward: the command's limit
    figures["command_vs_bare_forward"] = round(figures["command_images_per_s"] / figures["forward_images_per_s"], 3)
    path = save_result(quick_name("build_profile", args.quick), figures, n=n, size="640x480", encoder=ENCODER,
                       torch_threads_env=os.environ.get("OMP_NUM_THREADS"))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
