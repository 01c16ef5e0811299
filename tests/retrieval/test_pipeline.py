"""The search pipeline's stages: whitening (fit, store, reopen, refuse), αQE / DBA re-ranking, calibration."""

import numpy as np
import pytest

from retrieval.collection import Item
from retrieval.errors import LookalikeError
from retrieval.index_store import IndexStore
from retrieval.pipeline import (augment, background_normalise, calibrate_threshold, expand_query, fit_whitening,
                                rerank, unit_rows)


def _data(n=60, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * np.linspace(4, 0.2, d, dtype=np.float32)
    return unit_rows(x), [Item(f"img{i:03d}.png", 1, 0.0, None) for i in range(n)]


def test_whitening_matches_its_formula_and_decorrelates():
    x, _ = _data()
    w = fit_whitening(x, dim=5, shrinkage=0.0)
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(xc.T, bias=True))
    ref = xc @ (evecs[:, ::-1][:, :5] / np.sqrt(evals[::-1][:5]))  # plain PCA-whitening, by the book
    ours = (x - w.mean) @ w.projection
    assert np.allclose(np.abs(ours), np.abs(ref), atol=1e-3)  # axes agree up to sign
    assert np.allclose(np.cov(ours.T, bias=True), np.eye(5), atol=1e-3)
    assert w.apply(x).shape == (60, 5) and np.allclose(np.linalg.norm(w.apply(x), axis=1), 1, atol=1e-5)
    shrunk = fit_whitening(x, dim=5, shrinkage=1.0)  # all eigenvalues equal: a rotation scaled by one number
    proj = shrunk.projection / np.linalg.norm(shrunk.projection, axis=0)
    assert np.allclose(proj.T @ proj, np.eye(5), atol=1e-5)


def test_whitened_index_round_trip_and_mismatched_queries_refused(tmp_path):
    x, items = _data()
    store = IndexStore.create(tmp_path, "w", {"spec": "s", "dim": 12}, 12, tmp_path, items=items, vectors=x,
                              whiten=True, whiten_dim=4)
    assert store.whitened and store.dim == 4
    assert store.manifest["whitening"] == {"dim_in": 12, "dim": 4, "shrinkage": 0.5, "fitted_on": 60,
                                           "added_since_fit": 0}
    expected = fit_whitening(x, dim=4).apply(x[3:4]) @ fit_whitening(x, dim=4).apply(x).T
    again = IndexStore.open(tmp_path, "w")  # whitening read back from its file
    hits = again.search(x[3:4], 5)[0]
    assert hits[0].path == "img003.png"
    assert np.isclose(hits[1].score, np.sort(expected[0])[-2], atol=1e-5)  # the query went through the whitening
    paths, stored = again.vectors()
    assert stored.shape == (60, 4)
    assert again.search(stored[3:4], 1, whitened=True)[0][0].path == "img003.png"
    with pytest.raises(LookalikeError, match=r"is whitened \(12 → 4 dimensions.*whitens them with its own"):
        again.search(stored[3:4], 1)  # whitened vectors given as if they were the encoder's
    with pytest.raises(LookalikeError, match="is whitened"):
        again.search(x[3:4], 1, whitened=True)  # the encoder's vectors claimed to be whitened
    with pytest.raises(LookalikeError, match="at least two images"):
        IndexStore.create(tmp_path, "one", {"spec": "s", "dim": 12}, 12, tmp_path, items=items[:1],
                          vectors=x[:1], whiten=True)
    with pytest.raises(LookalikeError, match="--whiten-dim must be between 1 and 11"):
        IndexStore.create(tmp_path, "wide", {"spec": "s", "dim": 12}, 12, tmp_path, items=items, vectors=x,
                          whiten=True, whiten_dim=12)


def test_update_keeps_the_fitted_whitening_and_counts_what_was_added(tmp_path):
    x, items = _data()
    store = IndexStore.create(tmp_path, "w", {"spec": "s", "dim": 12}, 12, tmp_path, items=items[:40],
                              vectors=x[:40], whiten=True)
    before = IndexStore.open(tmp_path, "w")._state.whitening
    store.add(items[40:], x[40:])
    reopened = IndexStore.open(tmp_path, "w")
    after = reopened._state.whitening
    assert np.array_equal(before.projection, after.projection) and np.array_equal(before.mean, after.mean)
    assert reopened.manifest["whitening"]["added_since_fit"] == 20
    assert reopened.manifest["files"]["whitening"] == "whitening.0.npz"
    _, stored = reopened.vectors()
    assert np.allclose(stored[45], before.apply(x[45:46])[0], atol=1e-5)  # new items whitened the old way


def test_notes_say_when_the_whitening_is_stale():
    from retrieval.workspace import _whitening_notes

    fresh = {"whitening": {"fitted_on": 100, "added_since_fit": 19}}
    stale = {"whitening": {"fitted_on": 100, "added_since_fit": 20}}
    assert _whitening_notes(fresh) == [] and _whitening_notes({}) == []
    assert "rebuild the index" in _whitening_notes(stale)[0]


