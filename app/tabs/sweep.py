"""The Train tab's sweep panel: "which method for this folder?" (:mod:`training.sweep` as a background job).

Each method is trained for the same minutes, the folder is indexed with it and scored with the label-free scorecard;
the panel shows where each row is (waiting, training, indexing, scoring, done) and the leaderboard as it grows (read
from the sweep's ``leaderboard.json``, rewritten after each row). The winner's index becomes the default one. A
sweep started again on the same folder goes on where a stopped one ended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from training.methods import METHODS
from training.sweep import BOARD, RECOMMENDED, plan_sweep, ranked, sweep

from ..context import AppContext, Tab, user_errors
from ..jobs import FINISHED, Job
from .train import progress_html

SWEEP_MINUTES = 2.0  # per method: the budget of the benchmarks the recommended methods were chosen on
COLUMNS = ["rank", "encoder", "score", "95% interval", "images", "index"]
STAGES = {"train": "training", "index": "indexing", "score": "scoring", "done": "done", "skipped": "done before"}


class SweepView(NamedTuple):
    """What one timer tick shows."""

    rows: str  # each row's state (markdown)
    bar: str  # the sweep's progress (html)
    board: list[list]  # the leaderboard so far, best first
    chart: str | None  # leaderboard.png
    stop: gr.Button
    timer: gr.Timer


class SweepPanel(Tab):
    """Not a tab of its own: laid out inside the Train tab (see :class:`app.ui.LookalikeApp`)."""

    title, id = "Sweep", "sweep"

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)

    @user_errors
    def start(self, folder: str, minutes: float, methods: list[str]):
        """Start a sweep of ``folder`` → (job id, timer, message)."""
        data_dir = self.ctx.folders.check(folder, "train on")
        plan = plan_sweep(data_dir, float(minutes or 0), methods or None, runs=self.ctx.runs_dir,
                          indexes=self.ctx.ws.root, device=self.ctx.ws.device)

        def work(job: Job):
            def progress(event: dict) -> None:
                if "record" in event:
                    rec = event["record"]
                    if "loss" in rec:
                        job.progress(event["done"], event["total"],
                                     f"{event['row']}: step {rec['step']}, loss {rec['loss']:.4f}")
                    return
                job.log({"row": event["row"], "stage": event["stage"]})
                job.progress(event["done"], event["total"], event["message"])

            return sweep(plan, progress=progress, show=False, stop_event=job.stop_event)

        job = self.ctx.jobs.start("sweep", f"sweep of {Path(data_dir).name}", work, exclusive=True,
                                  meta={"dir": str(plan.dir), "rows": [r for r, _ in plan.rows()]})
        return job.id, gr.Timer(active=True), f"Started the {job.title}: {', '.join(plan.methods)}."

    def stop(self, job_id: str | None):
        if job_id and self.ctx.jobs.stop(job_id):
            return "Stopping — the method in training saves a checkpoint; start the sweep again to go on."
        return gr.skip()

    def poll(self, job_id: str | None) -> SweepView:
        job = self.ctx.jobs.get(job_id)
        if job is None:
            return SweepView("No sweep yet.", "", [], None, gr.Button(interactive=False), gr.Timer(active=False))
        snap = job.snapshot()
        running = snap["status"] not in FINISHED
        board = _read_board(Path(job.meta["dir"]))
        rows = _row_states(job.meta["rows"], snap["records"], board)
        if snap["error"]:
            rows += f"\n\n**Failed:** {snap['error']}"
        elif board and board.get("winner") and not running:
            rows += f"\n\n**Winner: {board['winner']}** — its index is the default one now."
        fraction = snap["done"] / snap["total"] if snap["total"] else None
        bar = progress_html(fraction if running else 1.0, snap["message"] or snap["status"])
        chart = board.get("chart") if board else None
        return SweepView(rows, bar, _table(board), chart if chart and Path(chart).is_file() else None,
                         gr.Button(interactive=running and not snap["stopping"]), gr.Timer(active=running))

    def resume(self):
        """On page load, re-attach to the latest sweep."""
        job = self.ctx.jobs.latest("sweep")
        return (job.id if job else None), gr.Timer(active=bool(job and job.status not in FINISHED))

    def layout(self) -> None:
        with gr.Accordion("Which method for this folder? (sweep)", open=False):
            gr.Markdown("Trains each method for the same minutes, indexes the folder with it and ranks them with the "
                        "label-free scorecard beside raw pixels and the pretrained start. The winner's index becomes "
                        "the default one.", elem_classes=["lk-note"])
            with gr.Row():
                dirs = self.ctx.folders.offered(self.ctx.train_dirs + self.ctx.collection_roots())
                self.folder = gr.Dropdown(dirs, value=dirs[0] if dirs else None, allow_custom_value=True,
                                          label="Image folder", scale=3)
                self.minutes = gr.Number(SWEEP_MINUTES, label="Minutes per method", minimum=0.1, scale=1)
            self.methods = gr.CheckboxGroup(list(METHODS), value=list(RECOMMENDED), label="Methods")
            with gr.Row():
                self.start_button = gr.Button("Start sweep", variant="primary")
                self.stop_button = gr.Button("Stop", variant="stop", interactive=False)
            self.status = gr.Markdown("")
            self.bar = gr.HTML("")
            with gr.Row():
                self.rows = gr.Markdown("No sweep yet.")
                self.board = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, label="Leaderboard")
            self.chart = gr.Image(label="Scorecard with 95% intervals", type="filepath", interactive=False,
                                  height=280)
        self.job = gr.State(None)
        self.timer = gr.Timer(1.0, active=False)

    def wire(self, page: gr.Blocks) -> None:
        self.start_button.click(self.start, [self.folder, self.minutes, self.methods],
                                [self.job, self.timer, self.status], api_visibility="private")
        self.stop_button.click(self.stop, [self.job], [self.status], api_visibility="private")
        self.timer.tick(self.poll, [self.job], [self.rows, self.bar, self.board, self.chart, self.stop_button,
                                                self.timer], api_visibility="private", show_progress="hidden")
        page.load(self.resume, None, [self.job, self.timer], api_visibility="private")


def _read_board(folder: Path) -> dict | None:
    try:
        return json.loads((folder / f"{BOARD}.json").read_text())
    except (OSError, ValueError):
        return None


def _row_states(names: list[str], records: list[dict], board: dict | None) -> str:
    """One line per row: its score once scored, else the last stage it reached, else waiting."""
    stage = {r["row"]: r["stage"] for r in records if "row" in r}
    scored = (board or {}).get("rows", {})
    lines = []
    for name in names:
        if name in scored:
            r = scored[name]
            lines.append(f"- **{name}**: {r['score']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
        else:
            lines.append(f"- **{name}**: {STAGES.get(stage.get(name), 'waiting')}")
    return "\n".join(lines)


def _table(board: dict | None) -> list[list]:
    if not board:
        return []
    return [[i, r["row"], round(r["score"], 3), f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]", r["n_images"], r["index"]]
            for i, r in enumerate(ranked(board), 1)]
