"""The scorecard of every index, as a table and a bar chart with intervals, for the Compare and Indexes tabs.

Label-free scores come from :meth:`retrieval.workspace.Workspace.scorecard` (cached in each index folder per
generation); the labelled figures, where an index's items carry labels, from a leave-one-out evaluation of its own
vectors (:func:`labelled_figures`). What is missing is computed in one background job ("scorecard", one at a time)
with progress; the page polls it with a timer while it runs.
"""

from __future__ import annotations

import html
import threading

import gradio as gr

from retrieval.errors import LookalikeError

from .context import AppContext
from .jobs import FINISHED, Job

JOB_KIND = "scorecard"
EVAL_MAX_ITEMS = 20_000  # lazy leave-one-out evaluation is O(N²·dim): skipped for larger indexes
LABELLED = ("recall@1", "map@10")
HEADERS = ["index", "encoder", "score", "95% CI", "content recall@1", "stability@10", "rankme",
           *(f"labelled {k}" for k in LABELLED)]


def labelled_figures(store) -> dict | None:
    """Leave-one-out metrics of an index's labelled items (``count`` of them); None without two labels, a note
    for an index too large to evaluate on the fly."""
    from retrieval.metrics import evaluate_labelled

    if store.count > EVAL_MAX_ITEMS:
        return {"note": f"not evaluated on the fly ({store.count} images; use `lookalike eval`)"}
    if store.count <= 2:
        return None
    items = store.items()
    paths, vectors = store.vectors()
    labels = [items[p].label if p in items else None for p in paths]
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if len({labels[i] for i in keep}) < 2:
        return None
    result = evaluate_labelled(vectors[keep], [labels[i] for i in keep])
    result["count"] = len(keep)
    return result


