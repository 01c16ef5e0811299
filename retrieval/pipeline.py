"""The search pipeline around the network, as pure NumPy: whitening, query expansion, database-side augmentation,
score normalisation and the calibrated "same photo" threshold.

    backbone → pooling (retrieval.encoders) → whitening (here, fitted on the collection) → L2 → FAISS
             → αQE / DBA re-ranking of a shortlist (here) → calibrated scores (here)

Whitening is part of what a query must match: the index stores it (:mod:`retrieval.store_files`) and whitens every
vector it is given (:class:`retrieval.index_store.IndexStore`). Measured effects and defaults:
``docs/retrieval-tools.md`` (``python -m bench.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WHITEN_SHRINKAGE = 0.5  # weight of the mean eigenvalue mixed into each one (0: plain PCA-whitening, 1: PCA only)
WHITEN_FIT_SAMPLE = 20_000  # vectors a fit uses at most (a seeded sample): the covariance is well estimated by then
WHITEN_REFIT_SHARE = 0.2  # a refresh says the whitening is stale once this share of the items is new (measured:
# fitted before 10% / 20% / 50% more were added, copy micro-AP fell 0.004 / 0.011 / 0.030; docs/retrieval-tools.md)
QE_ALPHA = 3.0  # the exponent of αQE / DBA weights (Radenović et al. 2018)
SHORTLIST = 100  # candidates QE and DBA re-rank per query (at least 4·k)
COPY_PRECISION = 0.9  # the precision the "same photo" threshold is calibrated for


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero), float32."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ----- whitening ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Whitening:
    """PCA-whitening learned on a collection: ``x ↦ unit((x − mean) @ projection)``.

    ``mean``: (D,) float32; ``projection``: (D, d) float32, the top-d principal axes divided by the square roots of
    their shrunk eigenvalues; ``shrinkage``: see :data:`WHITEN_SHRINKAGE`; ``fitted_on``: how many vectors."""

    mean: np.ndarray
    projection: np.ndarray
    shrinkage: float
    fitted_on: int

    @property
    def dim_in(self) -> int:
        return int(self.projection.shape[0])

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) unit vectors → (N, d) whitened unit vectors."""
        return unit_rows((np.asarray(x, np.float32) - self.mean) @ self.projection)

    def describe(self) -> dict:
        """What the manifest records of it."""
        return {"dim_in": self.dim_in, "dim": self.dim, "shrinkage": self.shrinkage, "fitted_on": self.fitted_on}


