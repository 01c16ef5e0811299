import numpy as np
import pytest

from retrieval.metrics import (evaluate_labelled, knn_accuracy, map_at_k, precision_at_k, recall_at_k,
                               relevance_from_labels, top_k)

REL = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], bool)


def test_recall_at_k_by_hand():
    assert recall_at_k(REL, 1) == pytest.approx(1 / 3)
    assert recall_at_k(REL, 2) == pytest.approx(2 / 3)
    assert recall_at_k(REL, 3) == pytest.approx(2 / 3)


def test_precision_at_k_by_hand():
    assert precision_at_k(REL, 1) == pytest.approx(1 / 3)
    assert precision_at_k(REL, 3) == pytest.approx((2 + 0 + 1) / 9)


def test_map_at_k_by_hand():
    # q0: P@1=1, P@3=2/3 over its 2 hits -> 5/6; q1: 0; q2: P@2=1/2 -> 1/2
    assert map_at_k(REL, 3) == pytest.approx((5 / 6 + 0 + 0.5) / 3)
    # normalised by the number of relevant items in the database instead: q0 has 3, q2 has 2
    assert map_at_k(REL, 3, n_relevant=[3, 0, 2]) == pytest.approx((5 / 9 + 0 + 0.25) / 3)


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError):
        recall_at_k(np.array([1, 0, 1]), 1)
    with pytest.raises(ValueError):
        precision_at_k(REL, 0)


def test_relevance_from_labels_handles_missing_results():
    rel = relevance_from_labels(np.array([[1, 2, -1]]), ["a"], ["a", "b", "a"])
    assert rel.tolist() == [[False, True, False]]


def test_top_k_matches_full_sort_and_excludes_self():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    scores, idx = top_k(x, x, 5, exclude_self=True, chunk=7)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1)[:, :5]
    assert (idx == expected).all()
    assert np.allclose(scores, np.take_along_axis(full, expected, 1))


def test_knn_accuracy_weighting_by_hand():
    q = np.array([[1.0, 0.0]])
    db = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = ["a", "b", "b"]
    # T=1: a gets e^1 = 2.72, b gets e^0 + e^0.6 = 2.82 -> b wins (wrong)
    assert knn_accuracy(q, ["a"], db, labels, k=3, temperature=1.0) == 0.0
    # T=0.1: a gets e^10, b gets 1 + e^6 -> a wins
    assert knn_accuracy(q, ["a"], db, labels, k=3, temperature=0.1) == 1.0
    assert knn_accuracy(q, ["a"], db, labels, k=1, temperature=1.0) == 1.0


def test_evaluate_labelled_perfect_and_random():
    labels = np.repeat(["x", "y", "z"], 4)
    centers = np.eye(3)[[0] * 4 + [1] * 4 + [2] * 4]
    perfect = evaluate_labelled(centers + 1e-3 * np.arange(12)[:, None], labels, ks=(1, 3))
    assert perfect["recall@1"] == 1.0 and perfect["knn_acc"] == 1.0
    assert perfect["map@10"] == pytest.approx(1.0)
    swapped = evaluate_labelled(centers, np.roll(labels, 2), ks=(1,))
    assert swapped["map@10"] < 0.8
