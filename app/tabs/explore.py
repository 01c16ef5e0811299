"""Explore: a 2-D map of an index's embeddings and its near-duplicate pairs (helpers in retrieval.neighbours).

Hovering a point of the map shows its picture: the map's ``image`` column holds the URL of each point's thumbnail
(the plot's tooltip shows a column of that name as a picture); thumbnails not made yet are made by a background job,
so a map of a large collection draws at once and its pictures appear as they are made.
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from retrieval.errors import BadImageError
from retrieval.duplicates import FALLBACK_THRESHOLD, duplicate_threshold
from retrieval.neighbours import near_duplicate_pairs, pca_2d
from retrieval.thumbnails import identity

from ..context import Tab, user_errors
from ..jobs import Job
from ..serving import file_url

MAP_POINTS = 3000  # points drawn on the map (a random sample beyond that)
PAIRS_SHOWN = 24  # pairs shown as images (all are listed)
MAP_WAIT_S = 3.0  # how long drawing the map waits for its missing thumbnails (about 50 12-MP photos)


class ExploreTab(Tab):
    title, id = "Explore", "explore"

    @user_errors
    def map(self, name: str | None, max_points: float = MAP_POINTS):
        """Up to ``max_points`` items on the first two principal components, coloured by label."""
        import pandas as pd

        name = self.ctx.require_index(name)
        store = self.ctx.ws.store(name)
        paths, vectors = store.vectors()
        if len(paths) < 3:
            raise gr.Error(f"Index {name!r} has {len(paths)} image(s); a map needs at least 3.")
        rng = np.random.default_rng(0)
        n = int(max_points or MAP_POINTS)
        sel = np.sort(rng.choice(len(paths), n, replace=False)) if len(paths) > n else np.arange(len(paths))
        coords = pca_2d(vectors[sel])
        items = store.items()
        labels = [(items[paths[i]].label if paths[i] in items else None) for i in sel]
        has_labels = any(lab is not None for lab in labels)
        shown = [paths[i] for i in sel]
        df = pd.DataFrame({"x": coords[:, 0].round(4), "y": coords[:, 1].round(4),
                           "label": [lab or "(none)" for lab in labels], "path": shown,
                           "image": self.pictures(name, shown)})
        caption = (f"{len(sel)} of {len(paths)} images, first two principal components of the embeddings"
                   + (", coloured by label (sub-folder)" if has_labels else "") + "; hover a point to see it")
        return gr.ScatterPlot(value=df, x="x", y="y", color="label", tooltip=["path", "label", "image"],
                              caption=caption)

    def pictures(self, name: str, rels: list[str]) -> list[str]:
        """The URL of each item's thumbnail ("" for a file gone since); missing ones are made in the background."""
        urls, missing = [], []
        for rel in rels:
            path = self.ctx.ws.resolve(name, rel)  # items only
            try:
                thumb = self.ctx.thumbs.path_of(identity(path))
            except OSError:
                urls.append("")
                continue
            if not thumb.is_file():
                missing.append(path)
            urls.append(file_url(thumb))
        if missing:
            job = self.ctx.jobs.start("thumbnails", f"pictures for the map of {name}",
                                      lambda job: self._make_thumbnails(missing, job))
            job.wait(MAP_WAIT_S)  # a small map is drawn with all its pictures; a large one goes on behind it
        return urls

    def _make_thumbnails(self, paths: list, job: Job) -> int:
        for done, path in enumerate(paths, start=1):
            if job.stopping:
                break
            try:
                self.ctx.thumbs.get(path)
            except (BadImageError, OSError):
                pass
            job.progress(done, len(paths))
        return len(paths)

    @user_errors
    def default_threshold(self, name: str | None):
        """The index's calibrated "same photo" cosine (retrieval.duplicates), as the slider's value."""
        if not name:
            return gr.skip()
        return gr.update(value=round(duplicate_threshold(self.ctx.ws.info(name)), 3))

    @user_errors
    def near_duplicates(self, name: str | None, threshold: float = FALLBACK_THRESHOLD, neighbours: float = 5):
        """(summary, [[cosine, a, b], …], gallery of the first pairs side by side)."""
        name = self.ctx.require_index(name)
        store = self.ctx.ws.store(name)
        paths, vectors = store.vectors()
        if len(paths) < 2:
            return "Fewer than two images: nothing to compare.", [], []
        pairs = near_duplicate_pairs(paths, vectors, lambda q, k: store.search(q, k, whitened=True), float(threshold),
                                     neighbours=int(neighbours))
        gallery = [(self.ctx.thumbnail(name, path), f"#{i} {score:.3f} · {path}")
                   for i, (score, a, b) in enumerate(pairs[:PAIRS_SHOWN], start=1) for path in (a, b)]
        summary = (f"{len(pairs)} pair(s) with cosine ≥ {float(threshold):.3f} among {len(paths)} images"
                   + (f" (showing the first {PAIRS_SHOWN} as images)" if len(pairs) > PAIRS_SHOWN else ""))
        return summary, [[round(s, 4), a, b] for s, a, b in pairs], gallery

    def layout(self) -> None:
        names = self.ctx.index_names()
        with gr.Row():
            self.index = self.ctx.pickers.add(gr.Dropdown(names, value=names[0] if names else None, label="Index",
                                                          allow_custom_value=True, scale=3))
            self.points = gr.Slider(100, 10_000, value=MAP_POINTS, step=100, label="Points on the map", scale=2)
            self.map_button = gr.Button("Show map", variant="primary", scale=1)
        self.plot = gr.ScatterPlot(x="x", y="y", color="label", label="Embedding map (PCA)",
                                   tooltip=["path", "label"], elem_id="explore-map")
        gr.Markdown("**Near duplicates** — pairs whose embeddings have cosine similarity above the threshold "
                    "(nearest-neighbour search in batches).")
        with gr.Row():
            self.threshold = gr.Slider(0.0, 1.0, value=FALLBACK_THRESHOLD, step=0.005, scale=3,
                                       label="Cosine threshold (set to the index's calibrated 'same photo' value)")
            self.neighbours = gr.Slider(1, 50, value=5, step=1, label="Neighbours per image", scale=2)
            self.pairs_button = gr.Button("Find near duplicates", scale=1)
        self.summary = gr.Markdown("")
        with gr.Row():
            self.pairs = gr.Dataframe(headers=["cosine", "image a", "image b"], interactive=False, max_height=420,
                                      scale=1)
            self.gallery = gr.Gallery(label="Pairs (a, b side by side)", columns=4, height=420, object_fit="contain",
                                      scale=1)

    def wire(self, page: gr.Blocks) -> None:
        self.index.change(self.default_threshold, [self.index], [self.threshold], api_visibility="private")
        self.map_button.click(self.map, [self.index, self.points], [self.plot], api_visibility="private")
        self.pairs_button.click(self.near_duplicates, [self.index, self.threshold, self.neighbours],
                                [self.summary, self.pairs, self.gallery], api_visibility="private")
