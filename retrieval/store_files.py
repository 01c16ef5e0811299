"""The files of an index directory: names, the manifest, the writer's lock, generations and leftovers.

Layout of ``ROOT/NAME/``::

    manifest.json        {"format_version": 1, "generation": G, "files": {"index": ..., "items": ...}, ...}
    index.<g>.faiss      inner-product FAISS index over L2-normalised float32 vectors, ids = items.id
    items.<g>.sqlite     items(id, path, size, mtime, label, deleted) + skipped(path, reason)
    whitening.<g>.npz    only in a whitened index: the PCA-whitening fitted on the collection (mean, projection;
                         NumPy arrays, no pickle), applied to every vector the index is given (retrieval.pipeline)
    .lock                advisory lock file: one writer at a time, across processes
    scorecard.json       cache of the label-free scorecard (retrieval/scorecard.py) of one generation, per seed and
                         sample: {"generation": G, "cards": {"<seed>/<sample>": card}}; stale once G changes
    marks.json           results a person marked right or wrong for a query (retrieval/marks.py); kept across
                         generations, never rewritten by an index change
    learnt_map.npz       the linear map learnt from the marks (retrieval/marks.py): mean (D,) and matrix (D, D)
    learnt.faiss         the index's vectors through that map, flat inner product (ids = items.id), and
    learnt.json          which generation it was built from ({"uid": U, "generation": G}); rebuilt when stale

Committed data files are never modified: a change writes new files named after the next generation, flushes them,
and only then atomically replaces ``manifest.json`` (:func:`write_generation`), the single commit point. Files no
manifest refers to are deleted by the next writer, under the lock (:func:`remove_unreferenced`). Tests kill the
process at each step through ``LOOKALIKE_CRASH_AT`` (:func:`crash_point`). Torch-free; FAISS is imported only to
write a FAISS file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterator, TypeVar

from .errors import IndexNotFoundError, LookalikeError
from .fsutil import atomic_write_bytes, atomic_write_json, fsync_path, is_temp, read_json_dict
from .index_kinds import KINDS, is_type

_T = TypeVar("_T")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCORECARD = "scorecard.json"
MARKS = "marks.json"
LEARNT_MAP = "learnt_map.npz"
LEARNT_INDEX = "learnt.faiss"
LEARNT_INDEX_OF = "learnt.json"
REQUIRED = ("format_version", "name", "root", "encoder", "dim", "index_type", "factory", "metric", "count",
            "generation", "files", "created", "updated")
SCHEMA = """
CREATE TABLE items(id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
                   mtime REAL NOT NULL, label TEXT, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE skipped(path TEXT NOT NULL, reason TEXT NOT NULL);
"""
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# the data files of a generation (also matches SQLite's -journal files)
_DATA_FILE_RE = re.compile(r"(index\.\d+\.faiss|items\.\d+\.sqlite|whitening\.\d+\.npz)")
_LEGACY_TMP = MANIFEST + ".tmp"  # the manifest's temporary before fsutil named them all alike


def items_file(generation: int) -> str:
    return f"items.{generation}.sqlite"


def index_file(generation: int) -> str:
    return f"index.{generation}.faiss"


def whitening_file(generation: int) -> str:
    return f"whitening.{generation}.npz"


def write_whitening(path: Path, whitening: Any) -> None:
    """Store a :class:`retrieval.pipeline.Whitening` atomically as plain arrays (read back without pickle)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, mean=whitening.mean, projection=whitening.projection,
             facts=np.array([whitening.shrinkage, whitening.fitted_on], np.float64))
    atomic_write_bytes(path, buf.getvalue())


def read_whitening(path: Path) -> Any:
    """The :class:`retrieval.pipeline.Whitening` stored at ``path``."""
    import numpy as np

    from .pipeline import Whitening

    try:
        with np.load(path, allow_pickle=False) as f:
            mean, proj, facts = f["mean"], f["projection"], f["facts"]
    except (OSError, KeyError, ValueError) as exc:
        raise LookalikeError(f"index {path.parent.name!r}: unreadable {path.name} ({exc}); rebuild the index") from None
    if mean.ndim != 1 or proj.ndim != 2 or proj.shape[0] != mean.shape[0]:
        raise LookalikeError(f"index {path.parent.name!r}: {path.name} has inconsistent shapes; rebuild the index")
    return Whitening(mean.astype(np.float32), proj.astype(np.float32), float(facts[0]), int(facts[1]))


