"""Embedding in bf16 against fp32: images/s of an encoder's forward pass, and how far the vectors move.

Per encoder spec (the scratch default ``random:resnet10t?size=64`` with ``avg`` and ``grid`` pooling, the distilled
student's ``tf_efficientnet_lite0`` at 112 px, the pretrained ``timm:tf_efficientnet_lite0`` at its 224 px):

* **speed** — ``Encoder.embed_uint8`` (the call an index build makes per batch) on a ready uint8 batch, fp32 and bf16
  autocast interleaved ``--repeats`` times, best of each kept, at 1 thread and at every core;
* **agreement** — the same photos (Tux Paint's, when ``tuxpaint-stamps-default`` is installed; else seeded noise)
  embedded in both: the cosine of each image's two vectors (min, mean) and the share of images whose nearest
  other image is the same in both.

Whether bf16 is used by default is :mod:`retrieval.precision`'s rule (native bf16 only); here both are forced, so
the run also measures a CPU without bf16 instructions (where bf16 is emulated, and slow).

Rerun:  python -m bench.embed_precision            # ~3 min
Writes ``bench/results/embed_precision[_quick].json``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from bench.common import logger, markdown_table, parser, quick_name, report, save_result
from bench.datasets import STAMPS

NAME = "embed_precision"
log = logger(NAME)
ENCODERS = ("random:resnet10t?size=64", "random:resnet10t?size=64&pool=grid", "random:tf_efficientnet_lite0?size=112",
            "timm:tf_efficientnet_lite0")
BATCH = 64
SECONDS = 3.0  # of each timing


def photos(n: int):
    from PIL import Image

    files = sorted(p for p in STAMPS.rglob("*.png") if "cartoon" not in p.parts)[:n] if STAMPS.is_dir() else []
    if files:
        return [Image.open(p).convert("RGB") for p in files], f"{len(files)} Tux Paint photos ({STAMPS})"
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(n)], "seeded noise"


def ips(encoder, x, seconds: float = SECONDS) -> float:
    encoder.embed_uint8(x)  # warm-up
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        encoder.embed_uint8(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def measure(spec: str, images, repeats: int) -> dict:
    import torch

    from retrieval.encoders import load_encoder

    enc = {p: load_encoder(spec) for p in ("fp32", "bf16")}
    enc["fp32"].autocast, enc["bf16"].autocast = None, torch.bfloat16
    s = enc["fp32"].image_size
    x = torch.randint(0, 256, (BATCH, 3, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    speed = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        best = {p: 0.0 for p in enc}
        for _ in range(repeats):
            for p in enc:  # interleaved: both under the same conditions
                best[p] = max(best[p], ips(enc[p], x))
        speed[str(threads)] = {**{f"{p}_ips": round(v, 1) for p, v in best.items()},
                               "bf16_speedup": round(best["bf16"] / best["fp32"], 2)}
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = enc["fp32"].embed_images(images), enc["bf16"].embed_images(images)
    cos = (a * b).sum(axis=1)
    nn_a = np.argsort(-(a @ a.T), axis=1)[:, 1]
    nn_b = np.argsort(-(b @ b.T), axis=1)[:, 1]
    return {"encoder": enc["fp32"].name, "image_size": s, "batch": BATCH, "threads": speed,
            "cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "nearest_same": round(float((nn_a == nn_b).mean()), 3),
            "max_similarity_change": round(float(np.abs(a @ a.T - b @ b.T).max()), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="the first encoder, 64 photos, one repeat", threads=False, seed=None)
    ap.add_argument("--encoders", nargs="+", default=None, help=f"default: {' '.join(ENCODERS)}")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timings (default 3; --quick 1)")
    ap.add_argument("--images", type=int, default=None, help="photos of the agreement check (default 256)")
    args = ap.parse_args(argv)
    encoders = args.encoders or list(ENCODERS[:1] if args.quick else ENCODERS)
    repeats = args.repeats or (1 if args.quick else 3)
    images, source = photos(args.images or (64 if args.quick else 256))
    figures = {}
    for spec in encoders:
        figures[spec] = measure(spec, images, repeats)
        log(f"{spec}: {figures[spec]}")
    path = save_result(quick_name(NAME, args.quick), figures, images=source, seconds_per_timing=SECONDS,
                       repeats=repeats)
    rows = [[f"`{spec}`", t, f"{v['fp32_ips']:.0f}", f"{v['bf16_ips']:.0f}", f"{v['bf16_speedup']:.2f}x",
             f"{f['cosine_min']:.4f} / {f['cosine_mean']:.4f}", f"{f['nearest_same']:.3f}"]
            for spec, f in figures.items() for t, v in f["threads"].items()]
    report(path, args, markdown_table(["encoder", "threads", "fp32 img/s", "bf16 img/s", "bf16 / fp32",
                                       "cosine min / mean", "same nearest"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
