"""An index in memory: one committed generation as an immutable snapshot, and the search over it.

The loaded state (FAISS index + id→item arrays + manifest) is never mutated: writers build the next snapshot and
swap it in, and searches take the current one without a lock. Tombstoned rows (HNSW) stay in the arrays and are
filtered out of every search, which over-fetches past them.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .collection import Item
from .errors import LookalikeError
from .index_kinds import search_parameters
from .store_files import gone_error, read_db, read_manifest, read_whitening

if TYPE_CHECKING:  # pragma: no cover
    import faiss


@dataclass(frozen=True)
class Hit:
    """One search result: ``path`` relative to the collection root, ``score`` = cosine similarity."""

    path: str
    score: float
    label: str | None = None


@dataclass(frozen=True, eq=False)
class State:
    """One committed generation, fully in memory and never mutated: searches can use it without a lock."""

    manifest: dict
    index: faiss.Index
    ids: np.ndarray  # (R,) int64, sorted: every items row, live or tombstoned
    paths: list[str]
    labels: list[str | None]
    sizes: np.ndarray  # (R,) int64
    mtimes: np.ndarray  # (R,) float64
    deleted: np.ndarray  # (R,) bool
    skipped: list[tuple[str, str]]
    whitening: Any = None  # retrieval.pipeline.Whitening of a whitened index, applied to every vector it is given
    _items: dict = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        """Row of each path (live or not), built once per snapshot (QE/DBA look their shortlist up here)."""
        return {p: i for i, p in enumerate(self.paths)}

    @functools.cached_property
    def live(self) -> int:
        """Live rows; counted once per snapshot (a per-search count would cost O(N))."""
        return int(len(self.ids) - self.deleted.sum())

    def items(self) -> dict[str, Item]:
        """Live items by path, built once per snapshot (callers get a shallow copy)."""
        if not self._items and self.live:
            rows = sorted((self.paths[i], i) for i in np.flatnonzero(~self.deleted))
            self._items.update({p: Item(p, int(self.sizes[i]), float(self.mtimes[i]), self.labels[i])
                                for p, i in rows})
        return self._items


def load_rows(db: Path, manifest: dict, index: faiss.Index, whitening: Any = None) -> State:
    con = read_db(db)
    try:
        rows = con.execute("SELECT id, path, size, mtime, label, deleted FROM items ORDER BY id").fetchall()
        skipped = con.execute("SELECT path, reason FROM skipped ORDER BY path").fetchall()
    finally:
        con.close()
    return State(manifest=manifest, index=index,
                  ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                  paths=[r[1] for r in rows], labels=[r[4] for r in rows],
                  sizes=np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows)),
                  mtimes=np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows)),
                  deleted=np.fromiter((bool(r[5]) for r in rows), dtype=bool, count=len(rows)),
                  skipped=[(r[0], r[1]) for r in skipped], whitening=whitening)


def load_state(directory: Path) -> State:
    """Load the generation the manifest names, retrying if a writer in another process swaps it meanwhile."""
    import faiss

    for attempt in range(5):
        try:
            manifest = read_manifest(directory)
        except FileNotFoundError:
            raise gone_error(directory) from None
        try:
            index = faiss.read_index(str(directory / manifest["files"]["index"]))
            whitening = manifest["files"].get("whitening")
            state = load_rows(directory / manifest["files"]["items"], manifest, index,
                              whitening=read_whitening(directory / whitening) if whitening else None)
        except (RuntimeError, sqlite3.Error, OSError) as exc:
            if attempt < 4 and read_manifest(directory).get("generation") != manifest["generation"]:
                continue  # superseded while we read it: take the new one
            raise LookalikeError(f"index {directory.name!r} is damaged ({exc}); rebuild it") from None
        if index.d != manifest["dim"]:
            raise LookalikeError(f"index {directory.name!r}: FAISS file has dim {index.d} but the manifest says "
                                 f"{manifest['dim']}; rebuild the index")
        return state
    raise LookalikeError(f"index {directory.name!r} kept changing while being opened; try again")


def prepare_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """(N, dim) C-contiguous float32 with unit rows; unnormalised input is normalised rather than trusted."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.size == 0:
        return np.zeros((0, dim), np.float32)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != dim:
        raise LookalikeError(f"{what} have shape {tuple(np.shape(vectors))}, expected (N, {dim}): were they made "
                             f"by the encoder this index was built with?")
    if not np.isfinite(v).all():
        raise LookalikeError(f"{what} contain NaN or infinite values; the encoder output is broken")
    norms = np.linalg.norm(v, axis=1)
    if (norms < 1e-12).any():
        raise LookalikeError(f"{what} contain an all-zero vector, which has no direction to compare")
    if np.abs(norms - 1).max(initial=0) > 1e-4:
        v = v / norms[:, None]
    return np.ascontiguousarray(v, dtype=np.float32)


def search_chunk(state: State, queries: np.ndarray, k: int) -> list[list[Hit]]:
    """Search, drop ids that are tombstones (or unknown), and re-ask with a bigger fetch for rows that fell short."""
    ntotal = int(state.index.ntotal)
    dead = ntotal - state.live
    fetch = min(ntotal, k + min(dead, max(64, 4 * k)))
    results: list[list[Hit] | None] = [None] * len(queries)
    todo = np.arange(len(queries))
    while len(todo):
        scores, ids = state.index.search(queries[todo], fetch, params=search_parameters(state.manifest, fetch))
        pos = np.searchsorted(state.ids, ids).clip(0, len(state.ids) - 1)
        ok = (ids >= 0) & (state.ids[pos] == ids) & ~state.deleted[pos]  # state.ids is non-empty: live > 0
        short = []
        for row, q in enumerate(todo):
            hits = [Hit(state.paths[p], float(s), state.labels[p])
                    for p, s, good in zip(pos[row], scores[row], ok[row]) if good][:k]
            filtered = int(((ids[row] >= 0) & ~ok[row]).sum())
            if len(hits) < k and filtered and fetch < ntotal:
                short.append(q)
            else:
                results[q] = hits
        todo = np.asarray(short, dtype=np.int64)
        fetch = min(ntotal, fetch * 4)
    return results  # type: ignore[return-value]