def crash_point(step: str) -> None:
    """Test hook: die like ``kill -9`` at a named step of the write sequence (``LOOKALIKE_CRASH_AT=step``)."""
    if os.environ.get("LOOKALIKE_CRASH_AT") == step:
        os._exit(137)


def validate_name(name: str) -> str:
    """Index names become directory names: letters, digits, '.', '_', '-', not starting with '.' or '-'."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 128:
        raise LookalikeError(f"invalid index name {name!r}: use letters, digits, '.', '_' and '-' (no slashes, "
                             f"not starting with '.' or '-', at most 128 characters), e.g. 'photos-simclr'")
    return name


# ----- manifests ----------------------------------------------------------------------------------------------

def read_manifest(directory: Path) -> dict:
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
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise LookalikeError(f"index {directory.name!r}: manifest.json lacks {', '.join(missing)}; rebuild the index")
    if not isinstance(manifest["dim"], int) or manifest["dim"] < 1:
        raise LookalikeError(f"index {directory.name!r}: bad dim {manifest['dim']!r} in manifest; rebuild the index")
    if manifest["index_type"] not in KINDS or not is_type(manifest.get("requested_type", "auto")):
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
            found.append(read_manifest(child))
        except (OSError, LookalikeError):
            continue
    return found


def available(root: Path) -> str:
    """The names of the indexes under ``root``, for error messages."""
    names = [m["name"] for m in list_indexes(root)]
    return ", ".join(names) if names else "none yet (build one with 'lookalike index build')"


def not_found_error(root: Path, name: str) -> IndexNotFoundError:
    return IndexNotFoundError(f"no index named {name!r} under {root}; available: {available(root)}")


def gone_error(directory: Path) -> IndexNotFoundError:
    return IndexNotFoundError(f"index {directory.name!r} no longer exists under {directory.parent}; "
                              f"available: {available(directory.parent)}")


def describe(directory: Path, manifest: dict, skipped: int | None = None) -> dict:
    """What 'index info' shows: the manifest (with ``count`` live items and ``vectors`` in the FAISS file) plus
    tombstones, the number of skipped files (read from the SQLite file unless given) and bytes on disk."""
    if skipped is None:
        con = read_db(directory / manifest["files"]["items"])
        try:
            skipped = int(con.execute("SELECT count(*) FROM skipped").fetchone()[0])
        finally:
            con.close()
    size = 0
    for f in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a writer may be swapping generations right now
            size += f.stat().st_size
    return {**manifest, "tombstones": manifest["vectors"] - manifest["count"], "skipped": skipped,
            "size_bytes": size, "path": str(directory)}


def describe_from_disk(root: Path, name: str) -> dict | None:
    """:func:`describe` of index ``name`` from its files alone (no FAISS, no NumPy); None where the manifest does
    not count its vectors (open the index to describe it)."""
    def read(directory: Path, manifest: dict) -> dict | None:
        if not all(isinstance(manifest.get(k), int) for k in ("vectors", "count")):
            return None  # written before manifests counted their vectors (or edited by hand): open it instead
        return describe(directory, manifest)

    return _read_one_generation(root, name, read)


def _read_one_generation(root: Path, name: str, read: Callable[[Path, dict], _T]) -> _T:
    """``read(directory, manifest)`` of index ``name``, again with a fresh manifest where a writer swapped
    generations between reading the manifest and reading the files it names (five tries)."""
    directory = root / validate_name(name)
    for attempt in range(5):
        try:
            manifest = read_manifest(directory)
        except FileNotFoundError:
            raise not_found_error(root, name) from None
        try:
            return read(directory, manifest)
        except (sqlite3.Error, OSError):
            if attempt == 4:
                raise LookalikeError(f"index {name!r} kept changing while being read; try again") from None
    raise AssertionError("not reached")


# ----- the scorecard's cache ------------------------------------------------------------------------------------
def _scorecard_key(seed: int, sample: int | None) -> str:
    return f"{seed}/{sample if sample is not None else 'default'}"


def read_scorecard(directory: Path, generation: int, seed: int = 0, sample: int | None = None) -> dict | None:
    """The cached scorecard (``Scorecard.to_json()``) of ``generation`` for this seed and sample, or None."""
    cache = read_json_dict(directory / SCORECARD)
    if cache.get("generation") != generation:
        return None
    card = (cache.get("cards") or {}).get(_scorecard_key(seed, sample))
    return card if isinstance(card, dict) else None


def write_scorecard(directory: Path, generation: int, card: dict, seed: int = 0, sample: int | None = None) -> None:
    """Cache ``card`` for ``generation`` (atomically; the cards of an older generation are dropped)."""
    cache = read_json_dict(directory / SCORECARD)
    if cache.get("generation") != generation:
        cache = {"generation": generation, "cards": {}}
    cache.setdefault("cards", {})[_scorecard_key(seed, sample)] = card
    atomic_write_json(directory / SCORECARD, cache)


def read_known(root: Path, name: str) -> tuple[dict, dict[str, tuple[int, float]], list[tuple[str, str]]]:
    """(manifest, live path → (size, mtime), skipped (path, reason) by path) of index ``name``, read from its
    SQLite file alone (no FAISS, no NumPy): what a refresh compares a fresh scan with."""
    def read(directory: Path, manifest: dict) -> tuple[dict, dict[str, tuple[int, float]], list[tuple[str, str]]]:
        con = read_db(directory / manifest["files"]["items"])
        try:
            known = {p: (int(s), float(m)) for p, s, m in
                     con.execute("SELECT path, size, mtime FROM items WHERE deleted = 0")}
            skipped = con.execute("SELECT path, reason FROM skipped ORDER BY path").fetchall()
        finally:
            con.close()
        return manifest, known, [(p, r) for p, r in skipped]

    return _read_one_generation(root, name, read)


# ----- generations ------------------------------------------------------------------------------------------

def read_db(path: Path) -> sqlite3.Connection:
    """Read-only connection; committed files never change, so SQLite may skip locking (immutable=1)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)


