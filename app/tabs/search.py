"""Search: one query image against one index, top-k shown as thumbnails; a click on a result searches with it.

The clicked result's full picture becomes the query, and a line under the results names it (path, size,
dimensions) with a link that opens the original.

Its button is the public ``/search`` endpoint: (image, index, k, expand) → (gallery, ``[{"rank", "path", "score"},
…]``); ``expand`` re-ranks with query expansion (αQE over ``retrieval.workspace.QE_NEIGHBOURS`` results; off by
default, as ``SEARCH_DEFAULTS`` says).
"""

from __future__ import annotations

import gradio as gr

from retrieval.errors import LookalikeError
from retrieval.workspace import QE_NEIGHBOURS, SEARCH_DEFAULTS

from ..context import Tab, parse_k, user_errors
from ..serving import query_source, require_image
from .marks import MarksRow


class SearchTab(Tab):
    title, id = "Search", "search"

    @user_errors
    def search(self, image: dict | str | None, index: str | None, k: float = 10,
               expand: bool = bool(SEARCH_DEFAULTS["qe"])):
        """Top-k of the query image in one index → (gallery, JSON results, [index, path] per result for a click)."""
        name = self.ctx.require_index(index)
        path = require_image(image)
        results = self.ctx.ws.search(name, path, k=parse_k(k), qe=QE_NEIGHBOURS if expand else 0)
        return self.ctx.gallery(name, results), [r.to_json() for r in results], [[name, r.path] for r in results]

    @user_errors
    def search_if_ready(self, image, index, k, expand=bool(SEARCH_DEFAULTS["qe"])):
        """The same search, fired by changing the query, index, k or expansion; quiet while something is missing."""
        if not query_source(image) or not index:
            return [], [], []
        return self.search(image, index, k, expand)

    @user_errors
    def pick_result(self, shown: list[list[str]] | None, evt: gr.SelectData):
        """A click on a result makes its full picture the query (whose change event then searches) and names it."""
        if not shown or not isinstance(evt.index, int) or not 0 <= evt.index < len(shown):
            return gr.skip(), gr.skip()
        name, rel = shown[evt.index]
        return self.ctx.original(name, rel)

    def follow(self, other_query: gr.Image) -> None:
        """Hand every new query of this tab to ``other_query`` (another tab's image input) as well."""
        self.query.change(_same_upload, [self.query], [other_query], api_visibility="private", preprocess=False)

    def layout(self) -> None:
        names = self.ctx.index_names()
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                self.query = gr.Image(type="filepath", label="Query image", height=280, elem_id="search-query",
                                      sources=["upload", "webcam", "clipboard"])
                with gr.Row():
                    self.index = self.ctx.pickers.add(gr.Dropdown(
                        names, value=self.ctx.opening.search_index(names), label="Index", allow_custom_value=True,
                        scale=4, elem_id="search-index"))
                    self.reload = gr.Button("↻", scale=0, min_width=40, size="sm")
                self.k = gr.Slider(1, 50, value=10, step=1, label="k (results)")
                self.expand = gr.Checkbox(bool(SEARCH_DEFAULTS["qe"]), elem_id="search-expand",
                                          label=f"Query expansion (αQE over the {QE_NEIGHBOURS} best results)")
                self.button = gr.Button("Search", variant="primary", elem_id="search-button")
                if self.ctx.examples:
                    gr.Examples(examples=[[p] for p in self.ctx.examples], inputs=[self.query], label="Examples")
            with gr.Column(scale=2):
                self.gallery = gr.Gallery(label="Most similar (click one to search with it)", columns=5, height=560,
                                          object_fit="contain", allow_preview=False, elem_id="search-results")
                self.picked = gr.Markdown("", elem_id="search-picked", elem_classes=["lk-note"])
                self.marks = MarksRow(self.ctx)
                self.marks.layout()
                with gr.Accordion("Results as JSON", open=False):
                    self.json = gr.JSON(label="results")
        self.paths = gr.State([])

    def wire(self, page: gr.Blocks) -> None:
        inputs, outputs = [self.query, self.index, self.k, self.expand], [self.gallery, self.json, self.paths]
        # preprocess=False: the handler gets the upload undecoded (see app.serving.query_source).
        self.button.click(self.search, inputs, outputs, api_name="search", preprocess=False)
        for trigger in (self.query.change, self.index.change, self.k.release, self.expand.change):
            trigger(self.search_if_ready, inputs, outputs, api_visibility="private", trigger_mode="always_last",
                    preprocess=False)
        self.gallery.select(self.pick_result, [self.paths], [self.query, self.picked], api_visibility="private")
        self.ctx.pickers.refresh_on(self.reload.click)
        self.marks.wire(self.query, self.index, self.paths)


def _same_upload(image):
    """The query as another image input takes it: a file of the upload folder (see ``query_source``), else nothing."""
    try:
        source = query_source(image)
    except LookalikeError:
        return gr.skip()
    return source if isinstance(source, str) else gr.skip()
