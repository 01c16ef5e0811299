"""Marks: results a person called right or wrong for a query, kept with the index, and the linear map learnt from
them (SimCLRv2's "few labels" step, done at once on the stored vectors).

On disk, in the index folder (names in :mod:`retrieval.store_files`)::

    marks.json      {"format_version": 1,
                     "marks": [{"query": KEY, "result": REL, "right": true, "at": ISO}, ...],
                     "queries": {KEY: {"kind": "item"|"upload", "path": ..., "sha256": ..., "vector": [...]}}}

A query is keyed ``item:REL`` when it is an image of the collection (its vector is read from the index when
learning, so a refresh that re-embeds it is followed) and ``upload:SHA256`` when it is any other file (an upload):
its own vector is stored then, with its content hash and the name it had, because nothing else can give it back.
A result is always an item of the index, by its path relative to the collection root. One mark per (query, result):
marking the same pair again replaces the mark, so the latest word counts. Marks are never touched by an index
change: a mark whose result (or item query) left the collection is kept, reported ``stale`` and ignored when
learning, and counts again if the file comes back.

The learnt map is ``y = A (x - m)``, then L2-normalised: ``m`` the mean of the index's vectors, and ``A`` damps the
directions along which images that belong together differ (right marks, images of one sub-folder) and stretches
those along which images that do not belong together differ (wrong marks, different sub-folders) (:func:`fit_map`).
It is a low-rank edit of the identity rather than a full whitening, because a few marks span a few directions
only: a full supervised whitening (Radenović, Tolias & Chum 2018) fitted on 29 labelled photos lost ~0.2 mAP@10 on
Tux Paint. Torch-free: NumPy only.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import LookalikeError
from .fsutil import atomic_write_bytes, atomic_write_json, now_iso
from .store_files import LEARNT_MAP, MARKS

MARKS_VERSION = 1
ITEM, UPLOAD = "item", "upload"
# How far the same-pair covariance is shrunk towards the identity (small: trust the pairs), and how much the
# different-pair directions are stretched: the best of a small grid on Tux Paint with 10% of its labels
# (docs/marks.md, bench/marks.py; shrink from 0.05 to 0.5 made no difference there).
DEFAULT_SHRINK = 0.05
DEFAULT_BOOST = 1.0
MAX_PAIRS = 20000  # pairs drawn from sub-folder labels, at most (a folder of 1000 photos has ~500k)


@dataclass(frozen=True)
class Mark:
    query: str
    result: str
    right: bool
    at: str

    def to_json(self) -> dict:
        return {"query": self.query, "result": self.result, "right": self.right, "at": self.at}


def item_key(rel: str) -> str:
    return f"{ITEM}:{rel}"


def upload_key(sha256: str) -> str:
    return f"{UPLOAD}:{sha256}"


def query_item(key: str) -> str | None:
    """The collection path of an ``item:`` query key, None for an upload."""
    kind, _, rest = key.partition(":")
    return rest if kind == ITEM else None


# ----- the marks file ---------------------------------------------------------------------------------------------
def _empty() -> dict:
    return {"format_version": MARKS_VERSION, "marks": [], "queries": {}}


def read_marks(directory: Path) -> dict:
    """The marks file of an index folder (empty when there is none); a damaged one is an error, not an empty list,
    so that a write never silently drops marks."""
    path = Path(directory) / MARKS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _empty()
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"{path} is unreadable ({exc}); move it away to start the marks afresh") from None
    ok = (isinstance(data, dict) and data.get("format_version") == MARKS_VERSION
          and isinstance(data.get("marks"), list) and isinstance(data.get("queries"), dict))
    if not ok:
        raise LookalikeError(f"{path} is not a marks file of version {MARKS_VERSION}; move it away to start afresh")
    return data


def marks_of(data: dict) -> list[Mark]:
    return [Mark(m["query"], m["result"], bool(m["right"]), m.get("at", "")) for m in data["marks"]]


def check_right(right) -> bool:
    if not isinstance(right, bool):
        raise LookalikeError(f"a mark is right (True) or wrong (False), got {right!r}")
    return right


def record_mark(directory: Path, key: str, query: dict, result: str, right: bool,
                is_item: Callable[[str], bool]) -> dict:
    """Store one mark (the caller holds the index's lock). ``query`` describes ``key`` (see the module doc);
    ``is_item`` says whether a path is a live item of the index. Returns the mark and the one it replaced, if any."""
    check_right(right)
    if not isinstance(result, str) or not is_item(result):
        raise LookalikeError(f"{result!r} is not an image of this index: mark one of its search results")
    item = query_item(key)
    if item is not None and not is_item(item):
        raise LookalikeError(f"query {item!r} is not an image of this index")
    if item == result:
        raise LookalikeError("an image cannot be marked as a result of itself")
    data = read_marks(directory)
    old = [m for m in data["marks"] if (m["query"], m["result"]) == (key, result)]
    data["marks"] = [m for m in data["marks"] if (m["query"], m["result"]) != (key, result)]
    mark = Mark(key, result, right, now_iso())
    data["marks"].append(mark.to_json())
    data["queries"][key] = query
    atomic_write_json(Path(directory) / MARKS, data)
    return {"mark": mark.to_json(), "replaced": old[0] if old else None}


def report(data: dict, live: Callable[[str], bool]) -> list[dict]:
    """Every mark with ``stale`` = its result or its item query is no longer in the index."""
    out = []
    for m in marks_of(data):
        item = query_item(m.query)
        stale = not live(m.result) or (item is not None and not live(item))
        out.append({**m.to_json(), "query_path": item or data["queries"].get(m.query, {}).get("path"),
                    "stale": stale})
    return out


# ----- learning -----------------------------------------------------------------------------------------------
def label_pairs(labels: list[str | None], max_pairs: int = MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(same, different): (P, 2) index pairs of labelled rows with equal / unequal labels, at most ``max_pairs``
    each (a seeded sample). Rows labelled None take no part."""
    idx = np.array([i for i, lab in enumerate(labels) if lab is not None], dtype=np.int64)
    if len(idx) < 2:
        return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
    lab = np.array([labels[i] for i in idx], dtype=object)
    a, b = np.triu_indices(len(idx), k=1)  # (P,) every unordered pair
    same = lab[a] == lab[b]
    rng = np.random.default_rng(seed)
    out = []
    for mask in (same, ~same):
        pairs = np.stack([idx[a[mask]], idx[b[mask]]], axis=1)
        if len(pairs) > max_pairs:
            pairs = pairs[rng.choice(len(pairs), max_pairs, replace=False)]
        out.append(pairs)
    return out[0], out[1]


def _span(d: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(r, D) orthonormal basis of the rows of ``d`` (N, D)."""
    if not len(d):
        return np.zeros((0, d.shape[1]))
    _, s, vt = np.linalg.svd(d, full_matrices=False)  # d = u diag(s) vt
    return vt[s > tol * s.max()] if s.max() > 0 else np.zeros((0, d.shape[1]))


def fit_map(vectors: np.ndarray, same: np.ndarray, diff: np.ndarray, shrink: float = DEFAULT_SHRINK,
            boost: float = DEFAULT_BOOST) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), A (D, D)) of the map ``y = A (x - mean)`` from ``vectors`` (N, D) and row pairs that belong
    together (``same``, (P, 2)) or not (``diff``, (Q, 2)).

    A = (I + boost · B^T B) S, with S = sqrt(shrink) · ((1 - shrink) C_S / t + shrink I)^(-1/2), C_S the mean of
    d d^T over same-pair differences d = x_i - x_j and t = tr(C_S) / D, and B an orthonormal basis of the
    different-pair differences after S. S is 1 along directions no same pair differs in and damps the others (by
    up to sqrt(shrink) times), so a few marks move the space a little and unmarked structure is kept; the map stays
    invertible."""
    if not 0 < shrink <= 1 or boost < 0:
        raise LookalikeError(f"shrink must be in (0, 1] and boost >= 0, got {shrink!r}, {boost!r}")
    x = np.asarray(vectors, dtype=np.float64)  # (N, D)
    same = np.asarray(same, dtype=np.int64).reshape(-1, 2)
    diff = np.asarray(diff, dtype=np.int64).reshape(-1, 2)
    if not len(same) and not len(diff):
        raise LookalikeError("no pairs to learn from: mark some results right or wrong, or index a folder with "
                             "sub-folders")
    dim = x.shape[1]
    a = np.eye(dim)  # (D, D)
    if len(same):
        d = x[same[:, 0]] - x[same[:, 1]]  # (P, D)
        c_s = d.T @ d / len(d)  # (D, D)
        t = max(np.trace(c_s) / dim, 1e-12)
        w, v = np.linalg.eigh((1 - shrink) * c_s / t + shrink * np.eye(dim))  # eigenvalues >= shrink
        a = (v / np.sqrt(w)) @ v.T * np.sqrt(shrink)  # (D, D) C^(-1/2); 1 where no pair differs
    b = _span((x[diff[:, 0]] - x[diff[:, 1]]) @ a.T) if len(diff) else np.zeros((0, dim))  # (q, D)
    a = a + boost * b.T @ (b @ a)
    return x.mean(axis=0).astype(np.float32), a.astype(np.float32)


def apply_map(mean: np.ndarray, matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(N, D) vectors through the map, L2-normalised, float32."""
    y = (np.asarray(x, dtype=np.float32) - mean) @ matrix.T  # (N, D)
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    return np.ascontiguousarray(y / np.maximum(norms, 1e-12), dtype=np.float32)


def write_map(directory: Path, mean: np.ndarray, matrix: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, mean=mean, matrix=matrix)
    atomic_write_bytes(Path(directory) / LEARNT_MAP, buf.getvalue())


def read_map(directory: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    path = Path(directory) / LEARNT_MAP
    try:
        with np.load(path, allow_pickle=False) as f:
            mean, matrix = f["mean"], f["matrix"]
    except (OSError, KeyError, ValueError) as exc:
        raise LookalikeError(f"the learnt map {path} is unreadable ({exc}); learn it again or undo it") from None
    if mean.shape != (dim,) or matrix.ndim != 2 or matrix.shape[1] != dim:
        raise LookalikeError(f"the learnt map {path} does not fit this index (dim {dim}); learn it again")
    return mean.astype(np.float32), matrix.astype(np.float32)


def mark_pairs(data: dict, row_of: dict[str, int], extra: Callable[[str], int | None],
               ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(same, different, stale) row pairs of the marks: ``row_of`` maps live paths to rows; ``extra(key)`` gives the
    row of an upload query's stored vector (None: unusable). Stale marks are counted, not used."""
    same, diff, stale = [], [], 0
    for m in marks_of(data):
        item = query_item(m.query)
        q = row_of.get(item) if item is not None else extra(m.query)
        r = row_of.get(m.result)
        if q is None or r is None:
            stale += 1
            continue
        (same if m.right else diff).append((q, r))
    return same, diff, stale


def upload_vectors(data: dict, dim: int) -> dict[str, np.ndarray]:
    """The stored vectors of upload queries that have the index's dimension."""
    out = {}
    for key, q in data["queries"].items():
        vec = np.asarray(q.get("vector") or [], dtype=np.float32)
        if q.get("kind") == UPLOAD and vec.shape == (dim,) and np.isfinite(vec).all():
            out[key] = vec
    return out


def labels_available(labels: Iterable[str | None]) -> dict[str, int]:
    """Images per sub-folder label."""
    counts: dict[str, int] = {}
    for lab in labels:
        if lab is not None:
            counts[lab] = counts.get(lab, 0) + 1
    return dict(sorted(counts.items()))
