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
from retrieval.neighbours import MAPS, near_duplicate_pairs, pca_2d
from retrieval.thumbnails import identity

from ..context import AppContext, Tab, user_errors
from ..jobs import FAILED, FINISHED, Job
from ..serving import file_url

MAP_POINTS = 3000  # points drawn on the map (a random sample beyond that)
MAPS_KEPT = 16  # finished background maps kept for a second look
MAX_MAP_POINTS = 100_000  # the most the map offers (t-SNE of 100k points: see docs/performance.md)
PAIRS_SHOWN = 24  # pairs shown as images (all are listed)
MAP_WAIT_S = 3.0  # how long drawing the map waits for its missing thumbnails (about 50 12-MP photos)


class ExploreTab(Tab):
    title, id = "Explore", "explore"

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self._maps: dict[tuple, Job] = {}  # background map jobs by (index, generation, kind, points)

    @user_errors
    def map(self, name: str | None, max_points: float = MAP_POINTS, kind: str = "PCA"):
        """(map, background job id, timer): up to ``max_points`` items on a 2-D map of ``kind``
        (:data:`retrieval.neighbours.MAPS`), coloured by label. A slow kind (t-SNE) is computed by a background job:
        the PCA map is drawn meanwhile and the timer brings the other when it is done (:meth:`tick`)."""
        map_kind = MAPS.get(kind)
        if map_kind is None:
            raise gr.Error(f"Unknown map {kind!r}; choose one of {', '.join(MAPS)}.")
        if map_kind.missing():
            raise gr.Error(map_kind.missing())
        name = self.ctx.require_index(name)
        store = self.ctx.ws.store(name)
        paths, vectors = store.vectors()
        if len(paths) < 3:
            raise gr.Error(f"Index {name!r} has {len(paths)} image(s); a map needs at least 3.")
        rng = np.random.default_rng(0)
        n = int(max_points or MAP_POINTS)
        sel = np.sort(rng.choice(len(paths), n, replace=False)) if len(paths) > n else np.arange(len(paths))
        shown = [paths[i] for i in sel]
        if not map_kind.slow:
            return self._plot(name, store, shown, map_kind.project(vectors[sel]), kind, len(paths)), None, \
                gr.Timer(active=False)
        job = self._map_job(name, store, shown, vectors[sel], kind, len(paths))
        if job.status in FINISHED:
            return self.tick(job.id)
        placeholder = self._plot(name, store, shown, pca_2d(vectors[sel]), "PCA", len(paths),
                                 note=f"{kind} of these points is being computed in the background")
        return placeholder, job.id, gr.Timer(active=True)

    def _map_job(self, name: str, store, shown: list[str], vectors: np.ndarray, kind: str, total: int) -> Job:
        """The background job computing map ``kind`` of these points (one per index state, points and kind)."""
        key = (name, store.manifest.get("generation"), kind, len(shown), shown[0], shown[-1])
        job = self._maps.get(key)
        if job is None or job.status == FAILED:
            project = MAPS[kind].project
            if len(self._maps) >= MAPS_KEPT:  # forget the oldest
                self._maps.pop(next(iter(self._maps)))

            def work(job: Job) -> dict:
                job.say(f"{kind} of {len(shown)} points")
                return {"name": name, "shown": shown, "coords": project(vectors), "kind": kind, "total": total}
            job = self._maps[key] = self.ctx.jobs.start("map", f"{kind} map of {name}", work)
        return job

    @user_errors
    def tick(self, job_id: str | None):
        """One timer tick: the finished map of job ``job_id`` (the timer stops), or nothing new yet."""
        job = self.ctx.jobs.get(job_id)
        if job is None:
            return gr.skip(), None, gr.Timer(active=False)
        if job.status not in FINISHED:
            return gr.skip(), job_id, gr.Timer(active=True)
        if job.status == FAILED or job.result is None:
            raise gr.Error(f"The map could not be computed: {job.error or 'stopped'}")
        r = job.result
        return (self._plot(r["name"], self.ctx.ws.store(r["name"]), r["shown"], r["coords"], r["kind"], r["total"]),
                None, gr.Timer(active=False))

    def _plot(self, name: str, store, shown: list[str], coords: np.ndarray, kind: str, total: int,
              note: str = "") -> gr.ScatterPlot:
        import pandas as pd

        items = store.items()
        labels = [(items[p].label if p in items else None) for p in shown]
        has_labels = any(lab is not None for lab in labels)
        df = pd.DataFrame({"x": coords[:, 0].round(4), "y": coords[:, 1].round(4),
                           "label": [lab or "(none)" for lab in labels], "path": shown,
                           "image": self.pictures(name, shown)})
        caption = (f"{len(shown)} of {total} images on {MAPS[kind].axes} of the embeddings"
                   + (", coloured by label (sub-folder)" if has_labels else "") + "; hover a point to see it"
                   + (f" ({note})" if note else ""))
        return gr.ScatterPlot(value=df, x="x", y="y", color="label", tooltip=["path", "label", "image"],
                              caption=caption, label=f"Embedding map ({kind})")

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
        # each index's cached label-free scorecard (app.opening prefers the highest; nothing is computed here)
        manifests = [{**m, "scorecard": self.ctx.ws.cached_scorecard(m["name"])} for m in self.ctx.ws.list()]
        opening = self.ctx.opening.explore_index(manifests)
        calibrated = duplicate_threshold(next((m for m in manifests if m["name"] == opening), {}))
        with gr.Row():
            self.index = self.ctx.pickers.add(gr.Dropdown([m["name"] for m in manifests], value=opening,
                                                          label="Index", allow_custom_value=True, scale=3))
            self.kind = gr.Radio(list(MAPS), value="PCA", label="Map", scale=2, info=_kinds_info())
            self.points = gr.Slider(100, MAX_MAP_POINTS, value=MAP_POINTS, step=100, label="Points on the map",
                                    scale=2)
            self.map_button = gr.Button("Show map", variant="primary", scale=1)
        self.plot = gr.ScatterPlot(x="x", y="y", color="label", label="Embedding map",
                                   tooltip=["path", "label"], elem_id="explore-map")
        self.map_job, self.map_timer = gr.State(None), gr.Timer(1.0, active=False)
        gr.Markdown("**Near duplicates** — pairs whose embeddings have cosine similarity above the threshold "
                    "(nearest-neighbour search in batches).")
        with gr.Row():
            self.threshold = gr.Slider(0.0, 1.0, value=round(calibrated, 3), step=0.005, scale=3,
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
        self.map_button.click(self.map, [self.index, self.points, self.kind], [self.plot, self.map_job, self.map_timer],
                              api_visibility="private")
        self.map_timer.tick(self.tick, [self.map_job], [self.plot, self.map_job, self.map_timer],
                            api_visibility="private", show_progress="hidden")
        self.pairs_button.click(self.near_duplicates, [self.index, self.threshold, self.neighbours],
                                [self.summary, self.pairs, self.gallery], api_visibility="private")


def _kinds_info() -> str:
    """The map kinds' note: which need a package not installed here, and how to get it."""
    missing = [f"{kind}: {k.missing()}" for kind, k in MAPS.items() if k.missing()]
    return "; ".join(missing) or "PCA at once; t-SNE computed in the background (PCA shown meanwhile)"
