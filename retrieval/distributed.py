"""Index builds over several processes or machines (``torchrun``): one index, equal to a one-process build.

``torchrun --nproc-per-node N -m app.cli index build DIR --encoder SPEC --name NAME`` (or ``torchrun --no-python
… lookalike index build …``; several machines through torchrun's rendezvous) starts N ranks that join one
``torch.distributed`` group from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``): gloo on CPUs, NCCL when the encoder runs on CUDA (each rank on GPU ``LOCAL_RANK``).

* **Rank 0 scans** and broadcasts the collection. The scan fixes which files are items and in which order; ranks
  scanning for themselves could see a folder that changes in between (a photo copied in, a file still being
  written) and disagree on the shards, so an item would be embedded twice or never. The scan reads headers only,
  a small part of a build (see ``bench/scale.py``), and the list is a few MB at 100,000 items.
* **Every rank embeds a strided shard** (items ``rank, rank + W, …``): a scan groups files by folder, and folders
  differ (12-MP camera photos in one, small screenshots in the next), so contiguous shards would leave ranks idle.
* **Rank 0 gathers** every rank's vectors in chunks of at most :data:`GATHER_BYTES` per rank (so no rank ever
  holds more than its own vectors plus one chunk of each peer's), puts them back in scan order, and alone writes
  the index, through the same code as a one-process build (:meth:`retrieval.workspace.Workspace.build`).
* **Nothing hangs on an error.** A file that fails to decode on a rank is a skipped file, reported like any other.
  Any other failure of a rank (and an error of rank 0's scan, such as an existing index) is shared with all
  ranks before the next collective, and every rank raises the same :class:`LookalikeError`. The encoder and the
  job (folder, name, index type) are compared across ranks first: a rank started with another encoder or another
  command is refused.
* **Threads.** The ranks of one machine split its CPUs (the affinity mask) into equal parts, so decode workers and
  torch threads of ``cores / local ranks`` per rank never oversubscribe.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) :meth:`Ranks.join` returns the one-process view, whose methods
run the work directly. Layering: this module belongs to retrieval and shares no code with ``training.distributed``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .errors import LookalikeError
from .identity import IDENTITY_KEYS

# Per rank and gather step, at most this many bytes of vectors travel to rank 0 (rank 0 receives world x this).
GATHER_BYTES = 16 << 20
# How long a rank waits at a collective for the others: a build's ranks meet after embedding their shards, so the
# wait is the spread between the fastest and the slowest shard. torchrun stops every rank when one dies.
TIMEOUT = timedelta(hours=12)
LEAVE_WAIT_S = 60.0  # at the end, how long a rank waits for the others to leave with it (leave_group)
_LEFT_KEY = "lookalike/left"


class Ranks:
    """This process's place in a build job: rank 0 of 1 unless started by ``torchrun``."""

    def __init__(self, rank: int = 0, world: int = 1, device: str = "cpu", owns_group: bool = False):
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the index and prints the report."""
        return self.rank == 0

    # ----- joining -------------------------------------------------------------------------------------------
    @classmethod
    def join(cls, device: str = "cpu") -> "Ranks":
        """Join the job torchrun started (a one-process view outside one); ``device`` as ``--device`` gives it."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and not dist.is_initialized():
            return cls(device=device)
        from .encoders import resolve_device

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
            torch.cuda.set_device(dev)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
        share_cpus(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return cls(dist.get_rank(), dist.get_world_size(), str(dev), owns)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            leave_group()

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- agreeing ------------------------------------------------------------------------------------------
    def on_main(self, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0, its result on every rank; its error raised on every rank."""
        if self.world == 1:
            return work()
        box: list[Any] = [None]
        failure = None
        if self.main:
            try:
                box[0] = ("ok", work())
            except Exception as exc:  # shared before re-raising, so the other ranks do not wait forever
                failure = exc
                box[0] = ("error", _message(exc))
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        status, value = box[0]
        if status == "error":
            raise LookalikeError(value)
        return value

    def check_same(self, what: dict) -> None:
        """Refuse to go on unless every rank was started with the same ``what`` (encoder, folder, index)."""
        if self.world == 1:
            return
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, what)
        for r, theirs in enumerate(every):
            differ = sorted(k for k in set(what) | set(theirs) if theirs.get(k) != every[0].get(k))
            if differ:
                raise LookalikeError(f"rank {r} was started with another {', '.join(differ)} than rank 0 "
                                     f"({'; '.join(f'{k}: {theirs.get(k)!r} vs {every[0].get(k)!r}' for k in differ)})"
                                     f": start every rank with the same command")

    def raise_if_any_failed(self, error: str | None) -> None:
        """Every rank says whether it failed; if one did, every rank raises (instead of waiting for the rest)."""
        if self.world == 1:
            return
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, error)
        failed = [(r, e) for r, e in enumerate(every) if e is not None]
        if failed:
            r, e = failed[0]
            raise LookalikeError(f"rank {r} of {self.world} failed: {e}")

    # ----- embedding -----------------------------------------------------------------------------------------
    def embed(self, encoder, collection, **kwargs):
        """:func:`retrieval.embed.embed_collection` of every item, sharded over the ranks; the whole result on
        rank 0 (in scan order, as one process would have it), None on the others."""
        from .embed import embed_collection

        if self.world == 1:
            return embed_collection(encoder, collection, **kwargs)
        paths = [it.path for it in collection.items]
        mine, error = None, None
        try:
            mine = embed_collection(encoder, collection, paths=paths[self.rank::self.world], **kwargs)
        except Exception as exc:
            error = _message(exc)
        self.raise_if_any_failed(error)
        return self._gather(mine, paths, encoder.dim)

    def _gather(self, mine, paths: list[str], dim: int):
        from .embed import EmbedResult

        reports: list[Any] = [None] * self.world if self.main else None
        dist.gather_object((mine.paths, mine.skipped, mine.seconds), reports, dst=0)
        counts: list[Any] = [None] * self.world
        dist.all_gather_object(counts, len(mine.paths))
        rows = max(1, GATHER_BYTES // (4 * dim))
        if self.main:
            position = {p: i for i, p in enumerate(paths)}
            where = [np.asarray([position[p] for p in kept], np.int64) for kept, _, _ in reports]
            order = np.sort(np.concatenate(where))
            slots = [np.searchsorted(order, w) for w in where]  # rank r's k-th vector goes to row slots[r][k]
            vectors = np.zeros((len(order), dim), np.float32)
        for start in range(0, max(counts), rows):
            chunk = torch.zeros((rows, dim), dtype=torch.float32)
            part = mine.vectors[start:start + rows]
            chunk[:len(part)] = torch.from_numpy(part)
            chunk = chunk.to(self.device)
            parts = [torch.empty_like(chunk) for _ in range(self.world)] if self.main else None
            dist.gather(chunk, parts, dst=0)
            if self.main:
                for r, got in enumerate(parts):
                    take = slots[r][start:start + rows]
                    vectors[take] = got[:len(take)].cpu().numpy()
        if not self.main:
            return None
        skipped = sorted((s for _, sk, _ in reports for s in sk), key=lambda s: position[s.path])
        seconds = max(sec for _, _, sec in reports)
        return EmbedResult([paths[i] for i in order], vectors, skipped, seconds, mine.forward_threads)


def leave_group() -> None:
    """Leave the process group together. Tearing a group down while another rank still had a collective in flight
    aborted that rank with SIGABRT ("terminate called without an active exception"; about one early-failing job in
    four on a busy machine). So each rank counts itself in the job's key-value store once its last collective has
    returned and waits until every rank has (then nothing is in flight anywhere), then the group goes. The wait is
    bounded (``LEAVE_WAIT_S``): a rank that fails alone, while the others wait in a collective, still leaves and
    ends the job as before. The store, not a collective, so that such a rank cannot be matched with another's."""
    try:
        store = dist.distributed_c10d._get_default_store()
        world, deadline = dist.get_world_size(), time.monotonic() + LEAVE_WAIT_S
        arrived = store.add(_LEFT_KEY, 1)
        while arrived < world and time.monotonic() < deadline:
            time.sleep(0.005)
            arrived = store.add(_LEFT_KEY, 0)
    except Exception:  # a rank or the store is gone already: nothing left to wait for
        pass
    dist.destroy_process_group()


def encoder_key(identity: dict) -> dict:
    """The part of an encoder identity that decides its vectors (what the ranks must agree on)."""
    return {k: identity.get(k) for k in IDENTITY_KEYS}


def share_cpus(local_rank: int, local_world: int) -> None:
    """Narrow this rank to its part of the machine's CPUs (the affinity mask), torch threads and decode workers
    included (:func:`retrieval.embed.cpu_count` reads the mask)."""
    if local_world <= 1 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= local_world:
        mine = cpus[local_rank * len(cpus) // local_world:(local_rank + 1) * len(cpus) // local_world]
    else:
        mine = [cpus[local_rank % len(cpus)]]
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LookalikeError) else f"{type(exc).__name__}: {exc}"
