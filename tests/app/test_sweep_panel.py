"""The Train tab's sweep panel: started on a folder, it runs the sweep in the background and its poll shows each
row's state and the leaderboard as it grows; bad input is a message in the page. Tiny runs and an injected scorer."""

from __future__ import annotations

import functools

import gradio as gr
import pytest

import app.tabs.sweep as panel_mod
from app.jobs import JobManager
from app.ui import LookalikeApp
from retrieval.workspace import Workspace
from tests.training.conftest import make_images
from tests.training.test_sweep import TINY, scored  # noqa: F401 (a fixture)


@pytest.fixture
def panel_app(tmp_path, monkeypatch):
    monkeypatch.setattr(panel_mod, "plan_sweep", functools.partial(panel_mod.plan_sweep, settings=TINY))
    app = LookalikeApp(Workspace(tmp_path / "indexes"), JobManager(), runs_dir=tmp_path / "runs")
    return app, make_images(tmp_path / "photos", per_class=2)


def test_the_panel_is_laid_out_in_the_train_tab(panel_app):
    app, _ = panel_app
    page = app.page()
    labels = {getattr(c, "label", None) for c in page.blocks.values()}
    assert {"Minutes per method", "Leaderboard"} <= labels
    assert app.panels["train"][0].poll(None).rows == "No sweep yet."


def test_a_sweep_started_from_the_panel_fills_the_leaderboard(panel_app, scored):  # noqa: F811
    app, photos = panel_app
    panel = app.panels["train"][0]
    job_id, _, message = panel.start(str(photos), 5, ["simclr"])
    assert "simclr" in message
    job = app.jobs.get(job_id)
    assert job.wait(300) and job.status == "done", job.error
    view = panel.poll(job_id)
    assert [row[1] for row in view.board] == ["simclr", "pixels"]
    assert "**simclr**: 0.500 [0.450, 0.550]" in view.rows and "Winner: simclr" in view.rows
    assert view.chart and view.chart.endswith("leaderboard.png")
    assert Workspace(app.ctx.ws.root).marked_index() == "sweep-photos-simclr"


def test_bad_input_is_a_message_in_the_page(panel_app):
    app, photos = panel_app
    panel = app.panels["train"][0]
    with pytest.raises(gr.Error, match="unknown method"):
        panel.start(str(photos), 1, ["nope"])
    with pytest.raises(gr.Error, match="minutes must be a positive number"):
        panel.start(str(photos), 0, ["simclr"])
