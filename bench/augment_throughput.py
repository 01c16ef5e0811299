"""Photometric augmentation speed: :class:`training.augment.BatchAugment` on whole uint8 batches against the same
torchvision v2 ops image by image (the figures quoted in :mod:`training.augment`'s docstring).

Rerun:  python -m bench.augment_throughput --threads 2 [--device cuda] [--image-size 64]
Writes ``bench/results/augment_throughput[_quick].json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import parser, quick_name, report, save_result
from training.augment import AugmentConfig, BatchAugment

NAME = "augment_throughput"


def benchmark_photometric(image_size: int = 64, batch_size: int = 256, repeats: int = 5,
                          threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Images per second of :class:`BatchAugment` against the same photometric ops through torchvision v2 one
    image at a time, on uint8 tensors and on PIL images (the usual in-worker recipe).

    ``threads`` sets ``torch.set_num_threads`` for the measurement; per-image baselines always run on the CPU.
    """
    from torchvision.transforms import v2

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        cfg = AugmentConfig(image_size=image_size)
        x = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
        pils = [v2.functional.to_pil_image(img) for img in x]
        b, c, s, h = cfg.jitter
        photometric = [
            v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=cfg.jitter_p),
            v2.RandomGrayscale(cfg.gray_p),
            v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, cfg.blur_sigma)], p=cfg.blur_p),
        ]
        finish = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
        per_image = v2.Compose(photometric + finish)
        batched = BatchAugment(cfg).to(device)
        xd = x.to(device)

        def sync() -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def timed(fn: Callable[[], Any]) -> float:
            fn()  # warm-up
            sync()
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync()
                best = min(best, time.perf_counter() - t0)
            return batch_size / best

        with torch.inference_mode():
            result = {"image_size": image_size, "batch_size": batch_size, "threads": torch.get_num_threads(),
                      "device": device, "batched_images_per_s": timed(lambda: batched(xd))}
            result["per_image_v2_tensor_images_per_s"] = timed(lambda: torch.stack([per_image(i) for i in x]))
            result["per_image_v2_pil_images_per_s"] = timed(lambda: torch.stack([per_image(i) for i in pils]))
        result["speedup_vs_tensor"] = result["batched_images_per_s"] / result["per_image_v2_tensor_images_per_s"]
        result["speedup_vs_pil"] = result["batched_images_per_s"] / result["per_image_v2_pil_images_per_s"]
        return result
    finally:
        torch.set_num_threads(old_threads)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="a batch of 64, 2 repeats", seed=None)
    ap.add_argument("--device", default="cpu", help="where the batched augmentation runs (default cpu)")
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args(argv)
    batch, repeats = (64, 2) if args.quick else (256, 5)
    figures = benchmark_photometric(args.image_size, batch, repeats, threads=args.threads, device=args.device)
    path = save_result(quick_name(NAME, args.quick), figures, quick=args.quick, repeats=repeats)
    report(path, args, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
