"""Training data: two augmented views per image of a scanned :class:`~retrieval.collection.Collection`.

Three properties the trainer relies on:

* **Deterministic views.** The geometric augmentation of image ``i`` in epoch ``e`` is drawn from a generator seeded
  with ``(seed, e, i)``, not from whatever state a DataLoader worker happens to be in, and the photometric
  augmentation of a batch from one seeded with ``(seed, e, first image of the batch)`` (:func:`batch_seed`). The
  views are therefore the same with 0 or 8 workers, in one process or split over data-parallel ranks, and after a
  resume.
* **Resumable order.** :class:`EpochSampler` shuffles with a permutation that is a pure function of
  ``(seed, epoch)`` and can start part-way through an epoch, so a resumed run sees exactly the batches an
  uninterrupted one would have seen. It also does the data-parallel split (see its docstring), which is why the
  trainer uses it instead of ``DistributedSampler`` (that one cannot start mid-epoch).
* **Bad files never stop a run.** A scan reads headers only, so a truncated file shows up at decode time. The
  dataset then substitutes the next decodable image (keeping every batch full, which the cross-rank gathers need)
  and reports the bad file with the batch; the trainer records it in the run's ``encoder.json``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from retrieval.collection import Collection, scan
from retrieval.embed import cpu_count
from retrieval.errors import BadImageError, LookalikeError
from retrieval.imageio import MAX_PIXELS, load_image

__all__ = ["TwoViewDataset", "EpochSampler", "ViewBatcher", "collate_views", "sample_seed", "batch_seed",
           "data_fingerprint", "TrainingData", "open_data", "default_workers"]

# How many following images a bad file may be replaced by before the dataset gives up (a folder where this many
# consecutive files fail to decode is not worth training on).
_MAX_SUBSTITUTES = 64


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one (run seed, epoch, image) triple."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


def batch_seed(seed: int, keys) -> int:
    """Seed of a batch's photometric augmentation from the ``(epoch, index)`` keys it was fetched with: a function
    of the run seed, the epoch and the batch's first image, which identify the batch (and the rank's slice of it)
    whatever the number of workers or ranks."""
    epoch, index = keys[0] if keys else (0, 0)
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index, 1]).generate_state(2, np.uint64)[0] >> 1)


def data_fingerprint(collection: Collection) -> str:
    """Short hash of the collection's (path, size, mtime) list: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    for it in collection.items:
        h.update(f"{it.path}\0{it.size}\0{it.mtime:.6f}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


class TwoViewDataset(Dataset):
    """``dataset[(epoch, i)] -> (view1, view2, bad)``: two uint8 (3, S, S) views of image ``i`` and a list of
    ``(path, reason)`` for files that failed to decode on the way (usually empty); with multi-crop
    ``(view1, view2, local, bad)``, ``local`` the (N, 3, s, s) local crops.

    ``transform`` maps a PIL RGB image to two uint8 views (``training.augment.TwoViewTransform``). ``reduce_to``
    lets big JPEGs decode at a fraction of their size (the crops are small anyway).
    """

    def __init__(self, collection: Collection, transform, seed: int = 0, reduce_to: int | None = None,
                 max_pixels: int = MAX_PIXELS):
        if not collection.items:
            raise LookalikeError(f"no usable images in {collection.root}")
        self.root = Path(collection.root)
        self.paths = [it.path for it in collection.items]
        self.transform = transform
        self.seed = int(seed)
        self.reduce_to = reduce_to
        self.max_pixels = max_pixels
        self._bad: dict[int, str] = {}  # index -> reason, per process (each worker keeps its own)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int):
        if i in self._bad:
            raise BadImageError(self._bad[i])
        try:
            return load_image(self.root / self.paths[i], max_pixels=self.max_pixels, reduce_to=self.reduce_to)
        except BadImageError as exc:
            self._bad[i] = exc.reason
            raise

    def __getitem__(self, key: tuple[int, int] | int):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        n = len(self.paths)
        bad: list[tuple[str, str]] = []
        for offset in range(min(n, _MAX_SUBSTITUTES)):
            i = (index + offset) % n
            try:
                img = self._load(i)
            except BadImageError as exc:
                bad.append((self.paths[i], exc.reason))
                continue
            # The views depend only on (seed, epoch, index): same with any number of workers or ranks.
            # (only the CPU generator: torch.manual_seed would also reseed every accelerator, at 100x the cost)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                views = self.transform(img)
            return (*views, bad)
        raise LookalikeError(
            f"{len(bad)} images in a row failed to decode near {self.paths[index]!r} (last: {bad[-1][1]}); "
            f"check the folder {self.root} for damaged files")

    def __getitems__(self, keys: list) -> _Items:
        """A whole batch at once (the DataLoader's batched fetch): the items, remembering the keys they came from
        so that :class:`ViewBatcher` can seed the batch's photometric augmentation."""
        items = _Items(self[k] for k in keys)
        items.keys = [k if isinstance(k, tuple) else (0, k) for k in keys]
        return items


class _Items(list):
    """The items of one batch, plus ``keys``: the ``(epoch, index)`` keys they were fetched with."""

    keys: list


def collate_views(batch):
    """[(v1, v2, bad), ...] -> (V1 (B, 3, S, S) uint8, V2 (B, 3, S, S) uint8, bad list); with local crops
    [(v1, v2, local, bad), ...] -> (V1, V2, L (B, N, 3, s, s) uint8, bad list)."""
    views = [torch.stack([b[k] for b in batch]) for k in range(len(batch[0]) - 1)]
    bad = [entry for b in batch for entry in b[-1]]
    return (*views, bad)


class ViewBatcher:
    """The DataLoader's ``collate_fn``: ``[(v1, v2, bad), ...] -> (x1, x2, bad, seed)`` (with local crops:
    ``(x1, x2, L, bad, seed)`` as uint8, ``(x1, x2, l_1, ..., l_N, bad, seed)`` once augmented here).

    ``seed`` is the batch's photometric seed (:func:`batch_seed`). With ``photometric`` (the trainer's
    :class:`training.augment.TwoViewPipeline`, on the CPU) the batch is augmented right here, in the DataLoader
    worker, with a generator seeded with ``seed``: ``x1, x2`` are then normalised float32 batches, and the worker's
    single thread does this work while the training process runs the model (measured on 2 CPU cores:
    ``bench/train_throughput.py``). Without it ``x1, x2`` are the uint8 views, for the trainer to augment on its
    device with the same seed (on a GPU that is nearly free). Either way a seed gives the same augmentation.
    """

    def __init__(self, seed: int, photometric=None):
        self.seed = int(seed)
        self.photometric = photometric

    def __call__(self, batch):
        *views, bad = collate_views(batch)
        seed = batch_seed(self.seed, getattr(batch, "keys", None))
        if self.photometric is not None:
            with torch.no_grad():
                views = self.photometric(*views, generator=torch.Generator().manual_seed(seed))
        return (*views, bad, seed)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys for one rank, one epoch at a time, in whole global batches.

    The epoch's order is ``randperm(n)`` from a generator seeded with ``(seed, epoch)``; the tail that does not
    fill a global batch of ``global_batch`` images is dropped (it comes first in another epoch's order). Each
    global batch is cut into ``world_size`` contiguous slices and rank r takes slice r, so the ranks of a
    data-parallel run together see exactly the batches a single process with the same global batch sees, in the
    same order. ``set_epoch(epoch, start_batch)`` selects the epoch and skips its first ``start_batch`` batches
    (resuming).
    """

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.n, self.global_batch, self.seed = n, global_batch, int(seed)
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.local_batch = global_batch // world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's full permutation (n,)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1 & 0xFFFFFFFF))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm = self.order(self.epoch).tolist()
        lo = self.rank * self.local_batch
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + lo
            for i in perm[start:start + self.local_batch]:
                yield self.epoch, i

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch) * self.local_batch


# -- what the trainer opens -------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The scanned folder, its two-view pipeline and the loader of this rank's slices of the global batches.
    ``augment_in_loader``: the photometric augmentation runs in the loader (CPU) rather than on the device."""

    collection: Collection
    views: nn.Module
    sampler: EpochSampler
    loader: DataLoader
    augment_in_loader: bool

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch


def open_data(cfg, rank: int, world: int, device: torch.device, show: bool,
              say: Callable[[str], None], view_size: int | None = None) -> TrainingData:
    """Scan ``cfg.data_dir`` and build the loader; refuses a global batch that does not divide among the
    ``world`` processes or that is larger than the folder. The views are ``cfg.image_size`` pixels unless
    ``view_size`` says otherwise (a teacher with a larger input size than its student's sees them sharp)."""
    import dataclasses

    from .augment import views_for

    collection = scan(cfg.data_dir, labels=False, progress=show and rank == 0)
    n, global_batch = len(collection.items), cfg.batch_size
    if global_batch % world:
        raise LookalikeError(f"--batch-size {global_batch} is the global batch and must divide by the "
                             f"{world} processes; use e.g. {global_batch // world * world or world}")
    if n < global_batch:
        raise LookalikeError(f"{collection.root} has {n} usable images, fewer than one batch of {global_batch}; "
                             f"use --batch-size {max(2, 1 << (max(n, 1).bit_length() - 1))} or add images"
                             + (f" ({len(collection.skipped)} files were skipped)" if collection.skipped else ""))
    if collection.skipped:
        say(f"{len(collection.skipped)} files in {collection.root} are not usable images and are left out "
            f"(first: {collection.skipped[0].path}: {collection.skipped[0].reason})")
    size = view_size or cfg.image_size
    views = views_for(cfg.method, dataclasses.replace(cfg.augment_config(), image_size=size)).to(device)
    dataset = TwoViewDataset(collection, views.geometric, seed=cfg.seed, reduce_to=4 * size)
    sampler = EpochSampler(n, global_batch, seed=cfg.seed, rank=rank, world_size=world)
    workers = default_workers(n, sampler.local_batch) if cfg.workers is None else cfg.workers
    # On a CPU the photometric augmentation runs in the DataLoader workers (batched, one thread each), beside the
    # model instead of before it: on 2 cores it took 3-25% of each step in the training process (more when the
    # machine is busy: dozens of small parallel ops), and the workers were mostly idle (bench/train_throughput.py).
    augment_in_loader = device.type == "cpu"
    loader = DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler, num_workers=workers,
                        collate_fn=ViewBatcher(cfg.seed, views if augment_in_loader else None),
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                        generator=torch.Generator().manual_seed(cfg.seed))  # its own: leaves the global RNG alone
    return TrainingData(collection, views, sampler, loader, augment_in_loader)


def default_workers(n_images: int, local_batch: int) -> int:
    """DataLoader workers: none for a folder of less than two batches, else about half the cores (the other
    half run the model), at least 1 and at most 8. On 2 cores one worker ran SimCLR 24% faster than none and
    two workers 40% slower than none (they compete with the model's threads)."""
    if n_images < 2 * local_batch:
        return 0
    return max(1, min(8, cpu_count() // 2))
