"""The Search tab's "Mark results" row, its handlers called directly (no server)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import gradio as gr
import pytest
from gradio.utils import get_upload_folder

from app.jobs import JobManager
from app.tabs.marks import MarksRow
from app.ui import LookalikeApp


def _uploaded(path) -> str:
    """``path`` copied into Gradio's upload folder, where the Search tab's queries live."""
    folder = Path(get_upload_folder()) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return str(shutil.copy(path, folder / "marks-query.png"))


@pytest.fixture()
def row(tmp_path, shapes_index):
    ws, col = shapes_index
    app = LookalikeApp(ws, JobManager(), runs_dir=tmp_path / "runs")
    return MarksRow(app.ctx), ws, col, sorted(ws.store("shapes").paths())


def test_mark_buttons_store_marks_and_learn_runs_as_a_job(row):
    marks, ws, col, paths = row
    query = _uploaded(col / paths[0])
    assert marks.mark(query, "shapes", paths[1], True).startswith("1 right, 0 wrong")
    assert marks.mark(query, "shapes", paths[-1], False).startswith("1 right, 1 wrong")
    first = ws.marks("shapes")["marks"][0]
    assert first["query"].startswith("upload:") and first["query_path"] == "marks-query.png"
    assert "learnt map: on" in marks.learn("shapes")
    assert marks.ctx.jobs.latest("marks").finished_ok
    assert "learnt map: off" in marks.undo("shapes")


def test_marking_without_a_result_or_with_an_unknown_one_says_what_to_do(row):
    marks, _, col, paths = row
    with pytest.raises(gr.Error, match="Pick the result"):
        marks.mark(_uploaded(col / paths[0]), "shapes", None, True)
    with pytest.raises(gr.Error, match="not an image of this index"):
        marks.mark(_uploaded(col / paths[0]), "shapes", "nowhere.png", True)


def test_result_choices_follow_the_shown_results():
    update = MarksRow.choices([["shapes", "a/1.png"], ["shapes", "b/2.png"]])
    assert update["choices"] == ["a/1.png", "b/2.png"] and update["value"] == "a/1.png"
