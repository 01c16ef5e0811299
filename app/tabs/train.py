"""Train: train an encoder on a folder without labels, watch its loss live, then index the folder with it.

The form is generated from :mod:`training.settings` (the settings with ``ui=True``, starting at the UI defaults);
the training runs as a background job of the app's :class:`~app.jobs.JobManager`, and a timer polls it.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from retrieval.encoder_kinds import network_of
from training.settings import UI_PRESET, Setting, choices_of, config_from_values, ui_default, ui_settings

from ..context import AppContext, Tab, user_errors
from ..jobs import FAILED, FINISHED, Job

PLOT_POINTS = 1500  # loss-curve points sent per timer tick
# What the status line shows of the latest log record, in this order.
STATUS_FIELDS = (("epoch", "epoch {:.2f}"), ("step", "step {}"), ("loss", "loss {:.4f}"), ("lr", "lr {:.2e}"),
                 ("images_per_s", "{:.1f} images/s"))


class TrainView(NamedTuple):
    """What one timer tick shows (:meth:`TrainTab.poll`)."""

    job: str | None  # the training job shown (it may move on to a newer one)
    plot: Any  # its loss curve (a DataFrame of step, loss), or gr.skip()
    status: str  # its status line (markdown)
    bar: str  # its progress bar (html)
    stop: gr.Button  # Stop, enabled while it runs
    build_row: gr.Column  # "build index from this encoder", shown once it has an encoder
    build_status: str  # the index build's progress or outcome
    timer: gr.Timer  # kept ticking while any job runs
    announced: str | None  # the last build whose index was announced to the pickers
    pickers: tuple  # one update per index picker of the page (gr.skip() but once, when a build finishes)

    def outputs(self) -> tuple:
        return (*self[:-1], *self.pickers)


def progress_html(fraction: float | None, text: str) -> str:
    if fraction is None:
        return f"<div class='lk-progress'><progress style='width:100%'></progress><div>{html.escape(text)}</div></div>"
    pct = max(0.0, min(1.0, fraction))
    return (f"<div class='lk-progress'><progress value='{pct:.4f}' max='1' style='width:100%'></progress>"
            f"<div>{pct * 100:.0f}% · {html.escape(text)}</div></div>")


def mmss(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def form_field(s: Setting) -> gr.components.Component:
    """The input of one training setting, at its UI default."""
    value, choices = ui_default(s), choices_of(s)
    if choices is not None:
        return gr.Dropdown(list(choices), value=value, label=s.label, info=s.help)
    if s.type is bool:
        return gr.Checkbox(bool(value), label=s.label, info=s.help)
    if s.type in (int, float):
        return gr.Number(value, label=s.label, info=s.help, precision=0 if s.type is int else None)
    return gr.Textbox(value or "", label=s.label, info=s.help)


class TrainTab(Tab):
    title, id = "Train", "train"

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.settings = ui_settings()
        self._plans: dict[str, str] = {}  # plan() of each form seen (resolving an init loads its weights)

    # ----- starting and stopping -----
    def form(self, **given) -> list:
        """The form's values in order: each setting at its UI default unless ``given`` (by setting name)."""
        unknown = set(given) - {s.name for s in self.settings}
        if unknown:
            raise ValueError(f"not in the Train form: {', '.join(sorted(unknown))}")
        return [given.get(s.name, ui_default(s)) for s in self.settings]

    @user_errors
    def start(self, folder: str, *values):
        """Start a training of ``folder`` with the form's ``values`` → (job id, timer, message).

        The settings given are the UI preset (``training.settings.UI_PRESET``, e.g. a loss point every step) with
        the fields the user changed over it (a field left at its default is not given, so the trainer's own rules
        apply: the default start, what an ``init`` decides), and the run directory under the app's ``runs_dir``."""
        data_dir = str(self.ctx.folders.check(folder, "train on"))  # under the roots allowed at launch
        given = self._given(values)
        draft = config_from_values(data_dir, given)  # bad settings fail here, in the page, not in the background
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.ctx.runs_dir / f"{draft.method}-{_architecture(draft)}-{stamp}"
        config = config_from_values(data_dir, {**given, "out": str(out)})
        label = f"{config.method} · {_architecture(config)} on {Path(data_dir).name}"
        job = self.ctx.jobs.run_training(config, label=label)
        return job.id, gr.Timer(active=True), f"Started {job.title}."

    def _given(self, values) -> dict[str, Any]:
        return {**UI_PRESET, **{s.name: v for s, v in zip(self.settings, values) if v != ui_default(s)}}

    def plan(self, folder: str | None, *values) -> str:
        """What "Start training" would run with the form as it is: the method, network, image size, batch and
        starting weights the settings resolve to (:func:`training.finetune.resolve_sources`, the trainer's own
        rules: e.g. with the defaults, the packaged pretrained encoder at its own size where it is installed)."""
        given = self._given(values)
        key = repr(sorted(given.items()))
        if key not in self._plans:
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = _resolved_text(folder, given)
        return self._plans[key]

    def stop(self, job_id: str | None):
        if job_id and self.ctx.jobs.stop(job_id):
            return "Stopping — the trainer saves a checkpoint first…"
        return gr.skip()

    @user_errors
    def build_index(self, train_id: str | None, name: str):
        """Index the folder a finished training ran on with its encoder, as a background job."""
        job = self.ctx.jobs.get(train_id)
        if job is None or not job.finished_ok:
            raise gr.Error("Train an encoder first (or wait for the running training to finish).")
        run_dir = Path(job.result)
        folder = job.meta.get("data_dir")
        name = (name or "").strip() or run_dir.name
        if not folder:
            raise gr.Error("The training job does not say which folder it trained on.")

        def work(build: Job):
            build.say(f"indexing {folder} with {run_dir.name}")
            return self.ctx.ws.build(folder, str(run_dir), name, progress=False, on_progress=build.progress)

        build = self.ctx.jobs.start("build", f"index {name} from {run_dir.name}", work)
        return build.id, gr.Timer(active=True), f"Building index {name}…"

    # ----- the live view -----
    def poll(self, train_id: str | None, build_id: str | None, announced: str | None) -> TrainView:
        """One timer tick: loss curve, progress and buttons of the training job, then of the index build."""
        jobs = self.ctx.jobs
        train = jobs.get(train_id)
        latest = jobs.latest("train")
        if latest is not None and (train is None or (train.status in FINISHED and latest is not train)):
            train = latest  # follow a newer run (the demo trains several encoders one after another)
        # Keep ticking while anything runs in the background, so the next run of a sequence shows up too.
        running = any(j.status not in FINISHED for j in jobs.list())
        build_status, announced, pickers = self._build_view(jobs.get(build_id), announced)
        plot, status, bar, stop, build_row = self._train_view(train)
        return TrainView(train.id if train else None, plot, status, bar, stop, build_row, build_status,
                         gr.Timer(active=running), announced, pickers)

    def tick(self, train_id, build_id, announced) -> tuple:
        return self.poll(train_id, build_id, announced).outputs()

    def _train_view(self, train: Job | None) -> tuple:
        if train is None:
            return gr.skip(), "No training yet.", "", gr.Button(interactive=False), gr.Column(visible=False)
        snap = train.snapshot()
        status, bar = self._status(train, snap)
        return (_loss_curve(snap["records"]), status, bar,
                gr.Button(interactive=snap["status"] not in FINISHED and not snap["stopping"]),
                gr.Column(visible=train.finished_ok))

    def _build_view(self, build: Job | None, announced: str | None) -> tuple[str, str | None, tuple]:
        """(status text, last build announced, picker updates) of the index build."""
        if build is None:
            return "", announced, self.ctx.pickers.unchanged()
        snap = build.snapshot()
        if snap["status"] == FAILED:
            return f"Index build failed: {snap['error']}", announced, self.ctx.pickers.unchanged()
        if snap["status"] not in FINISHED:
            fraction = snap["done"] / snap["total"] if snap["total"] else None
            return (progress_html(fraction, f"{snap['message']} — {snap['done']}/{snap['total']} images"),
                    announced, self.ctx.pickers.unchanged())
        r = snap["result"]
        if r is None:
            return "Index build stopped.", announced, self.ctx.pickers.unchanged()
        text = f"Index **{r.name}** ready: {r.count} images. Pick it in the Search or Compare tab."
        if announced == build.id:
            return text, announced, self.ctx.pickers.unchanged()
        return text, build.id, self.ctx.pickers.select(r.name)  # select the new index, once

    @staticmethod
    def _status(job: Job, snap: dict) -> tuple[str, str]:
        """(status markdown, progress bar html) of a training job."""
        records = snap["records"]
        last = next((r for r in reversed(records) if "loss" in r), {})
        stopping = snap["stopping"] and snap["status"] not in FINISHED
        head = f"**{snap['title']}** — {snap['status']}" + (" (stopping…)" if stopping else "")
        parts = [fmt.format(last[key]) for key, fmt in STATUS_FIELDS if isinstance(last.get(key), (int, float))]
        knn = next((r["knn_acc"] for r in reversed(records) if isinstance(r.get("knn_acc"), float)), None)
        if knn is not None:
            parts.append(f"kNN accuracy {knn:.3f}")
        minutes, elapsed = job.meta.get("minutes"), snap["elapsed"]
        parts.append(mmss(elapsed) + (f" / {mmss(minutes * 60)}" if minutes else ""))
        if snap["status"] == FAILED:
            return f"Training failed: {snap['error']}", ""
        if snap["status"] in FINISHED:
            if snap["result"]:
                parts.append(f"encoder saved to `{snap['result']}`")
            return f"{head}  \n{' · '.join(parts)}", progress_html(1.0, "done")
        fraction = None
        if isinstance(last.get("progress"), (int, float)):
            fraction = float(last["progress"])
        elif minutes:
            fraction = min(0.99, elapsed / (minutes * 60))
        return f"{head}  \n{' · '.join(parts)}", progress_html(fraction, "training")

    def resume(self):
        """On page load, re-attach to the latest training (and build) so a reload does not lose the live view."""
        jobs = self.ctx.jobs
        train, build = jobs.latest("train"), jobs.latest("build")
        active = any(j.status not in FINISHED for j in jobs.list())
        return train.id if train else None, build.id if build else None, gr.Timer(active=active)

    # ----- the page -----
    def layout(self) -> None:
        gr.Markdown("Train an encoder on a folder of images without labels. The run directory it writes can then be "
                    "indexed and compared with the baselines.", elem_classes=["lk-note"])
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                dirs = self.ctx.folders.offered(self.ctx.train_dirs + self.ctx.collection_roots())
                self.folder = gr.Dropdown(dirs, value=dirs[0] if dirs else None, allow_custom_value=True,
                                          label="Image folder")
                self.plan_note = gr.Markdown("", elem_id="train-plan")  # what Start will run (plan())
                self.fields: dict[str, gr.components.Component] = {}
                for i in range(0, len(self.settings), 2):  # two settings a row
                    with gr.Row():
                        for s in self.settings[i:i + 2]:
                            self.fields[s.name] = form_field(s)
                with gr.Row():
                    self.start_button = gr.Button("Start training", variant="primary")
                    self.stop_button = gr.Button("Stop", variant="stop", interactive=False)
            with gr.Column(scale=2):
                self.status = gr.Markdown("No training yet.")
                self.bar = gr.HTML("")
                self.plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=280, x_title="step",
                                        y_title="loss", y_axis_format=".3~g")
                with gr.Column(visible=False) as self.build_row:
                    with gr.Row():
                        self.index_name = gr.Textbox(label="Index name (default: the run's name)", scale=3)
                        self.build_button = gr.Button("Build index from this encoder", scale=2)
                self.build_status = gr.Markdown("")
        self.job, self.build_job, self.announced = gr.State(None), gr.State(None), gr.State(None)
        self.timer = gr.Timer(1.0, active=False)

    def wire(self, page: gr.Blocks) -> None:
        self.start_button.click(self.start, [self.folder, *self.fields.values()], [self.job, self.timer, self.status],
                                api_visibility="private")
        self.stop_button.click(self.stop, [self.job], [self.status], api_visibility="private")
        self.build_button.click(self.build_index, [self.job, self.index_name],
                                [self.build_job, self.timer, self.build_status], api_visibility="private")
        self.timer.tick(self.tick, [self.job, self.build_job, self.announced],
                        [self.job, self.plot, self.status, self.bar, self.stop_button, self.build_row,
                         self.build_status, self.timer, self.announced, *self.ctx.pickers.components],
                        api_visibility="private", show_progress="hidden")
        page.load(self.resume, None, [self.job, self.build_job, self.timer], api_visibility="private")
        form = [self.folder, *self.fields.values()]
        page.load(self.plan, form, [self.plan_note], api_visibility="private", show_progress="hidden")
        for field in self.fields.values():
            field.change(self.plan, form, [self.plan_note], api_visibility="private", show_progress="hidden")


