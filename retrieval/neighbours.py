"""Pure numerical helpers over a collection's embeddings: a 2-D map and near-duplicate pairs. NumPy only.

The web UI's Explore tab draws :func:`pca_2d` and lists :func:`near_duplicate_pairs`; neither needs a server, an
encoder or an index file (the pairs take any ``search(queries, k)``, e.g. ``IndexStore.search``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["pca_2d", "near_duplicate_pairs"]


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """(N, D) → (N, 2) coordinates on the two principal axes (eigen-decomposition of the smaller Gram matrix)."""
    x = np.asarray(vectors, np.float64)
    x = x - x.mean(axis=0, keepdims=True)  # (N, D)
    n, d = x.shape
    if n < 2:
        return np.zeros((n, 2))
    if d <= n:
        _, evecs = np.linalg.eigh(x.T @ x)  # (D, D), ascending eigenvalues
        coords = x @ evecs[:, ::-1][:, :2]  # (N, 2)
    else:
        evals, evecs = np.linalg.eigh(x @ x.T)  # (N, N)
        top = evecs[:, ::-1][:, :2]
        coords = top * np.sqrt(np.clip(evals[::-1][:2], 0, None))  # (N, 2)
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def near_duplicate_pairs(paths: Sequence[str], vectors: np.ndarray, search: Callable[[np.ndarray, int], list],
                         threshold: float, neighbours: int = 5, batch: int = 1024,
                         max_pairs: int = 1000) -> list[tuple[float, str, str]]:
    """Pairs of items with cosine ≥ ``threshold``, best first, found by k-NN in batches (never an N×N matrix).

    ``search(queries (B, D), k)`` returns, per query, hits with ``.path`` and ``.score`` (``IndexStore.search``);
    each item looks at its ``neighbours`` nearest others, so a group of more than ``neighbours + 1`` identical
    images still shows up, as a chain of pairs.
    """
    best: dict[tuple[str, str], float] = {}
    k = min(neighbours + 1, len(paths))
    for start in range(0, len(paths), batch):
        hits_per_query = search(vectors[start:start + batch], k)
        for a, hits in zip(paths[start:start + batch], hits_per_query):
            for hit in hits:
                if hit.path == a or hit.score < threshold:
                    continue
                key = (a, hit.path) if a < hit.path else (hit.path, a)
                best[key] = max(best.get(key, -1.0), float(hit.score))
    pairs = sorted(((s, a, b) for (a, b), s in best.items()), key=lambda t: (-t[0], t[1], t[2]))
    return pairs[:max_pairs]
