"""What the tabs of one running UI share, and the one shape every tab has.

An :class:`AppContext` holds everything a running app shares between requests — the workspace with its loaded
encoders and indexes, the background :class:`~app.jobs.JobManager`, what may be served, the index pickers of the
page — so two apps in one process never share state. Each tab (``app/tabs/``) is a :class:`Tab` over it: its
handlers, its :meth:`~Tab.layout` and its :meth:`~Tab.wire` (the events of its own components), side by side.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from retrieval.errors import BadImageError, LookalikeError

from .access import FolderRoots
from .jobs import JobManager
from .opening import Opening
from .serving import Serving, file_url

if TYPE_CHECKING:
    from retrieval.thumbnails import ThumbnailCache
    from retrieval.workspace import Result, Workspace

MAX_K = 100
THUMBNAIL_THREADS = 4  # thumbnails made at once for one gallery
NO_INDEX = ("No index yet — build one in the Indexes tab or run "
            "`lookalike index build DIR --encoder pixels --name NAME`.")


def user_errors(fn: Callable) -> Callable:
    """Turn Lookalike's own errors into ``gr.Error`` (a message in the page, no stack trace)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except BadImageError as exc:
            raise gr.Error(f"Cannot use that image: {exc.reason}. Upload a JPEG, PNG, WebP, HEIC, AVIF, BMP, TIFF "
                           "or GIF file.") from None
        except LookalikeError as exc:
            raise gr.Error(str(exc)) from None

    return wrapper


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def parse_k(k: Any) -> int:
    """The number of results asked for, as a whole number from 1 to :data:`MAX_K`."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise gr.Error(f"k must be a whole number, got {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise gr.Error(f"k must be between 1 and {MAX_K}")
    return k


class IndexPickers:
    """Every index dropdown of the page, whichever tab it is in, given new choices together.

    Tabs :meth:`add` their pickers while laid out; the updates come in the order they were added, one per picker.
    A single picker keeps its choice while that index exists (else takes the first); a multiple one keeps the
    chosen indexes that still exist (else takes all).
    """

    def __init__(self, names: Callable[[], list[str]]):
        self._names = names
        self.components: list[gr.Dropdown] = []

    def add(self, dropdown: gr.Dropdown) -> gr.Dropdown:
        self.components.append(dropdown)
        return dropdown

    def refresh(self, *values) -> tuple:
        """New choices for every picker, keeping each current choice (``values``, in order) while it exists."""
        names = self._names()
        out = []
        for picker, value in zip(self.components, values):
            if picker.multiselect:
                kept = [n for n in (value or []) if n in names]
                out.append(gr.Dropdown(choices=names, value=kept or names, multiselect=True))
            else:
                out.append(gr.Dropdown(choices=names, value=value if value in names else (names[0] if names else None)))
        return tuple(out)

    def select(self, name: str) -> tuple:
        """New choices for every picker, with the new index ``name`` chosen in each single one."""
        return self.refresh(*(None if p.multiselect else name for p in self.components))

    def unchanged(self) -> tuple:
        return (gr.skip(),) * len(self.components)

    def refresh_on(self, trigger: Callable) -> None:
        """Refresh every picker when ``trigger`` (an event listener such as ``button.click``) fires."""
        trigger(self.refresh, self.components, self.components, api_visibility="private")


@dataclass
class AppContext:
    """What one running UI shares between requests."""

    ws: "Workspace"
    jobs: JobManager
    serving: Serving  # what may be served
    examples: list[str]  # example query images
    train_dirs: list[str]  # folders offered for training and indexing
    runs_dir: Path  # where trainings write their runs
    folders: FolderRoots = field(default_factory=lambda: FolderRoots(None))  # what the page may index or train on
    opening: Opening = field(default_factory=Opening)  # the indexes the pickers open on
    pickers: IndexPickers = field(init=False)
    thumbs: "ThumbnailCache" = field(init=False)
    scorecards: Any = field(init=False, default=None)  # app.scorecards.Scorecards, made by the first tab showing it

    def __post_init__(self):
        from retrieval.thumbnails import ThumbnailCache, thumbnail_dir

        self.examples = [str(p) for p in self.examples]
        self.train_dirs = [str(p) for p in self.train_dirs]
        self.runs_dir = Path(self.runs_dir)
        self.pickers = IndexPickers(self.index_names)
        self.thumbs = ThumbnailCache(thumbnail_dir(self.ws.root))

    def index_names(self) -> list[str]:
        return [m["name"] for m in self.ws.list()]

    def collection_roots(self) -> list[str]:
        return list(dict.fromkeys(str(Path(m["root"]).resolve()) for m in self.ws.list()))

    def require_index(self, name: str | None) -> str:
        """``name`` if it is an index, else a ``gr.Error`` saying what to do."""
        names = self.index_names()
        if not names:
            raise gr.Error(NO_INDEX)
        if not name:
            raise gr.Error("Choose an index first.")
        if name not in names:
            raise gr.Error(f"No index named {name!r}; available: {', '.join(names)}.")
        return name

    def thumbnail(self, name: str, rel_path: str) -> str:
        """The thumbnail of an item of index ``name`` (refusing anything that is not one), as a path to serve.

        A file that no longer decodes is served as it is (the browser shows what it can; a refresh drops it)."""
        path = self.ws.resolve(name, rel_path)
        try:
            return str(self.thumbs.get(path))
        except (BadImageError, OSError):
            return self.serving.servable(path)

    def gallery(self, name: str, results: list["Result"]) -> list[tuple[str, str]]:
        """(thumbnail, "score · path") per result, as a ``gr.Gallery`` shows them; missing thumbnails are made a
        few at a time (decoding releases the GIL)."""
        with ThreadPoolExecutor(THUMBNAIL_THREADS) as pool:
            thumbs = list(pool.map(lambda r: self.thumbnail(name, r.path), results))
        return [(thumb, f"{r.score:.3f} · {r.path}") for thumb, r in zip(thumbs, results)]

    def original(self, name: str, rel_path: str) -> tuple[str, str]:
        """(servable path of the full picture, markdown naming it: path, size, dimensions, a link to open it)."""
        from retrieval.imageio import probe_image

        path = self.ws.resolve(name, rel_path)
        served = self.serving.servable(path)
        try:
            width, height, _ = probe_image(path)
            dims = f" · {width}×{height}"
        except BadImageError:
            dims = ""
        link = file_url(served)
        return served, (f"<b>{html.escape(rel_path)}</b> · {human_bytes(path.stat().st_size)}{dims} · "
                        f"<a href='{html.escape(link, quote=True)}' target='_blank'>open the full picture</a>")

    def sweep_thumbnails(self) -> int:
        """Drop the thumbnails of files that are no longer items of any index (see ``ThumbnailCache.sweep``)."""
        live = []
        for m in self.ws.list():
            try:
                root = Path(m["root"])
                live.extend(root / p for p in self.ws.store(m["name"]).paths())
            except LookalikeError:
                continue
        return self.thumbs.sweep(live)


class Tab:
    """One tab of the page: its handlers, then :meth:`layout` and :meth:`wire`.

    :meth:`layout` runs inside the tab's ``gr.Tab`` and keeps the components its events need on ``self``;
    :meth:`wire` runs once every tab is laid out (so an event may refresh the index pickers of other tabs) and
    connects those components to this tab's handlers. Events are private unless they are the documented API.
    """

    title: str = ""
    id: str = ""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def layout(self) -> None:
        raise NotImplementedError

    def wire(self, page: gr.Blocks) -> None:
        raise NotImplementedError
