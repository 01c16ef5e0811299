"""The scorecard panel of Compare and Indexes: a background job fills in every index's card, shared by both tabs."""

from __future__ import annotations

import types

import pytest

from app.jobs import DONE, JobManager
from app.scorecards import bars_html
from app.ui import LookalikeApp
from retrieval.synthetic import make_collection
from retrieval.workspace import Workspace


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorecards")
    make_collection(root / "photos", n_classes=3, per_class=4, size=32, seed=5)
    ws = Workspace(root / "indexes")
    ws.build(root / "photos", "pixels", "px", progress=False)
    app = LookalikeApp(ws, JobManager(), runs_dir=root / "runs")
    return types.SimpleNamespace(root=root, ws=ws, app=app)


def test_both_tabs_share_one_job_that_scores_every_index(env):
    cards = env.app.ctx.scorecards
    assert env.app.compare.scorecard.cards is cards and env.app.indexes.scorecard.cards is cards
    assert cards.rows()[0][3] == "computing…"
    job = cards.start()
    assert job.wait(300) and job.snapshot()["status"] == DONE
    assert cards.missing() == [] and cards.start() is None  # cached: nothing left to do
    name, spec, score, ci, *_, recall1, map10 = cards.rows()[0]
    assert (name, spec) == ("px", "pixels") and 0 <= score <= 1
    lo, hi = map(float, ci.split("–"))
    assert lo <= score <= hi
    assert recall1 is not None and map10 is not None  # the photos have labels: the labelled figures are shown
    assert "px" in bars_html(cards.rows())
    status, running = cards.status()
    assert not running and "failed" not in status


def test_the_page_builds_with_the_panels(env):
    assert env.app.page() is not None
