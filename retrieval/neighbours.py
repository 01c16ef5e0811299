"""Pure numerical helpers over a collection's embeddings: 2-D maps and near-duplicate pairs.

The web UI's Explore tab draws a map of :data:`MAPS` (PCA with NumPy alone; t-SNE with openTSNE, the ``maps``
extra) and lists :func:`near_duplicate_pairs`; none needs a server, an encoder or an index file (the pairs take any
``search(queries, k)``, e.g. ``IndexStore.search``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, NamedTuple, Sequence

import numpy as np

from .errors import LookalikeError

__all__ = ["pca_2d", "tsne_2d", "MAPS", "MapKind", "near_duplicate_pairs"]


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


PARALLEL_FROM = 10_000  # points from which t-SNE uses every core of this process


def tsne_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) L2-normalised → (N, 2) t-SNE coordinates (openTSNE: cosine neighbours, FFT-accelerated gradients,
    perplexity 30 or less for small N), reproducible for a given ``seed``."""
    try:
        from openTSNE import TSNE
    except ImportError:
        raise LookalikeError(MAPS["t-SNE"].missing()) from None
    x = np.asarray(vectors, np.float32)
    n = len(x)
    if n < 4:  # t-SNE needs a few neighbours per point; so few points are their own map
        return pca_2d(x)
    perplexity = min(30.0, (n - 1) / 3)
    # threads only where there is enough work to share (docs/performance.md, "Maps": small maps on a busy machine
    # ran many times slower on two threads than on one)
    jobs = 1 if n < PARALLEL_FROM else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else -1
    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", n_jobs=jobs, random_state=seed,
                verbose=False)
    return np.asarray(tsne.fit(x), np.float64)


class MapKind(NamedTuple):
    """One kind of 2-D map: how it is computed, the module it needs (None: NumPy alone) and whether it takes long
    enough at 100k points to run in the background."""

    project: Callable[[np.ndarray], np.ndarray]  # (N, D) -> (N, 2)
    axes: str  # what the two axes are, for a caption
    module: str | None = None
    slow: bool = False
    extra: str = ""  # the pyproject extra that installs ``module``

    def missing(self) -> str | None:
        """Why this map cannot be drawn here (with how to install what it needs), or None."""
        if self.module is None or importlib.util.find_spec(self.module) is not None:
            return None
        return (f"this map needs the {self.module} package: pip install 'lookalike[{self.extra}]' (or pip install "
                f"{self.module})")


# The maps Explore offers, by the name it shows. t-SNE over UMAP: openTSNE needs only NumPy, SciPy and scikit-learn
# (umap-learn pulls numba and llvmlite); its time at 100k points is in docs/performance.md.
MAPS: dict[str, MapKind] = {
    "PCA": MapKind(pca_2d, "the first two principal components"),
    "t-SNE": MapKind(tsne_2d, "a t-SNE embedding (nearby points are neighbours; distances between groups mean "
                     "little)", module="openTSNE", slow=True, extra="maps"),
}


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
