"""What the web UI's server may read and hand out, and how it is started.

* Queries come in undecoded (events run with ``preprocess=False``): :func:`query_source` turns the image input's
  payload into a file path inside Gradio's upload folder, or bytes, and refuses anything else.
* Results go out as paths :class:`Serving` may serve: files under the collection roots of the indexes that existed
  at launch (the ``allowed_paths`` of :func:`allowed_paths`), or copies in Gradio's upload folder for collections
  indexed later.
* :func:`serve` starts the server with the safe settings: 127.0.0.1 unless told otherwise, no share link, a login
  when it is reachable from elsewhere (:mod:`app.access`), uploads capped at :data:`MAX_UPLOAD`, no internal errors
  in the page, SIGTERM stopping it like Ctrl-C.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from retrieval.errors import BadImageError, LookalikeError

from .jobs import JobManager

if TYPE_CHECKING:
    from retrieval.workspace import Workspace

MAX_UPLOAD_MB = 20
CONCURRENCY = 2  # events (and /api/search calls) run at once; more wait their turn
MAX_UPLOAD = f"{MAX_UPLOAD_MB}mb"  # as Gradio takes it
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20  # as Gradio reads MAX_UPLOAD


def upload_folder() -> Path:
    """Gradio's upload folder, where uploads, webcam shots, examples and clicked results land."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def query_source(image: Any, upload_dir: str | Path | None = None) -> str | bytes | None:
    """The query as the image input sends it (events run with ``preprocess=False``) → a file path or bytes.

    Gradio's own preprocessing opens every upload with Pillow before the handler runs, so a broken or non-image
    file would fail with Pillow's exception rather than Lookalike's reason; decoding (EXIF, modes, size limit)
    is the retrieval package's job. A path is only accepted inside Gradio's upload folder (``upload_dir``), where
    uploads, webcam shots, examples and clicked results all land: Gradio checks file payloads marked as such, but
    a bare ``{"path": …}`` sent to the API would otherwise name any file on the server.
    """
    if image is None:
        return None
    if isinstance(image, dict):
        if not image.get("path"):
            url = image.get("url") or ""
            if url.startswith("data:") and "," in url:
                try:
                    return base64.b64decode(url.split(",", 1)[1], validate=False)
                except (ValueError, binascii.Error):
                    raise BadImageError("not an image") from None
            return None
        image = image["path"]
    if isinstance(image, bytes):
        return image or None
    if not isinstance(image, (str, Path)) or not str(image):
        return None
    refusal = LookalikeError("the query image must be uploaded to this app (upload, paste or webcam)")
    try:
        path = Path(image).resolve()  # ValueError for an embedded NUL, OSError for a name the OS rejects
    except (ValueError, OSError):
        raise refusal from None
    if not path.is_relative_to(Path(upload_dir).resolve() if upload_dir is not None else upload_folder()):
        raise refusal
    return str(path)


def require_image(image: Any) -> str | bytes:
    """:func:`query_source`, refusing a missing query with what to do."""
    source = query_source(image)
    if not source:
        raise gr.Error("Upload, paste or pick a query image first.")
    return source


def file_url(path: str | Path) -> str:
    """The page-relative URL at which Gradio serves ``path`` (which must be servable: see :class:`Serving`)."""
    import urllib.parse

    return "gradio_api/file=" + urllib.parse.quote(str(path))


def allowed_paths(workspace: "Workspace", examples: list[str] | None = None) -> list[str]:
    """What the server may read: the collection roots of the indexes that exist now, the example images, and the
    thumbnail folder (:mod:`retrieval.thumbnails`: it only ever holds thumbnails of items of an index)."""
    from retrieval.thumbnails import thumbnail_dir

    roots = [str(Path(m["root"]).resolve()) for m in workspace.list()]
    thumbs = thumbnail_dir(workspace.root)
    try:
        thumbs.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only indexes folder: results are then served as they are (see AppContext.thumbnail)
        pass
    return list(dict.fromkeys(roots + [str(Path(p).resolve()) for p in (examples or [])] + [str(thumbs.resolve())]))


class Serving:
    """Turns an item of an index into a path the server may hand out."""

    def __init__(self, allowed: list[str] | None = None):
        self.allowed_paths: list[str] = list(allowed or [])  # the folders given to the server at launch
        self._roots = [Path(p).resolve() for p in self.allowed_paths]

    def servable(self, path: Path) -> str:
        """A path Gradio will serve for ``path`` (an item already checked by ``Workspace.resolve``).

        Items under a launch-time collection root are served as they are. Items of a collection indexed while the
        app runs are copied into an app folder inside Gradio's upload folder instead of widening ``allowed_paths``
        at run time: a folder picked in the page must not make every file under it downloadable.
        """
        path = path.resolve()
        if any(path.is_relative_to(root) for root in self._roots):
            return str(path)
        st = path.stat()
        key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
        dest = upload_folder() / "lookalike-results" / key / path.name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return str(dest)


def serve(demo: gr.Blocks, jobs: JobManager, allowed: list[str], *, host: str, port: int | None, share: bool,
          block: bool, css: str = "", on_close: Callable[[], Any] | None = None,
          auth: list[tuple[str, str]] | None = None, routes: list | None = None) -> None:
    """Start the server for ``demo``, which may read only ``allowed``, behind ``auth`` if given (see
    :func:`app.ui.launch`; :func:`app.access.require_login` has already refused an exposed server without it).
    ``routes`` (FastAPI routes, :func:`app.api.routes`) are served by the same app as the page."""
    demo.queue(default_concurrency_limit=CONCURRENCY)
    # A blocking server stops on Ctrl-C; make SIGTERM (service managers, `docker stop`) do the same, so running
    # trainings get to save a checkpoint below instead of dying mid-step.
    previous = None
    if block and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed, auth=auth or None,
                    max_file_size=MAX_UPLOAD, prevent_thread_lock=not block, show_error=False, ssr_mode=False,
                    quiet=not block, css=css, footer_links=["api"],
                    app_kwargs={"routes": list(routes or [])})
        if block:
            if on_close is not None:
                on_close()
            print("stopping background jobs (trainings save a checkpoint first)…", file=sys.stderr)
            jobs.shutdown(timeout=120)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
