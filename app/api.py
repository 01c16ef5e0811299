"""A plain JSON HTTP endpoint beside the page, for scripts: ``POST /api/search``.

    curl -F image=@q.jpg -F index=NAME -F k=10 http://127.0.0.1:7860/api/search
    → [{"rank": 1, "path": "cats/1.jpg", "score": 0.93}, …]  (best first; paths relative to the collection)

It is served by the same FastAPI app Gradio serves the page with (:func:`app.serving.serve` passes
:func:`routes` to it), so it obeys the page's rules: on a server with a login it answers only a logged-in browser
session (Gradio's cookie) or HTTP Basic credentials of the same login (``curl -u USER:PASSWORD``); the query is an
uploaded file (never a path on the server), capped at :data:`app.serving.MAX_UPLOAD`; ``k`` is 1 to
:data:`app.context.MAX_K`; the answer names only items of the index. Errors are ``{"error": message}`` with a 4xx
status: 400 (a missing field, a bad ``k``, a query given as a path), 401 (no login), 404 (unknown index), 411/413
(no length, too large), 422 (a file that is not a usable image).
"""

from __future__ import annotations

import base64
import functools
import binascii
import hmac
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from retrieval.errors import BadImageError, IndexNotFoundError, LookalikeError

from .context import MAX_K

if TYPE_CHECKING:
    from retrieval.workspace import Workspace

SEARCH_PATH = "/api/search"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields, beyond the image itself


class ApiError(Exception):
    """A refusal: its HTTP status and the message the caller gets as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def routes(workspace: "Workspace", max_upload: int, concurrency: int) -> list[APIRoute]:
    """The endpoint's routes over ``workspace``, for the FastAPI app that serves the page; at most ``concurrency``
    searches run at once (as the page's queue runs its events), the others wait."""
    limiter = anyio.CapacityLimiter(concurrency)

    async def search(request: Request) -> JSONResponse:
        try:
            check_login(request)
            image, index, k = await read_form(request, max_upload)
            results = await anyio.to_thread.run_sync(functools.partial(run_search, workspace, image, index, k),
                                                      limiter=limiter)
        except ApiError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        return JSONResponse(results)

    return [APIRoute(SEARCH_PATH, search, methods=["POST"], include_in_schema=False)]


def check_login(request: Request) -> None:
    """Pass a request the page would answer: no login configured, Gradio's session cookie, or HTTP Basic
    credentials of the same login; else a 401."""
    app = request.app
    auth = getattr(app, "auth", None)
    if auth is None:
        return
    cookie = request.cookies.get(f"access-token-{app.cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{app.cookie_id}")
    if cookie and cookie in app.tokens:
        return
    user, password = _basic_credentials(request.headers.get("authorization", ""))
    if user is not None and not callable(auth) and user in auth and hmac.compare_digest(
            password.encode(), str(auth[user]).encode()):
        return
    raise ApiError(401, "log in first: send the app's USER:PASSWORD as HTTP Basic credentials (curl -u)",
                   {"WWW-Authenticate": 'Basic realm="lookalike"'})


def _basic_credentials(header: str) -> tuple[str | None, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, ""
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    return (user, password) if sep else (None, "")


async def read_form(request: Request, max_upload: int) -> tuple[bytes, str, int]:
    """(image bytes, index name, k) from a multipart form, refusing what the page refuses."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise ApiError(411, "send the form with a Content-Length (curl -F does)")
    if int(length) > max_upload + FORM_OVERHEAD:
        raise ApiError(413, f"the upload is larger than {max_upload // 2**20} MB")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (HTTPException, MultiPartException) as exc:  # malformed multipart, too many parts or fields
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise ApiError(400, f"send a multipart form (curl -F image=@FILE -F index=NAME -F k=10): {detail}") from None
    try:
        image = form.get("image")
        if image is None:
            raise ApiError(400, "missing field 'image': upload the query image (-F image=@FILE)")
        if not isinstance(image, UploadFile):
            raise ApiError(400, "the query image must be uploaded as a file (-F image=@FILE), not named by a path")
        data = await image.read(max_upload + 1)
        if len(data) > max_upload:
            raise ApiError(413, f"the upload is larger than {max_upload // 2**20} MB")
        index = form.get("index")
        if not isinstance(index, str) or not index.strip():
            raise ApiError(400, "missing field 'index': name the index to search (-F index=NAME)")
        return data, index.strip(), parse_k(form.get("k", "10"))
    finally:
        await form.close()


def parse_k(value: Any) -> int:
    """``k`` as a whole number from 1 to :data:`MAX_K` (the page's rule), else a 400."""
    try:
        k = int(str(value).strip())
    except ValueError:
        raise ApiError(400, f"k must be a whole number, got {value!r}") from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"k must be between 1 and {MAX_K}")
    return k


def run_search(workspace: "Workspace", image: bytes, index: str, k: int) -> list[dict]:
    """:meth:`Workspace.search` as JSON, its refusals as :class:`ApiError`."""
    if not image:
        raise ApiError(422, "cannot use that image: the file is empty")
    names = [m["name"] for m in workspace.list()]
    if index not in names:
        raise ApiError(404, f"no index named {index!r}; available: {', '.join(names) or 'none'}")
    try:
        return [r.to_json() for r in workspace.search(index, image, k=k)]
    except BadImageError as exc:
        raise ApiError(422, f"cannot use that image: {exc.reason}") from None
    except IndexNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except LookalikeError as exc:
        raise ApiError(400, str(exc)) from None
