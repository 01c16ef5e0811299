"""Embedding pipeline: decode + preprocess in DataLoader workers, batched inference in the main process."""

from __future__ import annotations

import os
import sys
import threading
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
    forward_threads: int = 0  # torch threads the forward ran on after the first batch (see ForwardThreads)

    @property
    def images_per_s(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else 0.0


def decode_size(encoder: Encoder) -> int:
    """Smallest side a decoded image needs for ``encoder.preprocess`` (which resizes the shorter side to it).

    JPEGs are decoded straight at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain scaling) as long as both sides stay
    at least this big: a 640x480 photo for a 64 px encoder decodes as 160x120, about half the decode time and a
    fifth of the resize time. Indexing and queries use the same value, so an indexed file searched for itself
    still scores 1.0.
    """
    return encoder.image_size


class ImageFiles(Dataset):
    """Decodes one file to the encoder's uint8 input; a bad file yields its reason instead of raising."""

    def __init__(self, root: Path, paths: list[str], encoder: Encoder):
        self.root, self.paths, self.preprocess = root, paths, encoder.preprocess
        self.reduce_to = decode_size(encoder)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        """``(i, uint8 tensor or None, reason or None, CPU seconds spent)``."""
        t0 = time.thread_time()
        try:
            x = self.preprocess(load_image(self.root / self.paths[i], reduce_to=self.reduce_to))
            return i, x, None, time.thread_time() - t0
        except BadImageError as exc:
            return i, None, exc.reason, time.thread_time() - t0


def _collate(batch):
    good = [(i, x) for i, x, _, _ in batch if x is not None]
    bad = [(i, reason) for i, x, reason, _ in batch if x is None]
    idx = [i for i, _ in good]
    tensors = torch.stack([x for _, x in good]) if good else None
    return idx, tensors, bad, sum(item[3] for item in batch)


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(n_items: int, batch_size: int) -> int:
    """Decode workers: none for tiny jobs (process start-up costs more than it saves), else up to cores - 1."""
    if n_items <= 2 * batch_size:
        return 0
    return max(1, min(4, cpu_count() - 1))


# Threads of the forward pass while decode workers run. Decode workers and torch's OpenMP threads share the same
# cores; with more runnable threads than cores, an OpenMP thread waiting at a barrier for a descheduled peer spins,
# so a decode worker stalls the whole forward instead of using a core of its own. Embedding therefore starts with
# ``cores - workers`` torch threads (decoding and the forward side by side, no oversubscription) and looks at the
# first batch: CPU time per image of decoding (reported by the workers) against CPU time per image of the forward
# (the calling thread's, which is busy for the whole forward). If the workers would sit idle most of the time
# (decoding under 30 % of the forward, e.g. a ResNet-18 at 224 px), the caller's thread count comes back: a forward
# twice as wide gains more than the occasional decode costs. If decoding is a sizeable share (a ResNet-10 at 64 px
# on 640x480 JPEGs), the forward stays narrow and runs in parallel with decoding. See bench/embed_throughput.py.
_IDLE_WORKERS = 0.3
_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


class ForwardThreads:
    """Narrows torch's intra-op threads for one embedding run, then restores them (see the note above).

    torch's thread count is per calling thread for OpenMP but also seeds threads started later, so concurrent runs
    in one process share the value saved by the first of them rather than saving each other's narrowed one.
    """

    def __init__(self, encoder: Encoder, workers: int):
        self.workers = workers
        self.narrow = max(1, cpu_count() - workers)
        self.active = (encoder.device.type == "cpu" and encoder.runs_network and workers > 0
                       and torch.get_num_threads() > self.narrow)
        self.saved = 0

    def __enter__(self) -> "ForwardThreads":
        global _threads_users, _threads_saved
        if self.active:
            with _threads_lock:
                if _threads_users == 0:
                    _threads_saved = torch.get_num_threads()
                _threads_users += 1
                self.saved = _threads_saved
            torch.set_num_threads(self.narrow)
        return self

    def observe(self, images: int, decode_s: float, forward_s: float) -> None:
        """After the first batch: keep the narrow forward, or give the caller's threads back."""
        if not self.active or images == 0:
            return
        self.active = False
        if decode_s < _IDLE_WORKERS * self.workers * forward_s:
            torch.set_num_threads(self.saved)

    def __exit__(self, *exc) -> None:
        global _threads_users
        if not self.saved:
            return
        with _threads_lock:
            _threads_users -= 1
        torch.set_num_threads(self.saved)


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
    loader = DataLoader(ImageFiles(Path(collection.root), paths, encoder), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, shuffle=False,
                        pin_memory=encoder.device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    done = 0
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False) as bar, \
            ForwardThreads(encoder, workers) as threads:
        for idx, tensors, bad, decode_s in loader:
            if tensors is not None:
                t0 = time.thread_time()
                vectors[idx] = encoder.embed_uint8(tensors)
                threads.observe(len(idx), decode_s, time.thread_time() - t0)
                ok[idx] = True
            skipped.extend(Skipped(paths[i], reason) for i, reason in bad)
            done += len(idx) + len(bad)
            bar.update(len(idx) + len(bad))
            if on_progress is not None:
                on_progress(done, n)
        forward_threads = torch.get_num_threads()
    seconds = time.perf_counter() - start
    keep = np.flatnonzero(ok)
    result = EmbedResult([paths[i] for i in keep], vectors[keep], skipped, seconds, forward_threads)
    if progress and n:
        print(f"embedded {len(keep)} images in {seconds:.1f}s ({result.images_per_s:.1f} images/s)"
              + (f", {len(skipped)} skipped" if skipped else ""), file=sys.stderr)
    return result


def embed_query(encoder: Encoder, source) -> np.ndarray:
    """One query image (path, bytes or PIL image) → (dim,) vector. Raises BadImageError for a bad image."""
    img = load_image(source, reduce_to=decode_size(encoder))
    return encoder.embed_images([img])[0]
