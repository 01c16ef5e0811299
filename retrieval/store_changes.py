"""What one change to an index does to its rows and vectors; runs inside :meth:`IndexStore._commit` against a
private copy of the SQLite file, and returns the new FAISS index (or None when the vectors did not change)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import LookalikeError
from .index_kinds import KINDS, TOMBSTONE_REBUILD_FRACTION, Plan, build, clone, plan, target_kind
from .store_state import State

if TYPE_CHECKING:  # pragma: no cover
    import faiss


@dataclass
class Change:
    """What one mutation produced: a new index (or None = unchanged) and manifest fields to update."""

    index: faiss.Index | None = None
    manifest: dict = field(default_factory=dict)
    changed: bool = False
    result: Any = None


def dedupe(items: list[Any], vecs: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Keep the last occurrence of each path, so one batch cannot insert a path twice."""
    last = {it.path: i for i, it in enumerate(items)}
    if len(last) == len(items):
        return items, vecs
    keep = sorted(last.values())
    return [items[i] for i in keep], vecs[keep]


def insert_items(con: sqlite3.Connection, items: list[Any]) -> np.ndarray:
    ids = []
    for it in items:
        if not isinstance(it.path, str) or not it.path:
            raise LookalikeError(f"item path must be a non-empty string, got {it.path!r}")
        cur = con.execute("INSERT INTO items(path, size, mtime, label) VALUES (?, ?, ?, ?)",
                          (it.path, int(it.size), float(it.mtime), it.label))
        ids.append(cur.lastrowid)
    return np.asarray(ids, dtype=np.int64)


def replace_skipped(con: sqlite3.Connection, skipped: Sequence[Any]) -> None:
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


def _vectors_of(index: faiss.Index, ids: np.ndarray, dim: int) -> np.ndarray:
    return index.reconstruct_batch(ids) if len(ids) else np.zeros((0, dim), np.float32)


def apply_update(con: sqlite3.Connection, old: State, items: list[Any], vecs: np.ndarray, gone: list[str],
                 skipped: Sequence[Any] | None) -> Change:
    """Remove the ``gone`` paths, add or replace ``items`` (with ``vecs``), replace the skipped list if given."""
    change = Change(result=0)
    if skipped is not None:
        replace_skipped(con, skipped)
        change.changed = True
    removed_ids = _ids_for(con, gone, live_only=True)
    change.result = len(removed_ids)
    # Paths being re-added lose their old row (and vector) first; tombstone rows for them are dropped too.
    replaced_ids = _ids_for(con, [it.path for it in items], live_only=False)
    index = None  # the clone we mutate, made on first need
    if removed_ids or replaced_ids:
        change.changed = True
        index = _drop_rows(con, old, removed_ids, replaced_ids)
    if items:
        change.changed = True
        index = _add_rows(con, old, index, items, vecs, change)
    rebuilt = _compact_tombstones(con, old, index if index is not None else old.index, change)
    change.index = rebuilt if rebuilt is not None else index
    return change


def _drop_rows(con: sqlite3.Connection, old: State, removed_ids: list[int], replaced_ids: list[int]) -> Any:
    """Delete rows and their vectors; a kind that cannot remove vectors keeps tombstones, filtered at search."""
    if KINDS[old.manifest["index_type"]].tombstones:
        con.executemany("UPDATE items SET deleted = 1 WHERE id = ?", [(i,) for i in removed_ids])
        con.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in replaced_ids])
        return None
    doomed = np.asarray(sorted(set(removed_ids) | set(replaced_ids)), dtype=np.int64)
    index = clone(old.index)
    index.remove_ids(doomed)
    con.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in doomed])
    return index


def _add_rows(con: sqlite3.Connection, old: State, index: Any, items: list[Any], vecs: np.ndarray,
              change: Change) -> Any:
    """Insert rows and add their vectors; the first vectors of an untrained or "auto" index, or an index that
    outgrew its kind, (re)build it with every live vector."""
    kind, dim = old.manifest["index_type"], old.manifest["dim"]
    requested = old.manifest.get("requested_type", kind)
    new_ids = insert_items(con, items)
    live_after = len(_live_ids(con))
    current = index if index is not None else old.index
    if current.ntotal == 0 or KINDS[target_kind(requested, live_after)].rank > KINDS[kind].rank:
        keep = np.setdiff1d(_live_ids(con), new_ids)
        p = plan(requested, live_after, dim)
        rebuilt = build(p, dim, np.concatenate([_vectors_of(current, keep, dim), vecs]),
                        np.concatenate([keep, new_ids]))
        con.execute("DELETE FROM items WHERE deleted = 1")  # the new index holds no tombstones
        change.manifest.update(index_type=p.kind, factory=p.factory, params=p.params, note=p.note)
        return rebuilt
    if index is None:
        index = clone(old.index)
    index.add_with_ids(vecs, new_ids)
    return index


def _compact_tombstones(con: sqlite3.Connection, old: State, current: Any, change: Change) -> Any:
    """Past TOMBSTONE_REBUILD_FRACTION dead vectors, rebuild the index from its own live vectors (else None)."""
    manifest = {**old.manifest, **change.manifest}
    live_ids = _live_ids(con)
    dead = current.ntotal - len(live_ids)
    if not KINDS[manifest["index_type"]].tombstones or dead <= TOMBSTONE_REBUILD_FRACTION * current.ntotal:
        return None
    p = Plan(manifest["index_type"], manifest["factory"], manifest["params"])
    index = build(p, manifest["dim"], _vectors_of(current, live_ids, manifest["dim"]), live_ids)
    con.execute("DELETE FROM items WHERE deleted = 1")
    return index