class Scorecards:
    """Scores of the app's indexes, per index generation, and the job that fills them in."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self._labelled: dict[tuple[str, int | None], dict | None] = {}
        self._lock = threading.Lock()

    def _generation(self, name: str) -> int | None:
        return self.ctx.ws.store(name).manifest.get("generation")

    def labelled(self, name: str) -> dict | None:
        key = (name, self._generation(name))
        with self._lock:
            if key in self._labelled:
                return self._labelled[key]
        result = labelled_figures(self.ctx.ws.store(name))
        with self._lock:
            for old in [k for k in self._labelled if k[0] == name]:
                del self._labelled[old]
            self._labelled[key] = result
        return result

    def missing(self) -> list[str]:
        return [n for n in self.ctx.index_names() if self.ctx.ws.cached_scorecard(n) is None]

    def start(self) -> Job | None:
        """Start the background job for the indexes without a scorecard (None: nothing to do, or one runs)."""
        running = self.ctx.jobs.latest(JOB_KIND)
        if running is not None and running.status not in FINISHED:
            return running
        names = self.missing()
        if not names:
            return None

        def work(job: Job):
            for i, name in enumerate(names):
                if job.stopping:
                    break

                def tick(done, total, stage, i=i, name=name):
                    job.progress(done, total, f"index {i + 1}/{len(names)} {name}: {stage}")

                job.say(f"index {i + 1}/{len(names)} {name}: loading its encoder")
                try:
                    self.ctx.ws.scorecard(name, progress=tick)
                    self.labelled(name)
                except LookalikeError as exc:
                    job.log({"index": name, "error": str(exc)})
            return names

        return self.ctx.jobs.start(JOB_KIND, f"scorecards of {len(names)} index(es)", work, exclusive=True)

    def rows(self) -> list[list]:
        rows = []
        for name in self.ctx.index_names():
            try:
                card = self.ctx.ws.cached_scorecard(name)
                store = self.ctx.ws.store(name)
            except LookalikeError:
                continue
            lab = self.labelled(name) if card is not None else None
            enc = store.manifest["encoder"].get("spec", "")
            if card is None:
                rows.append([name, enc, None, "computing…", None, None, None, None, None])
                continue
            p = card["parts"]
            lab_cells = [round(lab[k], 3) if lab and isinstance(lab.get(k), float) else None for k in LABELLED]
            rows.append([name, enc, round(card["score"], 3), f"{card['ci'][0]:.3f}–{card['ci'][1]:.3f}",
                         round(p["content_recall@1"], 3), round(p["stability@10"], 3), round(p["rankme"], 3),
                         *lab_cells])
        return rows

    def status(self) -> tuple[str, bool]:
        job = self.ctx.jobs.latest(JOB_KIND)
        if job is None:
            return "", False
        snap = job.snapshot()
        if snap["status"] not in FINISHED:
            done = f" ({snap['done']}/{snap['total']})" if snap["total"] else ""
            return f"Scoring in the background: {snap['message']}{done}", True
        errors = [r for r in snap["records"] if "error" in r]
        if snap["error"] or errors:
            return "Scorecard failed: " + "; ".join([snap["error"] or ""] + [f"{r['index']}: {r['error']}"
                                                                             for r in errors]).strip("; "), False
        return "", False


def bars_html(rows: list[list]) -> str:
    """A horizontal bar per index: the score, its 95% interval as a whisker, the labelled recall@1 as a tick."""
    scored = [r for r in rows if r[2] is not None]
    if not scored:
        return "<div class='lk-note'>No scorecard yet.</div>"
    lines = []
    for r in scored:
        lo, hi = (float(x) for x in r[3].split("–"))
        tick = "" if r[7] is None else (f"<div title='labelled recall@1 {r[7]:.3f}' style='position:absolute;"
                                        f"left:{r[7] * 100:.1f}%;top:0;height:100%;border-left:2px dashed #d33'>"
                                        "</div>")
        lines.append(
            f"<div style='display:flex;align-items:center;gap:8px;margin:3px 0'>"
            f"<div style='width:28%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap'>{html.escape(r[0])}"
            f"</div><div style='position:relative;flex:1;height:16px;background:#eee'>"
            f"<div style='width:{r[2] * 100:.1f}%;height:100%;background:#4a7bd0'></div>"
            f"<div style='position:absolute;left:{lo * 100:.1f}%;width:{(hi - lo) * 100:.1f}%;top:6px;height:4px;"
            f"background:#222'></div>{tick}</div><div style='width:48px'>{r[2]:.3f}</div></div>")
    legend = ("<div class='lk-note'>bar: label-free score (0–1); black: its 95% bootstrap interval; dashed red: "
              "labelled recall@1 where the index has labels. docs/scorecard.md says where it misleads.</div>")
    return "".join(lines) + legend


class ScorecardView:
    """The panel a tab places: table, bars, status, a button, and a timer that polls while the job runs."""

    def __init__(self, ctx: AppContext, elem: str):
        self.ctx, self.elem = ctx, elem
        if ctx.scorecards is None:
            ctx.scorecards = Scorecards(ctx)  # one per app: the tabs share its caches and its job
        self.cards: Scorecards = ctx.scorecards

    def layout(self) -> None:
        with gr.Accordion("Scorecard of every index (label-free; labelled figures where there are labels)",
                          open=False, elem_id=f"{self.elem}-scorecard") as self.panel:
            self.status = gr.Markdown("")
            self.table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id=f"{self.elem}-scorecard-table")
            self.bars = gr.HTML("")
            self.button = gr.Button("Score the indexes without a scorecard", size="sm")
            self.timer = gr.Timer(2.0, active=False)

    def show(self):
        rows = self.cards.rows()
        status, running = self.cards.status()
        return status, rows, bars_html(rows), gr.Timer(active=running)

    def compute(self):
        try:
            self.cards.start()
        except LookalikeError as exc:
            raise gr.Error(str(exc)) from None
        return self.show()

    def wire(self, page: gr.Blocks) -> None:
        outputs = [self.status, self.table, self.bars, self.timer]
        page.load(self.show, None, outputs, api_visibility="private")
        self.button.click(self.compute, None, outputs, api_visibility="private")
        self.panel.expand(self.compute, None, outputs, api_visibility="private")  # opening it scores what is missing
        self.timer.tick(self.show, None, outputs, api_visibility="private")
