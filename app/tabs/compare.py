"""Compare: one query against several indexes, a column each, headed by its encoder and its evaluation scores.

Its button is the public ``/compare`` endpoint:
(image, indexes, k) → ``{index_name: [{"rank", "path", "score"}, …]}``.
"""

from __future__ import annotations

import threading
from typing import Sequence

import gradio as gr

from ..context import NO_INDEX, AppContext, Tab, parse_k, user_errors
from ..scorecards import ScorecardView, labelled_figures
from ..serving import require_image

SHOWN_METRICS = ("recall@1", "map@10", "knn_acc")


class CompareTab(Tab):
    title, id = "Compare", "compare"

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self._metrics: dict[tuple, dict | None] = {}  # one entry per index: its scores at one generation
        self._lock = threading.Lock()
        self.scorecard = ScorecardView(ctx, "compare")

    def metrics_for(self, name: str) -> dict | None:
        """Evaluation scores of an index: its manifest's ``metrics``, else leave-one-out over its labelled items.

        Computed once per index generation (a rebuilt or refreshed index is evaluated again). None when the items
        carry fewer than two labels or the index is too large to evaluate on the fly.
        """
        store = self.ctx.ws.store(name)
        manifest = store.manifest
        if isinstance(manifest.get("metrics"), dict):
            return manifest["metrics"]
        key = (name, manifest.get("uid"), manifest.get("generation"), manifest.get("updated"), store.count)
        with self._lock:
            if key in self._metrics:
                return self._metrics[key]
        result = labelled_figures(store)
        with self._lock:
            for old in [k for k in self._metrics if k[0] == name]:  # keep one generation per index
                del self._metrics[old]
            self._metrics[key] = result
        return result

    @staticmethod
    def metrics_text(metrics: dict | None) -> str:
        if not metrics:
            return "not evaluated (its images have no labels)"
        if "note" in metrics:
            return str(metrics["note"])
        text = " · ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN_METRICS if isinstance(metrics.get(k), float))
        if "count" in metrics:
            text += f" (leave-one-out, {metrics['count']} labelled images)"
        return text

    def _names(self, indexes: Sequence[str] | str | None) -> list[str]:
        available = self.ctx.index_names()
        if not available:
            raise gr.Error(NO_INDEX)
        if isinstance(indexes, str):
            indexes = [indexes]
        names = list(dict.fromkeys(indexes or available))
        unknown = [n for n in names if n not in available]
        if unknown:
            raise gr.Error(f"No index named {', '.join(map(repr, unknown))}; available: {', '.join(available)}.")
        return names

    @user_errors
    def compare(self, image: dict | str | None, indexes: list[str] | None, k: float = 5):
        """One query against several indexes → ({name: results JSON}, column data for the page)."""
        from retrieval.identity import describe_identity

        names = self._names(indexes)
        path = require_image(image)
        k = parse_k(k)
        out, columns = {}, []
        for name in names:
            results = self.ctx.ws.search(name, path, k=k)
            out[name] = [r.to_json() for r in results]
            columns.append({"name": name, "encoder": describe_identity(self.ctx.ws.store(name).manifest["encoder"]),
                            "metrics": self.metrics_text(self.metrics_for(name)),
                            "items": self.ctx.gallery(name, results)})
        return out, columns

    def all_indexes(self):
        names = self.ctx.index_names()
        return gr.Dropdown(choices=names, value=names, multiselect=True)

    def layout(self) -> None:
        names = self.ctx.index_names()
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                self.query = gr.Image(type="filepath", label="Query image", height=220, elem_id="compare-query",
                                      sources=["upload", "webcam", "clipboard"])
                if self.ctx.examples:
                    gr.Examples(examples=[[p] for p in self.ctx.examples], inputs=[self.query], label="Examples")
            with gr.Column(scale=2):
                self.indexes = self.ctx.pickers.add(gr.Dropdown(
                    names, value=self.ctx.opening.compare_indexes(names), multiselect=True, allow_custom_value=True,
                    label="Indexes (one column each)", elem_id="compare-indexes"))
                with gr.Row():
                    self.k = gr.Slider(1, 20, value=5, step=1, label="k per index", scale=3)
                    self.reload = gr.Button("↻ all indexes", scale=1, size="sm")
                self.button = gr.Button("Compare", variant="primary", elem_id="compare-button")
        self.columns = gr.State(None)
        with gr.Accordion("Results as JSON", open=False):
            self.json = gr.JSON(label="results by index")
        gr.render(inputs=self.columns)(_columns)
        self.scorecard.layout()

    def wire(self, page: gr.Blocks) -> None:
        self.button.click(self.compare, [self.query, self.indexes, self.k], [self.json, self.columns],
                          api_name="compare", preprocess=False)
        self.reload.click(self.all_indexes, None, [self.indexes], api_visibility="private")
        self.scorecard.wire(page)


def _columns(columns: list[dict] | None) -> None:
    """The result columns, drawn again whenever a comparison returns."""
    if not columns:
        gr.Markdown("Pick a query and press Compare: each index gets a column, headed by its encoder and its "
                    "evaluation scores.", elem_classes=["lk-note"])
        return
    with gr.Row(equal_height=False, elem_id="compare-columns"):
        for col in columns:
            with gr.Column(min_width=180):
                gr.Markdown(f"**{col['name']}**  \n{col['encoder']}  \n<span class='lk-note'>{col['metrics']}</span>")
                gr.Gallery(col["items"], columns=max(1, min(3, 6 // len(columns))), height="auto",
                           object_fit="contain", show_label=False, allow_preview=True,
                           elem_classes=["compare-gallery"])
