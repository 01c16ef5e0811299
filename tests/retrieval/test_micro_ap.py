"""DISC21's micro-average precision (retrieval.metrics.micro_average_precision) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.metrics import micro_average_precision


def test_micro_ap_ranks_every_pair_in_one_list():
    # q1 finds its copy 2nd, q2 1st, q3 has no copy indexed (a confident false match), q4's copy is not in its top 2
    scores = np.array([[0.9, 0.4], [0.8, 0.7], [0.85, 0.2], [0.6, 0.5]])
    rel = np.array([[False, True], [True, False], [False, False], [False, False]])
    # ranked: .9 F, .85 F, .8 T (P=1/3), .7 F, .6 F, .5 F, .4 T (P=2/7), .2 F; 3 copy pairs exist
    assert micro_average_precision(scores, rel, 3) == pytest.approx((1 / 3 + 2 / 7) / 3)


def test_micro_ap_is_one_when_every_copy_outscores_every_false_match():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.25]])
    rel = np.array([[True, False], [True, False], [False, False]])
    assert micro_average_precision(scores, rel, 2) == pytest.approx(1.0)
    assert micro_average_precision(scores, rel, 4) == pytest.approx(0.5)  # two copies never found


def test_micro_ap_refuses_inconsistent_input():
    with pytest.raises(ValueError):
        micro_average_precision(np.zeros((2, 2)), np.zeros((2, 3), bool), 1)
    with pytest.raises(ValueError):
        micro_average_precision(np.zeros((1, 2)), np.ones((1, 2), bool), 1)
    with pytest.raises(ValueError):
        micro_average_precision(np.zeros((1, 2)), np.zeros((1, 2), bool), 0)
