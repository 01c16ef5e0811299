"""Safe beyond this machine, over real HTTP: a login is required, and the page indexes and trains only on folders
under the roots given at launch — not outside them, not by ``..``, not through a symbolic link out of one.

The Indexes and Train events are private (not in the API), but the browser calls them through the queue like any
client could, so these tests call them the same way: ``POST /gradio_api/queue/join`` with the event's index.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
import uuid
from typing import Iterator

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError

from retrieval.synthetic import make_collection

from .app_server import free_port

USER, PASSWORD = "ann", "open sesame"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """An app with a login, allowed to index only under ``allowed/``; ``outside/`` holds images too."""
    from app.ui import launch
    from retrieval.workspace import Workspace

    root = tmp_path_factory.mktemp("access")
    allowed, outside = root / "allowed", root / "outside"
    images = make_collection(allowed / "photos", n_classes=2, per_class=2, size=16, seed=2)
    make_collection(outside / "private", n_classes=2, per_class=2, size=16, seed=4)
    (allowed / "way-out").symlink_to(outside / "private", target_is_directory=True)
    ws = Workspace(root / "indexes")
    ws.build(allowed / "photos", "pixels", "px", progress=False)
    demo = launch(workspace=ws, port=free_port(), block=False, auth=f"{USER}:{PASSWORD}", allow_dirs=[str(allowed)],
                  runs_dir=root / "runs")
    yield demo, root, images
    demo.close()


@contextlib.contextmanager
def _http(url: str, logged_in: bool) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=300, trust_env=False, follow_redirects=False) as client:
        if logged_in:
            resp = client.post("login", data={"username": USER, "password": PASSWORD})
            assert resp.status_code == 200, resp.text
        yield client


def _call_event(demo, http: httpx.Client, fn_name: str, data: list) -> dict:
    """Run one event of the page as the browser does; returns the final queue message."""
    fn_index = next(i for i, f in demo.fns.items() if getattr(f.fn, "__name__", "") == fn_name)
    session = uuid.uuid4().hex
    resp = http.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                     "event_data": None, "trigger_id": None})
    assert resp.status_code == 200, resp.text
    with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("the event never completed")


def test_without_a_login_nothing_is_answered(guarded):
    demo, _, images = guarded
    with _http(demo.local_url, logged_in=False) as http:
        assert http.get("gradio_api/file=" + urllib.parse.quote(str(images[0]))).status_code in (401, 403)
        assert http.post("gradio_api/call/search", json={"data": [None, "px", 2]}).status_code == 401
        assert http.post("gradio_api/queue/join", json={"data": [], "fn_index": 0,
                                                         "session_hash": "x"}).status_code == 401
        assert http.post("login", data={"username": USER, "password": "wrong"}).status_code == 400
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(demo.local_url, verbose=False)


def test_with_the_login_search_works_and_originals_are_served(guarded):
    demo, _, images = guarded
    client = Client(demo.local_url, auth=(USER, PASSWORD), download_files=False, verbose=False)
    _, results = client.predict(handle_file(str(images[1])), "px", 2, api_name="/search")
    assert results[0]["path"] == images[1].relative_to(images[1].parents[1]).as_posix()
    with _http(demo.local_url, logged_in=True) as http:
        assert http.get("gradio_api/file=" + urllib.parse.quote(str(images[0]))).status_code == 200


def _refusals(root) -> dict[str, str]:
    """Folder given to the page → the part of the refusal that says why."""
    allowed = root / "allowed"
    return {str(root / "outside" / "private"): "is outside the folders this app may",
            str(allowed) + "/../outside/private": "is outside the folders this app may",
            str(allowed / "way-out"): f"(it leads to {os.path.realpath(root / 'outside' / 'private')})",
            "/": "is outside the folders this app may"}


@pytest.mark.parametrize("case", range(4))
def test_indexing_a_folder_outside_the_allowed_roots_is_refused(guarded, case):
    demo, root, _ = guarded
    folder, why = list(_refusals(root).items())[case]
    with _http(demo.local_url, logged_in=True) as http:
        msg = _call_event(demo, http, "build", [folder, "pixels", f"stolen{case}", "auto", False])
    assert msg["success"] is False
    assert why in msg["output"]["error"] and "--allow-dir" in msg["output"]["error"]
    assert f"stolen{case}" not in [m["name"] for m in demo.lookalike.ctx.ws.list()]


@pytest.mark.parametrize("case", range(4))
def test_training_on_a_folder_outside_the_allowed_roots_is_refused(guarded, case):
    demo, root, _ = guarded
    folder, why = list(_refusals(root).items())[case]
    app = demo.lookalike
    with _http(demo.local_url, logged_in=True) as http:
        msg = _call_event(demo, http, "start", [folder, *app.train.form()])
    assert msg["success"] is False
    assert why in msg["output"]["error"] and "may train on" in msg["output"]["error"]
    assert app.jobs.latest("train") is None


def test_a_folder_under_an_allowed_root_is_indexed(guarded):
    demo, root, _ = guarded
    with _http(demo.local_url, logged_in=True) as http:
        msg = _call_event(demo, http, "build", [str(root / "allowed" / "photos") + "/../photos", "pixels", "again",
                                                "auto", False])
    assert msg["success"] is True, msg
    assert demo.lookalike.ctx.ws.store("again").count == 4


def test_links_inside_an_allowed_root_do_not_lead_a_build_out_of_it(guarded):
    """``allowed/`` holds a link to the outside folder, and a file link to an outside picture: the page's build of
    ``allowed/`` indexes neither and says why; the same folder built outside the app follows both."""
    from retrieval.workspace import Workspace

    demo, root, images = guarded
    outside_picture = next(p for p in sorted((root / "outside" / "private").rglob("*")) if p.is_file())
    leak = root / "allowed" / "photos-more"
    leak.mkdir(exist_ok=True)
    (leak / f"leak{outside_picture.suffix}").symlink_to(outside_picture)
    with _http(demo.local_url, logged_in=True) as http:
        msg = _call_event(demo, http, "build", [str(root / "allowed"), "pixels", "whole", "auto", False])
    assert msg["success"] is True, msg
    store = demo.lookalike.ctx.ws.store("whole")
    assert store.count == len(images)  # the real photos only
    assert not any(p.startswith(("way-out", "photos-more")) for p in store.paths())
    reasons = {s.path: s.reason for s in store.skipped()}
    assert reasons == {f"photos-more/leak{outside_picture.suffix}": "link out of the allowed folders",
                       "way-out": "link out of the allowed folders"}
    report = Workspace(root / "indexes-cli").build(root / "allowed", "pixels", "cli", progress=False)
    assert report.count == len(images) + 1 + 4  # the command line follows links, as it always has
