"""A named, persistent vector index: FAISS for the vectors, SQLite for what they are, JSON for how they were made.

Layout of ``ROOT/NAME/``::

    manifest.json        {"format_version": 1, "generation": G, "files": {"index": ..., "items": ...}, ...}
    index.<g>.faiss      inner-product FAISS index over L2-normalised float32 vectors, ids = items.id
    items.<g>.sqlite     items(id, path, size, mtime, label, deleted) + skipped(path, reason)
    .lock                advisory lock file: one writer at a time, across processes

Crash safety. Committed data files are never modified: every change writes *new* files named after the next
generation (the SQLite one is a backup-API copy of the current file with the change applied), fsyncs them, and only
then atomically replaces ``manifest.json`` (tmp + fsync + ``os.replace``), which is the single commit point. A kill
at any moment leaves the manifest naming one complete, mutually consistent pair of files: the old one or the new
one. Files no manifest refers to (a crashed writer's half generation, or the one just superseded) are deleted by the
next writer, under the lock. A change that does not touch the vectors (HNSW tombstones, the skipped list) writes
only a new SQLite file and keeps pointing at the current FAISS file. A new index is built in ``ROOT/.tmp-NAME-*``
and renamed into place, so a crash during the first build leaves no half index under NAME. Tests kill the
process at each step through ``LOOKALIKE_CRASH_AT`` = items-written | index-written | manifest-written |
manifest-replaced | create-before-rename.

Concurrency. The loaded state (FAISS index + id→item arrays + manifest) is one immutable snapshot. Writers work on
a clone and swap the snapshot in under an ``RLock``; searches take the current snapshot and never block on a
writer. :meth:`IndexStore.reload_if_changed` picks up a generation committed by another process.

Index types (FAISS factory strings; the string and its search parameters are kept in the manifest):
``flat`` ("IDMap2,Flat", exact), ``hnsw`` ("IDMap2,HNSW32"), ``ivf`` ("IVF{nlist},Flat"), ``ivfpq``
("IVF{nlist},PQ{m}np"), ``auto`` (flat below 50k vectors, hnsw below 2M, ivfpq beyond; an "auto" index moves up a
type when an add crosses a threshold). IVF types hold ids natively with a hash-table direct map instead of an
IDMap2 wrapper: IDMap2 renumbers its id map on ``remove_ids`` while IVF lists keep the old internal numbers, which
silently returns wrong items after a removal. HNSW cannot remove vectors, so removed rows become tombstones
(``deleted=1``, or rows dropped when the path is re-added) that searches over-fetch past and filter out; past 20 %
tombstones the HNSW graph is rebuilt from its own stored vectors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np

from .collection import Item, Skipped
from .errors import EncoderMismatchError, IndexNotFoundError, LookalikeError
from .identity import identity_matches

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
AUTO_HNSW_FROM = 50_000
AUTO_IVFPQ_FROM = 2_000_000
# Fewest vectors an approximate type is trained on; below this the index stays exact ("flat") with a note.
MIN_TRAIN = {"ivf": 1_000, "ivfpq": 10_000}  # ivfpq: 8-bit PQ codebooks want ~39 * 256 points
TRAIN_SAMPLE = 100_000
TOMBSTONE_REBUILD_FRACTION = 0.2
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
SEARCH_CHUNK = 1024  # queries per FAISS call, bounds the over-fetch buffers
_REQUIRED = ("format_version", "name", "root", "encoder", "dim", "index_type", "factory", "metric", "count",
             "generation", "files", "created", "updated")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_DATA_FILE_RE = re.compile(r"(index\.\d+\.faiss|items\.\d+\.sqlite)")
_RANK = {"flat": 0, "hnsw": 1, "ivf": 1, "ivfpq": 2}
_SCHEMA = """
CREATE TABLE items(id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
                   mtime REAL NOT NULL, label TEXT, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE skipped(path TEXT NOT NULL, reason TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Hit:
    """One search result: ``path`` relative to the collection root, ``score`` = cosine similarity."""

    path: str
    score: float
    label: str | None = None


def _crash_point(step: str) -> None:
    """Test hook: die like ``kill -9`` at a named step of the write sequence (``LOOKALIKE_CRASH_AT=step``)."""
    if os.environ.get("LOOKALIKE_CRASH_AT") == step:
        os._exit(137)


# ----- names, manifests, files ---------------------------------------------------------------------------------

def validate_name(name: str) -> str:
    """Index names become directory names: letters, digits, '.', '_', '-', not starting with '.' or '-'."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 128:
        raise LookalikeError(f"invalid index name {name!r}: use letters, digits, '.', '_' and '-' (no slashes, "
                             f"not starting with '.' or '-', at most 128 characters), e.g. 'photos-simclr'")
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a file (or a directory entry list) to disk; directories cannot be opened for this on Windows."""
    if directory and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    _crash_point("manifest-written")
    os.replace(tmp, path)
    _fsync_path(path.parent, directory=True)


def _read_manifest(directory: Path) -> dict:
    """Read and check a manifest; errors say which index is damaged and what to do about it."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"index {directory.name!r}: unreadable manifest.json ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict):
        raise LookalikeError(f"index {directory.name!r}: manifest.json is not a JSON object; rebuild the index")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade Lookalike" if isinstance(version, int) and version > FORMAT_VERSION else "rebuild the index"
        raise LookalikeError(f"index {directory.name!r} has format_version {version!r}, this Lookalike reads "
                             f"{FORMAT_VERSION}; {hint}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise LookalikeError(f"index {directory.name!r}: manifest.json lacks {', '.join(missing)}; rebuild the index")
    if not isinstance(manifest["dim"], int) or manifest["dim"] < 1:
        raise LookalikeError(f"index {directory.name!r}: bad dim {manifest['dim']!r} in manifest; rebuild the index")
    if manifest["index_type"] not in _RANK or manifest.get("requested_type", "auto") not in INDEX_TYPES:
        raise LookalikeError(f"index {directory.name!r}: unknown index type {manifest['index_type']!r}; "
                             f"rebuild the index")
    return manifest


def list_indexes(root_dir: str | Path) -> list[dict]:
    """Manifests of the readable indexes under ``root_dir``, sorted by name (damaged ones are left out)."""
    root = Path(root_dir)
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            found.append(_read_manifest(child))
        except (OSError, LookalikeError):
            continue
    return found


def _names(root: Path) -> str:
    names = [m["name"] for m in list_indexes(root)]
    return ", ".join(names) if names else "none yet (build one with 'lookalike index build')"


def _describe(identity: dict) -> str:
    name = identity.get("spec") or identity.get("backbone") or identity.get("kind")
    return (f"{name!r} ({identity.get('kind')}, {identity.get('image_size')}px, dim {identity.get('dim')}, "
            f"weights {str(identity.get('weights'))[:12]})")




@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock so two processes never write the same index at once (no-op where fcntl is absent)."""
    try:
        import fcntl
    except ImportError:  # Windows: single-writer is the caller's responsibility
        yield
        return
    try:
        fh = open(directory / ".lock", "a+")
    except FileNotFoundError:
        raise IndexNotFoundError(f"index {directory.name!r} was deleted") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_unreferenced(directory: Path, manifest: dict) -> None:
    """Delete data files (and temp/journal leftovers) the manifest does not name. Call only under the dir lock."""
    keep = set(manifest["files"].values())
    for entry in directory.iterdir():
        name = entry.name
        stray = name == MANIFEST + ".tmp" or (_DATA_FILE_RE.match(name) is not None and name not in keep)
        if stray:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


# ----- FAISS index plans ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """A resolved index type: what to build and with which search parameters."""

    kind: str
    factory: str
    params: dict
    note: str | None = None


def _target_kind(requested: str, n: int) -> str:
    """The index type ``requested`` should have at ``n`` vectors (approximate types need enough to train on)."""
    if requested == "auto":
        return "flat" if n < AUTO_HNSW_FROM else "hnsw" if n < AUTO_IVFPQ_FROM else "ivfpq"
    if requested in MIN_TRAIN and n < MIN_TRAIN[requested]:
        return "flat"
    return requested


def _pq_m(dim: int) -> int:
    """PQ sub-quantizers: about 4 dims each, at most 64 bytes a vector, and a divisor of ``dim``."""
    target = max(1, min(64, dim // 4))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _plan(requested: str, n: int, dim: int) -> _Plan:
    kind = _target_kind(requested, n)
    note = None
    if kind == "flat" and requested in MIN_TRAIN:
        note = (f"{requested} needs at least {MIN_TRAIN[requested]} vectors to train, had {n}: using exact flat "
                f"search; it switches to {requested} once an add brings enough vectors")
    if kind == "flat":
        return _Plan("flat", "IDMap2,Flat", {}, note)
    if kind == "hnsw":
        return _Plan("hnsw", f"IDMap2,HNSW{HNSW_M}",
                     {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH})
    # ~4*sqrt(N) lists, but >= 39 training points per list: k-means sees at most TRAIN_SAMPLE vectors, so past
    # ~400k vectors the sample, not N, bounds nlist (4000 lists on a 100k sample would be under-trained).
    nlist = max(1, min(round(4 * math.sqrt(n)), min(n, TRAIN_SAMPLE) // 39))
    params = {"nlist": nlist, "nprobe": min(nlist, max(16, nlist // 16)), "trained_on": min(n, TRAIN_SAMPLE)}
    if kind == "ivf":
        return _Plan("ivf", f"IVF{nlist},Flat", params)
    m = _pq_m(dim)
    # "np": skip polysemous training (a slow annealing step that only serves Hamming pre-filtering, unused here).
    return _Plan("ivfpq", f"IVF{nlist},PQ{m}np", {**params, "m": m, "nbits": 8})


def _build(plan: _Plan, dim: int, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A new index of ``plan`` holding ``vectors`` under ``ids`` (IVF types trained on a sample of them)."""
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = plan.params["efConstruction"]
    if plan.kind in ("ivf", "ivfpq"):
        sample = vectors
        if len(vectors) > TRAIN_SAMPLE:
            sample = vectors[np.random.default_rng(0).choice(len(vectors), TRAIN_SAMPLE, replace=False)]
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove_ids by id
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def _clone(index: faiss.Index) -> faiss.Index:
    try:
        return faiss.clone_index(index)
    except RuntimeError:  # types without a cloner: round-trip through bytes
        return faiss.deserialize_index(faiss.serialize_index(index))


def _search_params(manifest: dict, fetch: int) -> Any:
    kind, params = manifest["index_type"], manifest.get("params") or {}
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(int(params.get("efSearch", HNSW_EF_SEARCH)), fetch))
    if kind in ("ivf", "ivfpq"):
        return faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", 16)))
    return None


# ----- in-memory snapshot -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _State:
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
    _items: dict = field(default_factory=dict, compare=False, repr=False)

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


def _read_db(path: Path) -> sqlite3.Connection:
    """Read-only connection; committed files never change, so SQLite may skip locking (immutable=1)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)


def _load_rows(db: Path, manifest: dict, index: faiss.Index) -> _State:
    con = _read_db(db)
    try:
        rows = con.execute("SELECT id, path, size, mtime, label, deleted FROM items ORDER BY id").fetchall()
        skipped = con.execute("SELECT path, reason FROM skipped ORDER BY path").fetchall()
    finally:
        con.close()
    return _State(manifest=manifest, index=index,
                  ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                  paths=[r[1] for r in rows], labels=[r[4] for r in rows],
                  sizes=np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows)),
                  mtimes=np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows)),
                  deleted=np.fromiter((bool(r[5]) for r in rows), dtype=bool, count=len(rows)),
                  skipped=[(r[0], r[1]) for r in skipped])


def _load_state(directory: Path) -> _State:
    """Load the generation the manifest names, retrying if a writer in another process swaps it meanwhile."""
    for attempt in range(5):
        try:
            manifest = _read_manifest(directory)
        except FileNotFoundError:
            raise IndexNotFoundError(f"index {directory.name!r} no longer exists under {directory.parent}; "
                                     f"available: {_names(directory.parent)}") from None
        try:
            index = faiss.read_index(str(directory / manifest["files"]["index"]))
            state = _load_rows(directory / manifest["files"]["items"], manifest, index)
        except (RuntimeError, sqlite3.Error, OSError) as exc:
            if attempt < 4 and _read_manifest(directory).get("generation") != manifest["generation"]:
                continue  # superseded while we read it: take the new one
            raise LookalikeError(f"index {directory.name!r} is damaged ({exc}); rebuild it") from None
        if index.d != manifest["dim"]:
            raise LookalikeError(f"index {directory.name!r}: FAISS file has dim {index.d} but the manifest says "
                                 f"{manifest['dim']}; rebuild the index")
        return state
    raise LookalikeError(f"index {directory.name!r} kept changing while being opened; try again")


def _prepare_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
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


# ----- the store --------------------------------------------------------------------------------------------

@dataclass
class _Change:
    """What one mutation produced: a new index (or None = unchanged) and manifest fields to update."""

    index: faiss.Index | None = None
    manifest: dict = field(default_factory=dict)
    changed: bool = False
    result: Any = None


class IndexStore:
    """An opened index. Create with :meth:`create`, open with :meth:`open`; thread-safe for reads and writes."""

    def __init__(self, directory: Path, state: _State):
        self.path = directory
        self._state = state
        self._lock = threading.RLock()

    # ----- construction -----
    @classmethod
    def create(cls, root_dir: str | Path, name: str, encoder_identity: dict, dim: int,
               collection_root: str | Path, index_type: str = "auto", overwrite: bool = False,
               items: Sequence[Any] | None = None, vectors: np.ndarray | None = None,
               skipped: Sequence[Any] | None = None) -> "IndexStore":
        """Build ``root_dir/name`` in a temp dir and rename it into place, optionally with its first items."""
        validate_name(name)
        if index_type not in INDEX_TYPES:
            raise LookalikeError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        if not isinstance(dim, int) or dim < 1:
            raise LookalikeError(f"dim must be a positive integer, got {dim!r}")
        if encoder_identity.get("dim") not in (None, dim):
            raise LookalikeError(f"encoder identity has dim {encoder_identity.get('dim')} but dim={dim} was given")
        root = Path(root_dir)
        root.mkdir(parents=True, exist_ok=True)
        final = root / name
        if final.exists() and not overwrite:
            raise LookalikeError(f"index {name!r} already exists under {root}; choose another name or overwrite it")
        _clean_leftovers(root)
        items = list(items or [])
        vecs = _prepare_vectors(np.zeros((0, dim), np.float32) if vectors is None else vectors, dim)
        if len(items) != len(vecs):
            raise LookalikeError(f"{len(items)} items but {len(vecs)} vectors; they must pair up one to one")
        items, vecs = _dedupe(items, vecs)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        trash = None
        try:
            db = tmp / "items.0.sqlite"
            con = sqlite3.connect(db)
            try:
                with con:
                    con.executescript(_SCHEMA)
                    ids = _insert_items(con, items)
                    _replace_skipped(con, skipped or [])
            finally:
                con.close()
            plan = _plan(index_type, len(items), dim)
            if not items and index_type in MIN_TRAIN:
                plan = _Plan("flat", "IDMap2,Flat", {}, f"{index_type} is trained at the first add")
            index = _build(plan, dim, vecs, ids)
            faiss.write_index(index, str(tmp / "index.0.faiss"))
            for f in (db, tmp / "index.0.faiss"):
                _fsync_path(f)
            created = _now()
            manifest = {"format_version": FORMAT_VERSION, "name": name, "root": str(Path(collection_root).resolve()),
                        "encoder": dict(encoder_identity), "dim": dim, "index_type": plan.kind,
                        "requested_type": index_type, "factory": plan.factory, "params": plan.params,
                        "note": plan.note, "metric": "ip", "count": len(items), "generation": 0,
                        "files": {"index": "index.0.faiss", "items": "items.0.sqlite"}, "uid": uuid.uuid4().hex,
                        "created": created, "updated": created}
            _write_json_atomic(tmp / MANIFEST, manifest)
            _crash_point("create-before-rename")
            if final.exists():
                trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
            os.replace(tmp, final)
            _fsync_path(root, directory=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if trash is not None and not final.exists():
                os.replace(trash, final)  # put the old index back
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return cls(final, _load_state(final))

    @classmethod
    def open(cls, root_dir: str | Path, name: str, encoder_identity: dict | None = None) -> "IndexStore":
        """Open an existing index; with ``encoder_identity``, refuse one built by a different encoder."""
        validate_name(name)
        directory = Path(root_dir) / name
        if not (directory / MANIFEST).is_file():
            raise IndexNotFoundError(f"no index named {name!r} under {root_dir}; available: {_names(Path(root_dir))}")
        store = cls(directory, _load_state(directory))
        if encoder_identity is not None:
            store.check_encoder(encoder_identity)
        return store

    def check_encoder(self, identity: dict) -> None:
        """Raise :class:`EncoderMismatchError` unless ``identity`` makes the same vectors as the index's encoder."""
        built = self.manifest["encoder"]
        if not identity_matches(built, identity):
            raise EncoderMismatchError(
                f"index {self.name!r} was built with encoder {_describe(built)}, not {_describe(identity)}: "
                f"rebuild the index with the new encoder, or query it with {built.get('spec') or 'its own encoder'}")

    # ----- reads -----
    @property
    def name(self) -> str:
        return self._state.manifest["name"]

    @property
    def manifest(self) -> dict:
        return json.loads(json.dumps(self._state.manifest))  # a copy callers may modify

    @property
    def dim(self) -> int:
        return self._state.manifest["dim"]

    @property
    def count(self) -> int:
        return self._state.live

    @property
    def tombstones(self) -> int:
        """Vectors still in the FAISS index whose item was removed (HNSW only; 0 for the other types)."""
        state = self._state
        return int(state.index.ntotal) - state.live

    def items(self) -> dict[str, Item]:
        return dict(self._state.items())

    def has(self, path: str) -> bool:
        """Whether ``path`` is a live item — without copying the item table (used per served result)."""
        return path in self._state.items()

    def paths(self) -> list[str]:
        return list(self._state.items())

    def skipped(self) -> list[Skipped]:
        return [Skipped(p, r) for p, r in self._state.skipped]

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """(paths, (N, dim) float32) of the live items, by path; approximate (decoded) for ivfpq."""
        state = self._state
        order = sorted(np.flatnonzero(~state.deleted), key=lambda i: state.paths[i])
        ids = state.ids[order]
        vecs = state.index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        return [state.paths[i] for i in order], np.asarray(vecs, dtype=np.float32)

    def info(self) -> dict:
        """Manifest plus live count, tombstones, number of skipped files and bytes on disk."""
        state = self._state
        size = 0
        for f in self.path.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a writer may be swapping generations right now
                size += f.stat().st_size
        return {**self.manifest, "count": state.live, "tombstones": self.tombstones,
                "skipped": len(state.skipped), "size_bytes": size, "path": str(self.path)}

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query (rows of ``vectors``), best first; never removed items, never more than count."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise LookalikeError(f"k must be a positive integer, got {k!r}")
        state = self._state
        queries = _prepare_vectors(vectors, state.manifest["dim"], "query vectors")
        if state.live == 0:
            return [[] for _ in range(len(queries))]
        k = min(int(k), state.live)
        out: list[list[Hit]] = []
        for start in range(0, len(queries), SEARCH_CHUNK):
            out.extend(_search_chunk(state, queries[start:start + SEARCH_CHUNK], k))
        return out

    def reload_if_changed(self) -> bool:
        """Pick up a generation another process committed; True when something new was loaded."""
        try:
            disk = _read_manifest(self.path)
        except FileNotFoundError:
            raise IndexNotFoundError(f"index {self.path.name!r} no longer exists under {self.path.parent}; "
                                     f"available: {_names(self.path.parent)}") from None
        current = self._state.manifest
        if (disk.get("uid"), disk["generation"]) == (current.get("uid"), current["generation"]):
            return False
        with self._lock:
            self._state = _load_state(self.path)
        return True

    # ----- writes -----
    def add(self, items: Sequence[Any], vectors: np.ndarray) -> None:
        """Add items (anything with path/size/mtime/label) with their vectors; existing paths are replaced."""
        self.update(items=items, vectors=vectors)

    def remove(self, paths: Sequence[str]) -> int:
        """Remove items by path; returns how many were present."""
        return self.update(remove=paths)

    def set_skipped(self, skipped: Sequence[Any]) -> None:
        """Replace the list of files left out of the index (anything with path/reason)."""
        self.update(skipped=skipped)

    def set_search_params(self, **params: int) -> None:
        """Change ``efSearch`` (hnsw) or ``nprobe`` (ivf, ivfpq); stored in the manifest."""
        allowed = {"hnsw": {"efSearch"}, "ivf": {"nprobe"}, "ivfpq": {"nprobe"}}.get(self._state.manifest["index_type"],
                                                                                     set())
        bad = [p for p, v in params.items() if p not in allowed or not isinstance(v, int) or v < 1]
        if bad:
            raise LookalikeError(f"index {self.name!r} ({self._state.manifest['index_type']}) takes "
                                 f"{', '.join(sorted(allowed)) or 'no search parameters'} as positive integers")

        def work(con: sqlite3.Connection, old: _State) -> _Change:
            return _Change(manifest={"params": {**old.manifest["params"], **params}}, changed=True)
        self._commit(work)

    def update(self, items: Sequence[Any] | None = None, vectors: np.ndarray | None = None,
               remove: Sequence[str] | None = None, skipped: Sequence[Any] | None = None) -> int:
        """One atomic change: remove ``remove`` paths, add/replace ``items``, replace the skipped list if given.

        Returns the number of removed paths that were present."""
        items = list(items or [])
        vecs = _prepare_vectors(np.zeros((0, self.dim), np.float32) if vectors is None else vectors, self.dim)
        if len(items) != len(vecs):
            raise LookalikeError(f"{len(items)} items but {len(vecs)} vectors; they must pair up one to one")
        items, vecs = _dedupe(items, vecs)
        gone = sorted(set(remove or []))

        def work(con: sqlite3.Connection, old: _State) -> _Change:
            return _apply_update(con, old, items, vecs, gone, skipped)
        return self._commit(work)

    def delete(self) -> None:
        """Remove the whole index directory (renamed away first, so it disappears at once)."""
        with self._lock, _dir_lock(self.path):
            trash = self.path.parent / f".trash-{self.path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _commit(self, work: Callable[[sqlite3.Connection, _State], _Change]) -> Any:
        """Run ``work`` against a copy of the current SQLite file and publish the result as the next generation."""
        with self._lock, _dir_lock(self.path):
            self.reload_if_changed()  # another process may have committed since we loaded
            old = self._state
            _remove_unreferenced(self.path, old.manifest)  # leftovers of a writer that crashed
            gen = old.manifest["generation"] + 1
            db = self.path / f"items.{gen}.sqlite"
            src = _read_db(self.path / old.manifest["files"]["items"])
            con = sqlite3.connect(db)
            try:
                src.backup(con)
                src.close()
                con.execute("PRAGMA journal_mode=MEMORY")  # the file is private until the manifest names it
                con.execute("PRAGMA synchronous=OFF")
                with con:
                    change = work(con, old)
            finally:
                src.close()
                con.close()
            if not change.changed:
                db.unlink()
                return change.result
            _fsync_path(db)
            _crash_point("items-written")
            files = {**old.manifest["files"], "items": db.name}
            index = old.index
            if change.index is not None:
                index = change.index
                files["index"] = f"index.{gen}.faiss"
                faiss.write_index(index, str(self.path / files["index"]))
                _fsync_path(self.path / files["index"])
                _crash_point("index-written")
            manifest = {**old.manifest, **change.manifest, "generation": gen, "files": files, "updated": _now()}
            state = _load_rows(db, manifest, index)
            manifest["count"] = state.live
            _write_json_atomic(self.path / MANIFEST, manifest)
            _crash_point("manifest-replaced")
            self._state = state
            _remove_unreferenced(self.path, manifest)
            return change.result


# ----- mutation helpers (run inside IndexStore._commit) -------------------------------------------------------

def _dedupe(items: list[Any], vecs: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Keep the last occurrence of each path, so one batch cannot insert a path twice."""
    last = {it.path: i for i, it in enumerate(items)}
    if len(last) == len(items):
        return items, vecs
    keep = sorted(last.values())
    return [items[i] for i in keep], vecs[keep]


def _insert_items(con: sqlite3.Connection, items: list[Any]) -> np.ndarray:
    ids = []
    for it in items:
        if not isinstance(it.path, str) or not it.path:
            raise LookalikeError(f"item path must be a non-empty string, got {it.path!r}")
        cur = con.execute("INSERT INTO items(path, size, mtime, label) VALUES (?, ?, ?, ?)",
                          (it.path, int(it.size), float(it.mtime), it.label))
        ids.append(cur.lastrowid)
    return np.asarray(ids, dtype=np.int64)


def _replace_skipped(con: sqlite3.Connection, skipped: Sequence[Any]) -> None:
    con.execute("DELETE FROM skipped")
    con.executemany("INSERT INTO skipped(path, reason) VALUES (?, ?)", [(s.path, s.reason) for s in skipped])


def _ids_for(con: sqlite3.Connection, paths: Sequence[str], live_only: bool) -> list[int]:
    con.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(path TEXT PRIMARY KEY)")
    con.execute("DELETE FROM wanted")
    con.executemany("INSERT OR IGNORE INTO wanted(path) VALUES (?)", [(p,) for p in paths])
    where = " AND items.deleted = 0" if live_only else ""
    return [r[0] for r in con.execute(f"SELECT items.id FROM items JOIN wanted USING(path) WHERE 1{where}")]


def _live_ids(con: sqlite3.Connection) -> np.ndarray:
    return np.asarray([r[0] for r in con.execute("SELECT id FROM items WHERE deleted = 0 ORDER BY id")], np.int64)


def _apply_update(con: sqlite3.Connection, old: _State, items: list[Any], vecs: np.ndarray, gone: list[str],
                  skipped: Sequence[Any] | None) -> _Change:
    manifest = old.manifest
    kind, dim = manifest["index_type"], manifest["dim"]
    change = _Change(result=0)
    if skipped is not None:
        _replace_skipped(con, skipped)
        change.changed = True
    index = None  # the clone we mutate, made on first need
    removed_ids = _ids_for(con, gone, live_only=True)
    change.result = len(removed_ids)
    # Paths being re-added lose their old row (and vector) first; tombstone rows for them are dropped too.
    replaced_ids = _ids_for(con, [it.path for it in items], live_only=False)
    if removed_ids or replaced_ids:
        change.changed = True
        if kind == "hnsw":  # cannot remove from the graph: tombstones, filtered at search time
            con.executemany("UPDATE items SET deleted = 1 WHERE id = ?", [(i,) for i in removed_ids])
            con.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in replaced_ids])
        else:
            doomed = np.asarray(sorted(set(removed_ids) | set(replaced_ids)), dtype=np.int64)
            index = _clone(old.index)
            index.remove_ids(doomed)
            con.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in doomed])
    if items:
        change.changed = True
        new_ids = _insert_items(con, items)
        live_after = len(_live_ids(con))
        current = index if index is not None else old.index
        target = _target_kind(manifest.get("requested_type", kind), live_after)
        if current.ntotal == 0 or _RANK[target] > _RANK[kind]:
            # First vectors of an untrained/auto index, or it outgrew its type: (re)build with every live vector.
            keep = np.setdiff1d(_live_ids(con), new_ids)
            kept = current.reconstruct_batch(keep) if len(keep) else np.zeros((0, dim), np.float32)
            plan = _plan(manifest.get("requested_type", kind), live_after, dim)
            index = _build(plan, dim, np.concatenate([kept, vecs]), np.concatenate([keep, new_ids]))
            con.execute("DELETE FROM items WHERE deleted = 1")  # the new index holds no tombstones
            change.manifest.update(index_type=plan.kind, factory=plan.factory, params=plan.params, note=plan.note)
        else:
            if index is None:
                index = _clone(old.index)
            index.add_with_ids(vecs, new_ids)
    current = index if index is not None else old.index
    live_ids = _live_ids(con)
    dead = current.ntotal - len(live_ids)
    if change.manifest.get("index_type", kind) == "hnsw" and dead > TOMBSTONE_REBUILD_FRACTION * current.ntotal:
        plan = _Plan("hnsw", manifest["factory"], manifest["params"])
        kept = current.reconstruct_batch(live_ids) if len(live_ids) else np.zeros((0, dim), np.float32)
        index = _build(plan, dim, kept, live_ids)
        con.execute("DELETE FROM items WHERE deleted = 1")
    change.index = index
    return change


def _search_chunk(state: _State, queries: np.ndarray, k: int) -> list[list[Hit]]:
    """Search, drop ids that are tombstones (or unknown), and re-ask with a bigger fetch for rows that fell short."""
    ntotal = int(state.index.ntotal)
    dead = ntotal - state.live
    fetch = min(ntotal, k + min(dead, max(64, 4 * k)))
    results: list[list[Hit] | None] = [None] * len(queries)
    todo = np.arange(len(queries))
    while len(todo):
        scores, ids = state.index.search(queries[todo], fetch, params=_search_params(state.manifest, fetch))
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


def _clean_leftovers(root: Path) -> None:
    """Remove trash dirs and temp build dirs older than an hour (crashed creates/deletes)."""
    cutoff = time.time() - 3600
    for entry in root.glob(".t*-*"):
        if entry.is_dir() and (entry.name.startswith(".trash-") or
                               (entry.name.startswith(".tmp-") and entry.stat().st_mtime < cutoff)):
            shutil.rmtree(entry, ignore_errors=True)
