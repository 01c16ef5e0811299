"""An index's scorecard: cached per generation in the index folder, shown by 'index info'."""

import json

import pytest

from app.cli import main
from retrieval import scorecard
from retrieval.store_files import SCORECARD, read_scorecard


@pytest.fixture()
def built(shapes_index):
    return shapes_index


def test_scorecard_is_cached_per_generation(built, monkeypatch):
    ws, col = built
    assert ws.cached_scorecard("shapes") is None
    card = ws.scorecard("shapes")
    generation = card["generation"]
    assert (ws.root / "shapes" / SCORECARD).is_file()
    assert read_scorecard(ws.root / "shapes", generation)["score"] == card["score"]

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(scorecard, "score_embedded", fail)
    assert ws.scorecard("shapes") == card  # from the cache
    monkeypatch.undo()

    ws.remove("shapes", [str(next(col.rglob("*.png")))])  # a new generation
    assert ws.cached_scorecard("shapes") is None
    fresh = ws.scorecard("shapes")
    assert fresh["generation"] == generation + 1 and fresh["n_images"] == card["n_images"] - 1


def test_index_info_shows_the_cached_scorecard(built, capsys):
    ws, _ = built
    root = str(ws.root)
    assert main(["index", "info", "shapes", "--indexes", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scorecard"] is None
    assert main(["index", "info", "shapes", "--indexes", root, "--scorecard", "--json"]) == 0
    computed = json.loads(capsys.readouterr().out)["scorecard"]
    assert 0 <= computed["score"] <= 1
    assert main(["index", "info", "shapes", "--indexes", root]) == 0
    assert f"scorecard   {computed['score']:.3f}" in capsys.readouterr().out