def _tiny():
    q = np.array([1, 0, 0, 0], np.float32)
    lonely = [0.9, 0.436, 0, 0]  # close to the query, alone in its direction
    cluster = [[0.85, 0, 0.527, 0], [0.84, 0, 0.54, 0.02], [0.83, 0, 0.55, -0.02]]  # three of a kind, a bit further
    far = [0.3, 0, 0, 0.95]
    return q, unit_rows(np.array([lonely, *cluster, far], np.float32))


def test_query_expansion_pulls_a_consistent_group_above_a_lone_neighbour():
    q, x = _tiny()
    assert list(rerank(q, x)[0]) == [0, 1, 2, 3, 4]
    assert list(rerank(q, x, qe=3)[0]) == [1, 2, 3, 0, 4]  # the three agreeing neighbours win
    sims = x @ q
    by_hand = q + sims[0] ** 3 * x[0] + sims[1] ** 3 * x[1] + sims[2] ** 3 * x[2]
    assert np.allclose(expand_query(q, x, sims, 3), by_hand / np.linalg.norm(by_hand), atol=1e-6)


def test_dba_moves_an_item_towards_its_neighbour():
    q = np.array([1, 0, 0, 0], np.float32)
    x = unit_rows(np.array([[0.9, 0.436, 0, 0], [0.88, 0, 0.475, 0], [0.95, 0, 0.31, 0], [0.1, 0.995, 0, 0]],
                           np.float32))
    assert list(rerank(q, x)[0]) == [2, 0, 1, 3]
    assert list(rerank(q, x, dba=1)[0]) == [0, 2, 1, 3]  # the first item borrows from its neighbour, the third
    aug = augment(x, 1)
    by_hand = x[0] + float(x[0] @ x[2]) ** 3 * x[2]
    assert np.allclose(aug[0], by_hand / np.linalg.norm(by_hand), atol=1e-6)


def test_store_search_applies_qe_over_its_shortlist(tmp_path):
    q, x = _tiny()
    items = [Item(f"{i}.png", 1, 0.0, None) for i in range(len(x))]
    store = IndexStore.create(tmp_path, "t", {"spec": "s", "dim": 4}, 4, tmp_path, items=items, vectors=x)
    assert [h.path for h in store.search(q, 3)[0]] == ["0.png", "1.png", "2.png"]
    assert [h.path for h in store.search(q, 3, qe=3)[0]] == ["1.png", "2.png", "3.png"]
    with pytest.raises(LookalikeError, match="qe and dba count neighbours"):
        store.search(q, 3, qe=-1)


def test_calibrated_threshold_reaches_its_precision_on_a_synthetic_set():
    rng = np.random.default_rng(0)
    pos = rng.normal(0.9, 0.04, 500)  # copies: high scores
    neg = rng.normal(0.7, 0.08, 5000)  # other images: lower, overlapping tail
    t, reached, recall = calibrate_threshold(pos[:250], neg[:2500], precision=0.9)
    assert reached >= 0.9 and 0 < recall < 1
    held_pos, held_neg = (pos[250:] >= t).sum(), (neg[2500:] >= t).sum()
    assert held_pos / (held_pos + held_neg) >= 0.85  # holds on pairs it was not fitted on
    lower = t - 0.02  # and it is the lowest such threshold: a bit lower falls short
    assert (pos[:250] >= lower).sum() / ((pos[:250] >= lower).sum() + (neg[:2500] >= lower).sum()) < 0.9
    assert calibrate_threshold([0.5], [0.6, 0.7], 0.9)[2] == 0.0  # unreachable: nothing called a copy


def test_background_normalisation_subtracts_the_nth_background_similarity():
    queries = unit_rows(np.array([[1, 0], [0, 1]], np.float32))
    background = unit_rows(np.array([[1, 1], [1, 0.1], [0, 1]], np.float32))
    scores = np.array([[0.9, 0.5], [0.8, 0.2]], np.float32)
    sims = queries @ background.T
    out = background_normalise(scores, queries, background, n=2)
    assert np.allclose(out, scores - np.sort(sims, axis=1)[:, -2:-1])


def test_cli_builds_a_whitened_index_and_searches_with_expansion(tmp_path, shapes_dir, capsys):
    import json

    from app.cli import main

    root = str(tmp_path / "indexes")
    spec = "random:resnet10t?size=32"
    assert main(["index", "build", str(shapes_dir), "--encoder", spec, "--name", "w", "--whiten-dim", "16",
                 "--no-calibrate", "--indexes", root, "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["count"] == 36
    info = IndexStore.open(root, "w").manifest
    assert info["dim"] == 16 and info["whitening"]["dim_in"] == 512 and "duplicates" not in info
    query = str(sorted(shapes_dir.rglob("000.png"))[0])
    for extra in ([], ["--qe", "2", "--dba", "2"]):
        assert main(["search", "w", query, "-k", "3", "--indexes", root, "--json", *extra]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert hits[0]["path"] == sorted(p.relative_to(shapes_dir).as_posix() for p in shapes_dir.rglob("000.png"))[0]
