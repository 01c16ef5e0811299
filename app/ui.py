"""The Lookalike web UI (Gradio): Search, Compare, Train, Indexes and Explore tabs over one :class:`Workspace`.

A :class:`LookalikeApp` is one running UI: the :class:`~app.context.AppContext` its requests share and its five
tabs (``app/tabs/``, one module each with its handlers, layout and event wiring). :func:`build_app` lays the page
out; :func:`launch` serves it (what may be served, and how: :mod:`app.serving`). Importing this module loads no
model and opens no index.

Named API endpoints, for ``gradio_client.Client(url, download_files=False)``:

* ``/search`` (image, index, k) → (gallery, ``[{"rank", "path", "score"}, …]``)
* ``/compare`` (image, indexes, k) → ``{index_name: [{"rank", "path", "score"}, …]}``

and, beside them, a plain JSON endpoint for scripts (:mod:`app.api`): ``POST /api/search`` with the form fields
``image`` (a file), ``index`` and ``k`` → ``[{"rank", "path", "score"}, …]``.

Serving safety: results are returned as absolute paths produced by :meth:`Workspace.resolve` (which refuses anything
that is not an item of the index); the server may only read files under the collection roots of the indexes that
existed at launch (``allowed_paths``) and Gradio's own upload cache, where results of collections indexed later are
copied; every image a gallery shows is a thumbnail (:mod:`retrieval.thumbnails`, under ``INDEXES/.thumbnails``),
the full picture one click away. It binds 127.0.0.1 unless told otherwise; reachable from elsewhere, it requires a
login and indexes or trains only on folders under the roots given at launch (:mod:`app.access`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from .access import Credentials, FolderRoots, exposed, login, require_login
from .api import routes as api_routes
from .context import AppContext, Tab
from .jobs import JobManager
from .opening import Opening
from .serving import CONCURRENCY, MAX_UPLOAD_BYTES, Serving, allowed_paths, serve
from .tabs.compare import CompareTab
from .tabs.explore import ExploreTab
from .tabs.indexes import IndexesTab
from .tabs.search import SearchTab
from .tabs.sweep import SweepPanel
from .tabs.train import TrainTab

if TYPE_CHECKING:
    from retrieval.workspace import Workspace

__all__ = ["LookalikeApp", "build_app", "launch"]

CSS = """
.lk-progress progress { height: 14px; }
.lk-note { color: var(--body-text-color-subdued); font-size: 0.9em; }
#search-query img, #compare-query img { width: 100%; height: 100%; object-fit: contain; }
"""


class LookalikeApp:
    """One running UI: the context its requests share and its tabs, in page order."""

    def __init__(self, workspace: "Workspace", jobs: JobManager | None = None, examples: list[str] | None = None,
                 train_dirs: list[str] | None = None, runs_dir: str | Path = "runs",
                 allowed_paths: list[str] | None = None, folders: FolderRoots | None = None,
                 opening: Opening | None = None):
        self.ctx = AppContext(workspace, jobs or JobManager(), Serving(allowed_paths), examples or [],
                              train_dirs or [], runs_dir, folders or FolderRoots(None), opening or Opening())
        self.search = SearchTab(self.ctx)
        self.compare = CompareTab(self.ctx)
        self.train = TrainTab(self.ctx)
        self.indexes = IndexesTab(self.ctx)
        self.explore = ExploreTab(self.ctx)
        # panels laid out inside a tab, after its own layout, by tab id
        self.panels: dict[str, tuple[Tab, ...]] = {"train": (SweepPanel(self.ctx),)}

    @property
    def jobs(self) -> JobManager:
        return self.ctx.jobs

    @property
    def tabs(self) -> tuple[Tab, ...]:
        return self.search, self.compare, self.train, self.indexes, self.explore

    def page(self) -> gr.Blocks:
        """Lay out every tab, then wire every tab's events (so one may refresh another's index pickers)."""
        with gr.Blocks(title="Lookalike", analytics_enabled=False) as page:
            page.lookalike = self  # for tests and embedding callers
            gr.Markdown("## Lookalike — find similar images in your own collection")
            with gr.Tabs():
                for tab in self.tabs:
                    with gr.Tab(tab.title, id=tab.id):
                        tab.layout()
                        for panel in self.panels.get(tab.id, ()):
                            panel.layout()
            self.ctx.pickers.refresh_on(page.load)
            for tab in (*self.tabs, *(p for panels in self.panels.values() for p in panels)):
                tab.wire(page)
            self.search.follow(self.compare.query)  # the query follows the user from Search to Compare
        return page


def build_app(workspace: "Workspace", examples: list[str] | None = None, train_dirs: list[str] | None = None,
              jobs: JobManager | None = None, runs_dir: str | Path = "runs",
              allowed_paths: list[str] | None = None, folders: FolderRoots | None = None,
              opening: Opening | None = None) -> gr.Blocks:
    """Lay out the five tabs over ``workspace`` (the pickers on the indexes ``opening`` prefers, else the first /
    all). Nothing is loaded until a handler runs."""
    return LookalikeApp(workspace, jobs, examples, train_dirs, runs_dir, allowed_paths, folders, opening).page()


def launch(indexes: str | Path = "indexes", host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           examples: list[str] | None = None, workspace: "Workspace | None" = None, jobs: JobManager | None = None,
           block: bool = True, train_dirs: list[str] | None = None, runs_dir: str | Path = "runs",
           background: Callable[[JobManager], Any] | None = None,
           on_close: Callable[[], Any] | None = None, auth: str | Credentials | None = None,
           allow_dirs: list[str] | None = None, opening: Opening | None = None) -> gr.Blocks:
    """Serve the UI on ``host:port`` (this machine only by default).

    Only the collection roots of the indexes that exist now (plus the example images and the thumbnails) may be
    read by the server; results of collections indexed later are served as copies (see
    :meth:`app.serving.Serving.servable`). A server reachable from elsewhere (a host other than loopback, or a
    share link) needs ``auth`` (``USER:PASSWORD``, ``@FILE`` or pairs; else ``LOOKALIKE_AUTH``) and refuses to start
    without it; its pages index and train only under ``allow_dirs`` (default: the collections of the existing
    indexes and ``train_dirs``), as does any server given ``allow_dirs`` (see :mod:`app.access`). Uploads
    are capped at 20 MB. ``background(jobs)``, if given, runs as a job (the demo trains encoders this way);
    ``on_close()`` runs when a blocking server stops (Ctrl-C or SIGTERM), before running jobs are stopped and
    waited for. ``opening`` names the indexes the Search and Compare tabs open on (see
    :class:`app.opening.Opening`; the demo's: :data:`app.demo.OPENING`). With ``block=False`` the server runs in
    a thread, the returned Blocks has ``local_url``, and the caller closes it with ``demo.close()``.
    """
    credentials = login(auth) if auth is None or isinstance(auth, str) else list(auth)
    require_login(host, share, credentials)
    if workspace is None:
        from retrieval.workspace import Workspace

        workspace = Workspace(indexes)
    jobs = jobs if jobs is not None else JobManager()
    allowed = allowed_paths(workspace, examples)
    collections = [m["root"] for m in workspace.list()] + list(train_dirs or [])
    folders = FolderRoots.at_launch(allow_dirs, collections, exposed(host, share))
    if folders.roots is not None:  # and no link inside them leads a build or refresh out of them
        workspace.confine = folders.roots
    demo = build_app(workspace, examples=examples, train_dirs=train_dirs, jobs=jobs, runs_dir=runs_dir,
                     allowed_paths=allowed, folders=folders, opening=opening)
    if background is not None:
        jobs.start("background", "background tasks", lambda job: background(jobs))
    jobs.start("thumbnails", "drop the thumbnails of removed images", lambda job: demo.lookalike.ctx.sweep_thumbnails())
    serve(demo, jobs, allowed, host=host, port=port, share=share, block=block, css=CSS, on_close=on_close,
          auth=credentials, routes=api_routes(workspace, MAX_UPLOAD_BYTES, CONCURRENCY))
    return demo
