"""The Explore tab's numerical helpers on their own: near-duplicate pairs and the 2-D PCA map."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from retrieval.neighbours import near_duplicate_pairs, pca_2d


def test_near_duplicate_pairs_are_unordered_unique_and_above_threshold():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 8)).astype(np.float32)
    vecs = np.concatenate([base, base[:2] + 1e-3]).astype(np.float32)  # items 6, 7 ≈ items 0, 1
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    paths = [f"p{i}" for i in range(len(vecs))]

    def search(q, k):  # exact search standing in for IndexStore.search
        sims = q @ vecs.T
        order = np.argsort(-sims, axis=1)[:, :k]
        return [[types.SimpleNamespace(path=paths[j], score=float(s[j])) for j in row] for s, row in zip(sims, order)]

    pairs = near_duplicate_pairs(paths, vecs, search, threshold=0.99, neighbours=2, batch=3)
    assert sorted((a, b) for _, a, b in pairs) == [("p0", "p6"), ("p1", "p7")]
    assert all(s >= 0.99 for s, _, _ in pairs)


def test_pca_separates_two_clusters_whichever_way_it_is_computed():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.1, size=(20, 5)) + np.array([3, 0, 0, 0, 0])
    b = rng.normal(0, 0.1, size=(20, 5)) - np.array([3, 0, 0, 0, 0])
    x = np.concatenate([a, b])
    tall = pca_2d(x)  # D ≤ N: covariance
    wide = pca_2d(np.pad(x, ((0, 0), (0, 60))))  # D > N: Gram matrix
    for coords in (tall, wide):
        assert coords.shape == (40, 2)
        assert (np.sign(coords[:20, 0]) == np.sign(coords[0, 0])).all()
        assert (np.sign(coords[20:, 0]) == -np.sign(coords[0, 0])).all()
    np.testing.assert_allclose(np.abs(tall), np.abs(wide), atol=1e-6)


def test_the_helpers_import_without_the_web_ui():
    code = "import sys, retrieval.neighbours; sys.exit(int('gradio' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tsne_puts_each_cluster_together_and_is_reproducible():
    pytest.importorskip("openTSNE", reason="t-SNE maps need the 'maps' extra (pip install 'lookalike[maps]')")
    from retrieval.neighbours import tsne_2d

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16))
    x = np.repeat(centres, 20, axis=0) + 0.05 * rng.standard_normal((60, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = tsne_2d(x, seed=1)
    assert y.shape == (60, 2) and np.isfinite(y).all()
    np.testing.assert_allclose(tsne_2d(x, seed=1), y)
    # every point's nearest other point on the map is one of its own cluster
    d = np.linalg.norm(y[:, None] - y[None], axis=2) + np.eye(60) * 1e9
    assert (d.argmin(axis=1) // 20 == np.arange(60) // 20).all()