@contextlib.contextmanager
def writable_db(path: Path, copy_of: Path | None = None) -> Iterator[sqlite3.Connection]:
    """A new private SQLite file at ``path``: a copy of ``copy_of``, or empty with the schema. The block runs in
    one transaction; the file is private until a manifest names it, so it skips journalling and syncing (the
    caller flushes it before committing)."""
    con = sqlite3.connect(path)
    try:
        if copy_of is not None:
            src = read_db(copy_of)
            try:
                src.backup(con)
            finally:
                src.close()
        con.execute("PRAGMA journal_mode=MEMORY")
        con.execute("PRAGMA synchronous=OFF")
        with con:
            if copy_of is None:
                con.executescript(SCHEMA)
            yield con
    finally:
        con.close()


def live_count(db: Path) -> int:
    con = read_db(db)
    try:
        return int(con.execute("SELECT count(*) FROM items WHERE deleted = 0").fetchone()[0])
    finally:
        con.close()


def write_generation(directory: Path, manifest: dict, db: Path, index: Any, new_index: bool) -> dict:
    """Commit generation ``manifest["generation"]`` in ``directory``: flush ``db`` (already written), write and
    flush the FAISS ``index`` if it is new (else the manifest keeps naming its file), then atomically replace the
    manifest. Returns the manifest written. The one way every index generation, the first included, is made."""
    gen = manifest["generation"]
    fsync_path(db)
    crash_point("items-written")
    files = {**manifest.get("files", {}), "items": db.name}
    if new_index:
        import faiss

        files["index"] = index_file(gen)
        faiss.write_index(index, str(directory / files["index"]))
        fsync_path(directory / files["index"])
        crash_point("index-written")
    # "vectors" (those in the FAISS file, tombstones included) lets 'index info' answer without loading FAISS.
    manifest = {**manifest, "files": files, "count": live_count(db), "vectors": int(index.ntotal)}
    atomic_write_json(directory / MANIFEST, manifest, sort_keys=True,
                      before_replace=lambda: crash_point("manifest-written"))
    crash_point("manifest-replaced")
    return manifest


# ----- locks and leftovers ----------------------------------------------------------------------------------

@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
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


def remove_unreferenced(directory: Path, manifest: dict) -> None:
    """Delete data files (and temp/journal leftovers) the manifest does not name. Call only under the dir lock."""
    keep = set(manifest["files"].values())
    for entry in directory.iterdir():
        name = entry.name
        stray = (name == _LEGACY_TMP or is_temp(name, of=MANIFEST)
                 or (_DATA_FILE_RE.match(name) is not None and name not in keep))
        if stray:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def clean_leftovers(root: Path) -> None:
    """Remove trash dirs and temp build dirs older than an hour (crashed creates/deletes)."""
    cutoff = time.time() - 3600
    for entry in root.glob(".t*-*"):
        if entry.is_dir() and (entry.name.startswith(".trash-") or
                               (entry.name.startswith(".tmp-") and entry.stat().st_mtime < cutoff)):
            shutil.rmtree(entry, ignore_errors=True)
