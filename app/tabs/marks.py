"""The Search tab's "Mark results" row: call a result right or wrong for the query, and learn from the marks.

Marks are kept with the index (:mod:`retrieval.marks`); "Learn from my marks" fits the linear map in a background
job (:mod:`app.jobs`) and searches go through it from then on; "Undo" searches with the raw vectors again.
Endpoints: ``/mark`` (image, index, result path, right) → count line; ``/learn_marks`` (index) → count line.
"""

from __future__ import annotations

import gradio as gr

from ..context import AppContext, user_errors
from ..serving import require_image

LEARN_TIMEOUT_S = 600  # the fit takes seconds; the handler waits for its job this long at most


class MarksRow:
    """Widgets and handlers of the row; built inside the Search tab's layout, wired by it."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def count_line(self, index: str | None) -> str:
        if not index:
            return ""
        got = self.ctx.ws.marks(index)
        learnt = got["learnt_map"]
        return (f"{got['right']} right, {got['wrong']} wrong"
                + (f", {got['stale']} stale (files no longer in the index)" if got["stale"] else "")
                + f" · {len(got['labels_available'])} sub-folder labels"
                + f" · learnt map: {'on' if learnt else 'off'}")

    @user_errors
    def mark(self, image, index: str | None, result: str | None, right: bool) -> str:
        name = self.ctx.require_index(index)
        query = require_image(image)
        if not isinstance(query, str):
            raise gr.Error("Save the query as a file (upload it) before marking its results.")
        if not result:
            raise gr.Error("Pick the result to mark first.")
        self.ctx.ws.mark(name, query, result, bool(right))
        return self.count_line(name)

    @user_errors
    def learn(self, index: str | None) -> str:
        name = self.ctx.require_index(index)
        job = self.ctx.jobs.start("marks", f"learn from the marks of {name}",
                                  lambda job: self.ctx.ws.learn_from_marks(name), exclusive=True)
        job.wait(LEARN_TIMEOUT_S)
        if job.error:
            raise gr.Error(f"Learning failed: {job.error}")
        return self.count_line(name)

    @user_errors
    def undo(self, index: str | None) -> str:
        name = self.ctx.require_index(index)
        self.ctx.ws.undo_learnt(name)
        return self.count_line(name)

    @staticmethod
    def choices(shown: list[list[str]] | None):
        paths = [rel for _, rel in shown or []]
        return gr.update(choices=paths, value=paths[0] if paths else None)

    def layout(self) -> None:
        with gr.Accordion("Mark results", open=False, elem_id="search-marks"):
            with gr.Row():
                self.result = gr.Dropdown([], label="Result", scale=4, elem_id="mark-result")
                self.right = gr.Button("Right", scale=0, min_width=80, elem_id="mark-right")
                self.wrong = gr.Button("Wrong", scale=0, min_width=80, elem_id="mark-wrong")
            with gr.Row():
                self.learn_button = gr.Button("Learn from my marks", scale=0, elem_id="mark-learn")
                self.undo_button = gr.Button("Undo", scale=0, size="sm", elem_id="mark-undo")
                self.count = gr.Markdown("", elem_id="mark-count", elem_classes=["lk-note"])
            self.flag = gr.Checkbox(True, visible=False)  # the /mark endpoint's "right" input; the button sends True

    def wire(self, query: gr.Image, index: gr.Dropdown, shown: gr.State) -> None:
        shown.change(self.choices, [shown], [self.result], api_visibility="private")
        self.right.click(self.mark, [query, index, self.result, self.flag], [self.count], api_name="mark",
                         preprocess=False)
        self.wrong.click(self.mark, [query, index, self.result, gr.State(False)], [self.count],
                         api_visibility="private", preprocess=False)
        self.learn_button.click(self.learn, [index], [self.count], api_name="learn_marks")
        self.undo_button.click(self.undo, [index], [self.count], api_visibility="private")
        index.change(self.count_line, [index], [self.count], api_visibility="private")
