"""Which index the Explore tab opens on (app.opening.Opening.explore_index)."""

from __future__ import annotations

from app.demo import OPENING
from app.opening import Opening


def _m(name: str, kind: str, updated: str = "2026-12-01T00:00:00Z", **extra) -> dict:
    return {"name": name, "encoder": {"kind": kind}, "updated": updated, **extra}


def test_explore_opens_on_the_best_scorecard_where_one_is_cached():
    manifests = [_m("a-pixels", "pixels", scorecard={"score": 0.9}), _m("b-run", "run", scorecard=0.4),
                 _m("c-timm", "timm"), _m("d-odd", "timm", scorecard={"score": "high"})]
    assert Opening().explore_index(manifests) == "a-pixels"
    assert OPENING.explore_index(manifests) == "a-pixels"  # a measured score beats the demo's fixed ranking


def test_without_scores_explore_follows_the_ranking_then_the_encoder_kind():
    demo = [_m("demo-pixels", "pixels"), _m("demo-random", "random"), _m("demo-pretrained", "timm"),
            _m("demo-simclr", "run")]
    assert OPENING.explore_index(demo) == "demo-pretrained"  # the demo's measured ranking
    assert Opening().explore_index(demo) == "demo-simclr"  # trained > pretrained > random > pixels
    mine = [_m("old", "run", "2026-11-01T00:00:00Z"), _m("new", "run", "2026-12-05T00:00:00Z"),
            _m("px", "pixels", "2026-12-06T00:00:00Z")]
    assert Opening().explore_index(mine) == "new"  # of the best kind, the most recently updated
    assert Opening().explore_index([_m("px", "pixels"), _m("rnd", "random")]) == "rnd"
    assert Opening().explore_index([]) is None
