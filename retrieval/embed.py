"""Embedding pipeline: decode + preprocess in DataLoader workers, batched inference in the main process."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .collection import Collection, Skipped
from .encoders import Encoder
from .errors import BadImageError, LookalikeError
from .imageio import load_image


@dataclass
class EmbedResult:
    """Vectors for the images that decoded; ``paths[i]`` ↔ ``vectors[i]``. Failures are in ``skipped``."""

    paths: list[str]
    vectors: np.ndarray  # (N, dim) float32, L2-normalised
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else 0.0


class _ImageFiles(Dataset):
    """Decodes one file to the encoder's uint8 input; a bad file yields its reason instead of raising."""

    def __init__(self, root: Path, paths: list[str], encoder: Encoder):
        self.root, self.paths, self.preprocess = root, paths, encoder.preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.root / self.paths[i])), None
        except BadImageError as exc:
            return i, None, exc.reason


def _collate(batch):
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, reason) for i, x, reason in batch if x is None]
    idx = [i for i, _ in good]
    tensors = torch.stack([x for _, x in good]) if good else None
    return idx, tensors, bad


def default_workers(n_items: int, batch_size: int) -> int:
    """Decode workers: none for tiny jobs (process start-up costs more than it saves), else up to cores - 1."""
    if n_items <= 2 * batch_size:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def embed_collection(encoder: Encoder, collection: Collection, paths: list[str] | None = None,
                     batch_size: int = 64, workers: int | None = None, progress: bool = True,
                     desc: str = "embedding", on_progress=None) -> EmbedResult:
    """Embed ``paths`` (default: every item of the collection) with ``encoder``.

    ``on_progress(done, total)`` is called after each batch (the web UI's progress bar hooks in here).
    """
    from tqdm import tqdm

    if paths is None:
        paths = [it.path for it in collection.items]
    n = len(paths)
    if batch_size < 1:
        raise LookalikeError("batch size must be at least 1")
    workers = default_workers(n, batch_size) if workers is None else workers
    vectors = np.zeros((n, encoder.dim), np.float32)
    ok = np.zeros(n, bool)
    skipped: list[Skipped] = []
    loader = DataLoader(_ImageFiles(Path(collection.root), paths, encoder), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, shuffle=False,
                        pin_memory=encoder.device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    done = 0
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False) as bar:
        for idx, tensors, bad in loader:
            if tensors is not None:
                vectors[idx] = encoder.embed_uint8(tensors)
                ok[idx] = True
            skipped.extend(Skipped(paths[i], reason) for i, reason in bad)
            done += len(idx) + len(bad)
            bar.update(len(idx) + len(bad))
            if on_progress is not None:
                on_progress(done, n)
    seconds = time.perf_counter() - start
    keep = np.flatnonzero(ok)
    result = EmbedResult([paths[i] for i in keep], vectors[keep], skipped, seconds)
    if progress and n:
        print(f"embedded {len(keep)} images in {seconds:.1f}s ({result.images_per_s:.1f} images/s)"
              + (f", {len(skipped)} skipped" if skipped else ""), file=sys.stderr)
    return result


def embed_query(encoder: Encoder, source) -> np.ndarray:
    """One query image (path, bytes or PIL image) → (dim,) vector. Raises BadImageError for a bad image."""
    img = load_image(source)
    return encoder.embed_images([img])[0]