def _loss_curve(records: list[dict]):
    """(step, loss) of the log records as a DataFrame, thinned to :data:`PLOT_POINTS` (the last point kept)."""
    import pandas as pd

    pts = [(r["step"], r["loss"]) for r in records
           if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))]
    if len(pts) > PLOT_POINTS:  # keep each tick's payload small on long runs
        pts = pts[:: -(-len(pts) // PLOT_POINTS)] + pts[-1:]
    # Typed columns even when empty: the plot fixes each axis's type (numeric or categorical) from the first value
    # it gets, and an empty object column would make the loss axis categorical for good.
    return pd.DataFrame({"step": np.array([p[0] for p in pts], np.float64),
                         "loss": np.array([p[1] for p in pts], np.float64)})


def _resolved_text(folder: str | None, given: dict[str, Any]) -> str:
    """One markdown line: what a run of ``given`` settings trains, as the trainer resolves them."""
    from retrieval.errors import LookalikeError
    from training.finetune import resolve_sources

    # the resolution does not depend on the folder; one that does not exist (yet) must not hide it
    data_dir = folder if folder and Path(folder).expanduser().is_dir() else "."
    try:
        cfg, _ = resolve_sources(config_from_values(data_dir, given))
    except LookalikeError as exc:
        return f"**Will not start:** {exc}"
    start = (f"the weights of `{cfg.init}`" if cfg.init else "random weights")
    teacher = f", learning from `{cfg.teacher}`" if cfg.teacher else ""
    lr = f", learning rate {cfg.lr:.2g}" if cfg.lr is not None else ""
    return (f"**Will train:** {cfg.method} on **{cfg.backbone}** at **{cfg.image_size} px**, batch "
            f"{cfg.batch_size}, starting from **{start}**{teacher}{lr}, BatchNorm {cfg.batchnorm}, "
            f"{cfg.pool} pooling.")


def _architecture(config) -> str:
    """The network a config trains, for the run folder's name: the backbone, or what the init (or a distilled
    student's teacher) names, which replaces it when the run starts."""
    source = config.init or (config.teacher if not config.given("backbone") else None)
    if not source:
        return config.backbone
    return network_of(source)
