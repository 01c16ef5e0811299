"""Retrieval and representation metrics — pure NumPy functions.

Ranked results are given as a relevance matrix ``rel`` of shape (Q, K): ``rel[q, i]`` is true when the i-th result
(best first) of query q is relevant. :func:`relevance_from_labels` builds it from label arrays.
"""

from __future__ import annotations

import numpy as np


def _check_rel(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.asarray(rel, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"rel must be (queries, ranks), got shape {rel.shape}")
    if k < 1:
        raise ValueError("k must be >= 1")
    return rel[:, :k]


def recall_at_k(rel: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one relevant item in the top k (the image-retrieval "R@k")."""
    r = _check_rel(rel, k)
    return float(r.any(axis=1).mean()) if len(r) else 0.0


def precision_at_k(rel: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant items in the top k) / k."""
    r = _check_rel(rel, k)
    return float(r.sum(axis=1).mean() / k) if len(r) else 0.0


def map_at_k(rel: np.ndarray, k: int, n_relevant: np.ndarray | None = None) -> float:
    """Mean average precision at k.

    AP@k(q) = (1 / min(k, R_q)) · Σ_{i ≤ k} P@i · rel_i, with R_q the number of relevant items in the database
    (``n_relevant``); without it, R_q is taken as the relevant items found in the top k. Queries with R_q = 0
    score 0.
    """
    r = _check_rel(rel, k).astype(np.float64)  # (Q, k)
    if not len(r):
        return 0.0
    hits = np.cumsum(r, axis=1)  # (Q, k) relevant items up to rank i
    prec = hits / np.arange(1, r.shape[1] + 1)  # (Q, k) P@i
    denom = r.sum(axis=1) if n_relevant is None else np.minimum(np.asarray(n_relevant, np.float64), k)
    ap = np.divide((prec * r).sum(axis=1), denom, out=np.zeros(len(r)), where=denom > 0)
    return float(ap.mean())


def micro_average_precision(scores: np.ndarray, rel: np.ndarray, n_ground_truth: int) -> float:
    """Micro-average precision of copy detection, as in the DISC21 benchmark (Douze et al., 2021).

    Every (query, result) pair of every query's top k (``scores`` and ``rel``, both (Q, k)) is put in one list,
    ranked by score (best first; ties keep query order); AP is the area under that list's precision-recall curve,
    Σ over the relevant pairs of the precision at their rank, divided by ``n_ground_truth`` (the number of
    (query, reference) copy pairs there are, found or not). Queries without a copy in the database count through
    their confident false matches, which lower the precision of every pair ranked below them.
    """
    s = np.asarray(scores, np.float64)
    r = np.asarray(rel, dtype=bool)
    if s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and rel {r.shape} must have the same shape")
    if n_ground_truth < 1:
        raise ValueError("n_ground_truth must be >= 1")
    order = np.argsort(-s.ravel(), kind="stable")
    hits = r.ravel()[order]
    if hits.sum() > n_ground_truth:
        raise ValueError(f"{int(hits.sum())} relevant pairs found but n_ground_truth is {n_ground_truth}")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / n_ground_truth)


def relevance_from_labels(ranked: np.ndarray, query_labels, db_labels) -> np.ndarray:
    """(Q, K) indices into the database → (Q, K) bool: same label as the query. Index -1 (no result) is False."""
    ranked = np.asarray(ranked)
    db = np.asarray(db_labels, dtype=object)
    q = np.asarray(query_labels, dtype=object)[:, None]
    valid = ranked >= 0
    return valid & (db[np.where(valid, ranked, 0)] == q)


def top_k(query_vecs: np.ndarray, db_vecs: np.ndarray, k: int, exclude_self: bool = False,
          chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k in chunks (never a full Q×N matrix in memory at once).

    Returns (scores (Q, k), indices (Q, k)), best first. With ``exclude_self``, query i is database item i and is
    left out of its own results.
    """
    q = np.asarray(query_vecs, np.float32)
    db = np.asarray(db_vecs, np.float32)
    k = min(k, len(db) - (1 if exclude_self else 0))
    scores = np.empty((len(q), max(k, 0)), np.float32)
    idx = np.empty((len(q), max(k, 0)), np.int64)
    if k <= 0:
        return scores, idx
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ db.T  # (c, N)
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (c, k) unordered
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        idx[start:start + chunk] = np.take_along_axis(part, order, axis=1)
        scores[start:start + chunk] = np.take_along_axis(part_scores, order, axis=1)
    return scores, idx


def knn_accuracy(query_vecs: np.ndarray, query_labels, db_vecs: np.ndarray, db_labels, k: int = 200,
                 temperature: float = 0.1, exclude_self: bool = False) -> float:
    """Weighted k-nearest-neighbour classification accuracy (InstDisc's monitor; k=200, T=0.1).

    Each of the k nearest database items votes for its label with weight exp(cosine / T); the query is correct when
    its label gets the largest total. Vectors are expected L2-normalised.
    """
    if len(query_vecs) == 0:
        return 0.0
    scores, idx = top_k(query_vecs, db_vecs, k, exclude_self=exclude_self)
    classes, db_codes = np.unique(np.asarray(db_labels, dtype=object).astype(str), return_inverse=True)
    weights = np.exp((scores.astype(np.float64) - 1.0) / temperature)  # shift by the max cosine for stability
    votes = np.zeros((len(idx), len(classes)))  # (Q, C)
    np.add.at(votes, (np.arange(len(idx))[:, None], db_codes[idx]), weights)
    predicted = classes[votes.argmax(axis=1)]
    return float((predicted == np.asarray(query_labels, dtype=object).astype(str)).mean())


def evaluate_labelled(vectors: np.ndarray, labels, ks: tuple[int, ...] = (1, 5, 10), map_k: int = 10,
                      knn_k: int = 200, temperature: float = 0.1) -> dict[str, float]:
    """Leave-one-out evaluation of a labelled collection: every image queries all the others.

    Returns ``recall@k`` for each k, ``precision@10``, ``map@{map_k}`` (normalised by the number of other items of the
    same label) and weighted ``knn_acc``.
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    kmax = max(max(ks), map_k, 10)
    _, idx = top_k(vectors, vectors, kmax, exclude_self=True)
    rel = relevance_from_labels(idx, labels, labels)
    per_label = dict(zip(*np.unique(labels, return_counts=True)))
    n_rel = np.array([per_label[lab] - 1 for lab in labels])
    out = {f"recall@{k}": recall_at_k(rel, k) for k in ks}
    out["precision@10"] = precision_at_k(rel, 10)
    out[f"map@{map_k}"] = map_at_k(rel, map_k, n_relevant=n_rel)
    out["knn_acc"] = knn_accuracy(vectors, labels, vectors, labels, k=knn_k, temperature=temperature,
                                  exclude_self=True)
    return out
