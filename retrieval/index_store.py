"""A named, persistent vector index: FAISS for the vectors, SQLite for what they are, JSON for how they were made.

The rooms: :mod:`retrieval.index_kinds` (one row per index kind: factory, when ``auto`` picks it, search parameters,
tombstones), :mod:`retrieval.store_files` (the directory layout, manifest, lock, generations, leftovers),
:mod:`retrieval.store_state` (a generation in memory and the search over it), :mod:`retrieval.store_changes` (what
an add or removal does to rows and vectors) and, here, :class:`IndexStore`, which ties them together.

Crash safety. Committed data files are never modified: every change writes *new* files named after the next
generation (the SQLite one is a backup-API copy of the current file with the change applied) and commits them by
atomically replacing ``manifest.json`` (:func:`retrieval.store_files.write_generation`, the one way a generation
is written, the first included). A kill at any moment leaves the manifest naming one complete, mutually consistent
pair of files: the old one or the new one. Files no manifest refers to are deleted by the next writer, under the
lock. A change that does not touch the vectors (HNSW tombstones, the skipped list) writes only a new SQLite file.
A new index is built in ``ROOT/.tmp-NAME-*`` and renamed into place, so a crash during the first build leaves no
half index under NAME.

Concurrency. The loaded state is one immutable snapshot. Writers work on a clone and swap the snapshot in under an
``RLock`` (and, across processes, the directory's lock); searches take the current snapshot and never block on a
writer. :meth:`IndexStore.reload_if_changed` picks up a generation committed by another process.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .collection import Item, Skipped
from .errors import LookalikeError
from .fsutil import fsync_path, now_iso
from .identity import identity_matches, mismatch_error
from .index_kinds import INDEX_TYPES, KINDS, build, check_type, plan
from .pipeline import SHORTLIST
from .index_kinds import (HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, TOMBSTONE_REBUILD_FRACTION,  # noqa: F401 - re-exported, tests read the parameters here
                          TRAIN_SAMPLE, pq_m)
from .store_changes import Change, apply_update, dedupe, insert_items, replace_skipped
from .store_files import (FORMAT_VERSION, MANIFEST, clean_leftovers, crash_point, describe, dir_lock, gone_error,
                          items_file, list_indexes, not_found_error, read_manifest, remove_unreferenced,
                          validate_name, whitening_file, write_generation, write_whitening, writable_db)
from .store_state import Hit, State, load_rows, load_state, prepare_vectors, search_chunk

__all__ = ["IndexStore", "Hit", "list_indexes", "validate_name", "INDEX_TYPES", "FORMAT_VERSION", "MANIFEST"]

SEARCH_CHUNK = 1024  # queries per FAISS call, bounds the over-fetch buffers
_apply_update = apply_update  # looked up here at each change (tests wrap it)


def _paired(items: Sequence[Any] | None, vectors: Any, dim: int) -> tuple[list[Any], np.ndarray]:
    """Items and their unit vectors, checked to pair up one to one, the last of a repeated path kept."""
    items = list(items or [])
    vecs = prepare_vectors(np.zeros((0, dim), np.float32) if vectors is None else vectors, dim)
    if len(items) != len(vecs):
        raise LookalikeError(f"{len(items)} items but {len(vecs)} vectors; they must pair up one to one")
    return dedupe(items, vecs)


def _fit(vecs: np.ndarray, dim: int | None) -> Any:
    """The whitening a new index learns from its first vectors; its output is always narrower than its input (at
    most D − 1 axes), so vectors of the two spaces can never be mistaken for one another."""
    from .pipeline import fit_whitening

    if len(vecs) < 2:
        raise LookalikeError("whitening is learned on the collection: it needs at least two images; build the "
                             "index without --whiten")
    top = vecs.shape[1] - 1
    if dim is not None and not 1 <= dim <= top:
        raise LookalikeError(f"--whiten-dim must be between 1 and {top} (the encoder's {top + 1} dimensions less "
                             f"one), got {dim}")
    return fit_whitening(vecs, dim=dim or top)


def _index_space(state: State, vectors: Any, whitened: bool, what: str) -> np.ndarray:
    """Vectors as the FAISS index holds them: an unwhitened index takes unit vectors of its dim; a whitened one
    takes the encoder's vectors and whitens them itself, or, with ``whitened=True``, vectors already in its space
    (e.g. from :meth:`IndexStore.vectors`). Anything else is refused with the reason."""
    w, dim = state.whitening, state.manifest["dim"]
    if w is None or whitened:
        expected = dim
    else:
        expected = w.dim_in
    try:
        v = prepare_vectors(vectors, expected, what)
    except LookalikeError as exc:
        if w is None:
            raise
        raise LookalikeError(
            f"{exc} — index {state.manifest['name']!r} is whitened ({w.dim_in} → {w.dim} dimensions, learned on "
            f"its collection): give it the encoder's {w.dim_in}-d vectors and it whitens them with its own "
            f"whitening, or pass whitened=True with {w.dim}-d vectors taken from this index") from None
    return v if w is None or whitened else w.apply(v)


class IndexStore:
    """An opened index. Create with :meth:`create`, open with :meth:`open`; thread-safe for reads and writes."""

    def __init__(self, directory: Path, state: State):
        self.path = directory
        self._state = state
        self._lock = threading.RLock()

    # ----- construction -----
    @classmethod
    def create(cls, root_dir: str | Path, name: str, encoder_identity: dict, dim: int,
               collection_root: str | Path, index_type: str = "auto", overwrite: bool = False,
               items: Sequence[Any] | None = None, vectors: np.ndarray | None = None,
               skipped: Sequence[Any] | None = None, whiten: bool = False,
               whiten_dim: int | None = None) -> "IndexStore":
        """Build ``root_dir/name`` in a temp dir and rename it into place, optionally with its first items.

        ``dim`` is the encoder's. With ``whiten`` the index learns a PCA-whitening on ``vectors``
        (:func:`retrieval.pipeline.fit_whitening`, to ``whiten_dim`` axes, at most ``dim − 1``), stores it, and
        holds and searches whitened vectors from then on."""
        validate_name(name)
        check_type(index_type)
        if not isinstance(dim, int) or dim < 1:
            raise LookalikeError(f"dim must be a positive integer, got {dim!r}")
        if encoder_identity.get("dim") not in (None, dim):
            raise LookalikeError(f"encoder identity has dim {encoder_identity.get('dim')} but dim={dim} was given")
        root = Path(root_dir)
        root.mkdir(parents=True, exist_ok=True)
        final = root / name
        if final.exists() and not overwrite:
            raise LookalikeError(f"index {name!r} already exists under {root}; choose another name or overwrite it")
        clean_leftovers(root)
        items, vecs = _paired(items, vectors, dim)
        whitening = _fit(vecs, whiten_dim) if whiten else None
        if whitening is not None:
            vecs, dim = whitening.apply(vecs), whitening.dim
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        try:
            files, extra = {}, {}
            if whitening is not None:
                files["whitening"] = whitening_file(0)
                write_whitening(tmp / files["whitening"], whitening)
                extra["whitening"] = {**whitening.describe(), "added_since_fit": 0}
            db = tmp / items_file(0)
            with writable_db(db) as con:
                ids = insert_items(con, items)
                replace_skipped(con, skipped or [])
            p = plan(index_type, len(items), dim)
            index = build(p, dim, vecs, ids)
            created = now_iso()
            manifest = {"format_version": FORMAT_VERSION, "name": name, "root": str(Path(collection_root).resolve()),
                        "encoder": dict(encoder_identity), "dim": dim, "index_type": p.kind,
                        "requested_type": index_type, "factory": p.factory, "params": p.params, "note": p.note,
                        "metric": "ip", "generation": 0, "files": files, "uid": uuid.uuid4().hex,
                        "created": created, "updated": created, **extra}
            manifest = write_generation(tmp, manifest, db, index, new_index=True)
            crash_point("create-before-rename")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _move_into_place(tmp, final)
        return cls(final, load_rows(final / db.name, manifest, index, whitening))

    @classmethod
    def open(cls, root_dir: str | Path, name: str, encoder_identity: dict | None = None) -> "IndexStore":
        """Open an existing index; with ``encoder_identity``, refuse one built by a different encoder."""
        validate_name(name)
        directory = Path(root_dir) / name
        if not (directory / MANIFEST).is_file():
            raise not_found_error(Path(root_dir), name)
        store = cls(directory, load_state(directory))
        if encoder_identity is not None:
            store.check_encoder(encoder_identity)
        return store

    def check_encoder(self, identity: dict) -> None:
        """Raise :class:`EncoderMismatchError` unless ``identity`` makes the same vectors as the index's encoder."""
        built = self.manifest["encoder"]
        if not identity_matches(built, identity):
            raise mismatch_error(self.name, built, identity)

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
        return describe(self.path, {**self.manifest, "count": state.live, "vectors": int(state.index.ntotal)},
                        skipped=len(state.skipped))

    @property
    def whitened(self) -> bool:
        """Whether this index holds (and searches) vectors whitened with its own learned whitening."""
        return self._state.whitening is not None

    def search(self, vectors: np.ndarray, k: int, whitened: bool = False, qe: int = 0,
               dba: int = 0) -> list[list[Hit]]:
        """Top-``k`` hits per query (rows of ``vectors``), best first; never removed items, never more than count.

        ``vectors`` are the encoder's (a whitened index whitens them) unless ``whitened`` says they are already in
        the index's space (:meth:`vectors`). ``qe``/``dba`` > 0 re-rank a shortlist with αQE over that many
        neighbours / database-side augmentation (:func:`retrieval.pipeline.rerank`); scores are then the
        re-ranked similarities."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise LookalikeError(f"k must be a positive integer, got {k!r}")
        if min(int(qe), int(dba)) < 0:
            raise LookalikeError(f"qe and dba count neighbours: give 0 (off) or more, got qe={qe}, dba={dba}")
        state = self._state
        queries = _index_space(state, vectors, whitened, "query vectors")
        if state.live == 0:
            return [[] for _ in range(len(queries))]
        k = min(int(k), state.live)
        fetch = min(max(SHORTLIST, 4 * k), state.live) if qe or dba else k
        out: list[list[Hit]] = []
        for start in range(0, len(queries), SEARCH_CHUNK):
            out.extend(search_chunk(state, queries[start:start + SEARCH_CHUNK], fetch))
        if qe or dba:
            out = [_reranked(state, q, hits, k, int(qe), int(dba)) for q, hits in zip(queries, out)]
        return out

    def live_ids_vectors(self) -> tuple[np.ndarray, list[str], list[str | None], np.ndarray]:
        """(ids (N,), paths, labels, (N, dim) float32) of the live items, in id order (for a re-projected copy)."""
        state = self._state
        rows = np.flatnonzero(~state.deleted)
        ids = state.ids[rows]
        vecs = state.index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        return (ids, [state.paths[i] for i in rows], [state.labels[i] for i in rows],
                np.asarray(vecs, dtype=np.float32))

    def search_other(self, index: Any, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` of ``vectors`` in ``index``, a flat inner-product FAISS index over this generation's live ids
        (the learnt map's re-projected copy, :mod:`retrieval.marks`), as :meth:`search` reports them."""
        state = self._state
        flat = replace(state, index=index, manifest={**state.manifest, "index_type": "flat", "params": {}})
        queries = prepare_vectors(vectors, index.d, "query vectors")
        if state.live == 0:
            return [[] for _ in range(len(queries))]
        return search_chunk(flat, queries, min(int(k), state.live))

    def set_learnt_map(self, record: dict | None) -> None:
        """Record in the manifest that a learnt map is applied (``record``) or not (None): a new generation."""
        def work(con: sqlite3.Connection, old: State) -> Change:
            return Change(manifest={"learnt_map": record}, changed=True)
        self._commit(work)

    def reload_if_changed(self) -> bool:
        """Pick up a generation another process committed; True when something new was loaded."""
        try:
            disk = read_manifest(self.path)
        except FileNotFoundError:
            raise gone_error(self.path) from None
        current = self._state.manifest
        if (disk.get("uid"), disk["generation"]) == (current.get("uid"), current["generation"]):
            return False
        with self._lock:
            self._state = load_state(self.path)
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
        allowed = set(KINDS[self._state.manifest["index_type"]].search_params)
        bad = [p for p, v in params.items() if p not in allowed or not isinstance(v, int) or v < 1]
        if bad:
            raise LookalikeError(f"index {self.name!r} ({self._state.manifest['index_type']}) takes "
                                 f"{', '.join(sorted(allowed)) or 'no search parameters'} as positive integers")

        def work(con: sqlite3.Connection, old: State) -> Change:
            return Change(manifest={"params": {**old.manifest["params"], **params}}, changed=True)
        self._commit(work)

    def set_duplicates(self, calibration: dict | None) -> None:
        """Record the calibrated "same photo" threshold (:func:`retrieval.duplicates.calibrate`) in the manifest."""
        def work(con: sqlite3.Connection, old: State) -> Change:
            return Change(manifest={"duplicates": calibration}, changed=True)
        self._commit(work)

    def update(self, items: Sequence[Any] | None = None, vectors: np.ndarray | None = None,
               remove: Sequence[str] | None = None, skipped: Sequence[Any] | None = None) -> int:
        """One atomic change: remove ``remove`` paths, add/replace ``items``, replace the skipped list if given.

        Returns the number of removed paths that were present."""
        whitening = self._state.whitening
        items, vecs = _paired(items, vectors, self.dim if whitening is None else whitening.dim_in)
        if whitening is not None:
            vecs = whitening.apply(vecs)  # the index's own whitening, as fitted at build (never refitted here)
        gone = sorted(set(remove or []))

        def work(con: sqlite3.Connection, old: State) -> Change:
            change = _apply_update(con, old, items, vecs, gone, skipped)
            if whitening is not None and len(items):  # how far the collection moved from what it was fitted on
                fit = old.manifest["whitening"]
                change.manifest = {**change.manifest,
                                   "whitening": {**fit, "added_since_fit": fit["added_since_fit"] + len(items)}}
                change.changed = True
            return change
        return self._commit(work)

    def delete(self) -> None:
        """Remove the whole index directory (renamed away first, so it disappears at once)."""
        with self._lock, dir_lock(self.path):
            trash = self.path.parent / f".trash-{self.path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _commit(self, work: Callable[[sqlite3.Connection, State], Change]) -> Any:
        """Run ``work`` against a copy of the current SQLite file and publish the result as the next generation."""
        with self._lock, dir_lock(self.path):
            self.reload_if_changed()  # another process may have committed since we loaded
            old = self._state
            remove_unreferenced(self.path, old.manifest)  # leftovers of a writer that crashed
            gen = old.manifest["generation"] + 1
            db = self.path / items_file(gen)
            with writable_db(db, copy_of=self.path / old.manifest["files"]["items"]) as con:
                change = work(con, old)
            if not change.changed:
                db.unlink()
                return change.result
            index = old.index if change.index is None else change.index
            manifest = {**old.manifest, **change.manifest, "generation": gen, "updated": now_iso()}
            manifest = write_generation(self.path, manifest, db, index, new_index=change.index is not None)
            self._state = load_rows(db, manifest, index, old.whitening)
            remove_unreferenced(self.path, manifest)
            return change.result


def _reranked(state: State, q: np.ndarray, hits: list[Hit], k: int, qe: int, dba: int) -> list[Hit]:
    """The top ``k`` of a query's shortlist ``hits`` after αQE / DBA (:func:`retrieval.pipeline.rerank`)."""
    from .pipeline import rerank

    if not hits:
        return hits
    rows = [state.row_of[h.path] for h in hits]
    shortlist = np.asarray(state.index.reconstruct_batch(state.ids[rows]), np.float32)  # (M, d)
    order, scores = rerank(q, shortlist, qe=qe, dba=dba)
    return [Hit(hits[i].path, float(s), hits[i].label) for i, s in zip(order[:k], scores[:k])]


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished build ``tmp`` to ``final``, replacing an old index there (put back if that fails)."""
    trash = None
    try:
        if final.exists():
            trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
        os.replace(tmp, final)
        fsync_path(final.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None and not final.exists():
            os.replace(trash, final)  # put the old index back
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