def fit_whitening(x: np.ndarray, dim: int | None = None, shrinkage: float = WHITEN_SHRINKAGE,
                  sample: int = WHITEN_FIT_SAMPLE, seed: int = 0) -> Whitening:
    """Fit PCA-whitening on the rows of ``x`` (N, D): keep ``dim`` axes (default all, at most N − 1 of them).

    Eigenvalues are shrunk towards their mean, ``λ' = (1 − s)·λ + s·mean(λ)``, so that the weak directions (noise,
    and the null space of a small collection) are not blown up by 1/√λ. A fit uses at most ``sample`` rows."""
    x = np.asarray(x, np.float32)
    n, d_in = x.shape
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"whitening shrinkage must be in [0, 1], got {shrinkage}")
    if n < 2:
        raise ValueError("whitening needs at least two vectors to learn from")
    dim = d_in if dim is None else int(dim)
    if not 1 <= dim <= d_in:
        raise ValueError(f"whitening dim must be between 1 and {d_in}, got {dim}")
    if n > sample:
        x = x[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
    mean = x.mean(axis=0)  # (D,)
    xc = x - mean  # (n, D)
    cov = (xc.T @ xc).astype(np.float64) / len(x)  # (D, D)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
    shrunk = (1.0 - shrinkage) * evals + shrinkage * evals.mean()  # (D,)
    proj = evecs[:, :dim] / np.sqrt(np.maximum(shrunk[:dim], 1e-12))  # (D, d)
    return Whitening(mean.astype(np.float32), proj.astype(np.float32), float(shrinkage), n)


# ----- query expansion and database-side augmentation -----------------------------------------------------------

def _weights(sims: np.ndarray, alpha: float) -> np.ndarray:
    return np.clip(sims, 0.0, None) ** alpha


def augment(vectors: np.ndarray, n: int, alpha: float = QE_ALPHA) -> np.ndarray:
    """DBA over a set: each row replaced by the weighted sum of itself and its ``n`` nearest other rows (weights:
    similarity^α, itself 1), renormalised. (M, d) unit rows → (M, d) unit rows."""
    v = np.asarray(vectors, np.float32)
    if n < 1 or len(v) < 2:
        return v
    sims = v @ v.T  # (M, M)
    np.fill_diagonal(sims, -np.inf)
    n = min(n, len(v) - 1)
    near = np.argpartition(-sims, n - 1, axis=1)[:, :n]  # (M, n), unordered
    w = _weights(np.take_along_axis(sims, near, axis=1), alpha)  # (M, n)
    return unit_rows(v + np.einsum("mn,mnd->md", w, v[near]))


def expand_query(q: np.ndarray, shortlist: np.ndarray, sims: np.ndarray, n: int,
                 alpha: float = QE_ALPHA) -> np.ndarray:
    """αQE: ``unit(q + Σ_{i<n} sim_i^α · x_i)`` over the ``n`` best of a shortlist sorted best first.
    q: (d,), shortlist: (M, d), sims: (M,)."""
    n = min(n, len(shortlist))
    if n < 1:
        return q
    w = _weights(sims[:n], alpha)  # (n,)
    return unit_rows((q + w @ shortlist[:n])[None, :])[0]


def rerank(q: np.ndarray, shortlist: np.ndarray, qe: int = 0, dba: int = 0,
           alpha: float = QE_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank one query's shortlist (M, d) (the index's best M, best first) with DBA among the shortlist, then αQE.
    Returns (order (M,) of shortlist rows, their new scores (M,)), best first.

    DBA here augments each candidate with its neighbours *within the shortlist* (the ones that matter for this
    query), so it needs no pass over the whole collection and costs O(M²·d) per query."""
    db = augment(shortlist, dba, alpha) if dba else np.asarray(shortlist, np.float32)
    sims = db @ q  # (M,)
    if qe:
        first = np.argsort(-sims, kind="stable")
        q = expand_query(q, db[first], sims[first], qe, alpha)
        sims = db @ q
    order = np.argsort(-sims, kind="stable")
    return order, sims[order]


# ----- scores ---------------------------------------------------------------------------------------------------

def background_normalise(scores: np.ndarray, queries: np.ndarray, background: np.ndarray, n: int = 1,
                         beta: float = 1.0) -> np.ndarray:
    """SSCD-style score normalisation: subtract ``beta`` × each query's similarity to its ``n``-th nearest
    background vector (a set known to hold no copy). scores: (Q, K), queries: (Q, d), background: (B, d)."""
    sims = np.asarray(queries, np.float32) @ np.asarray(background, np.float32).T  # (Q, B)
    nth = -np.partition(-sims, n - 1, axis=1)[:, n - 1]  # (Q,)
    return np.asarray(scores, np.float32) - beta * nth[:, None]


def calibrate_threshold(positive: np.ndarray, negative: np.ndarray,
                        precision: float = COPY_PRECISION) -> tuple[float, float, float]:
    """The lowest score threshold at which pairs scoring at or above it are ``precision`` copies.

    ``positive``: scores of true copy pairs, ``negative``: scores of pairs that are not copies. Returns
    (threshold, precision reached, recall of the positives at it). Where no threshold reaches the precision the
    highest score plus a hair is returned with recall 0 (nothing is called a copy)."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(pos):
        raise ValueError("calibration needs at least one known copy pair")
    cuts = np.unique(np.concatenate([pos, neg]))[::-1]  # high to low
    best = (float(cuts[0]) + 1e-6, 1.0, 0.0)
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    for t in cuts:
        tp = len(pos) - np.searchsorted(pos_sorted, t, side="left")
        fp = len(neg) - np.searchsorted(neg_sorted, t, side="left")
        p = tp / max(tp + fp, 1)
        if p >= precision and tp:
            best = (float(t), float(p), float(tp / len(pos)))
    return best
