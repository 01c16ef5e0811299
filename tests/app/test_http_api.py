"""``POST /api/search`` over real HTTP: the page's answers as plain JSON, and the page's refusals as 4xx JSON."""

from __future__ import annotations

import httpx
import pytest

from retrieval.synthetic import make_collection

from .app_server import free_port, start_app

USER, PASSWORD = "ann", "open sesame"


@pytest.fixture(scope="module")
def running_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("api"), n_classes=3, per_class=3, size=32)
    yield app
    app.demo.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """An app behind a login (as one listening beyond loopback must be)."""
    from app.ui import launch
    from retrieval.workspace import Workspace

    root = tmp_path_factory.mktemp("api-login")
    images = make_collection(root / "photos", n_classes=2, per_class=2, size=16, seed=2)
    ws = Workspace(root / "indexes")
    ws.build(root / "photos", "pixels", "px", progress=False)
    demo = launch(workspace=ws, port=free_port(), block=False, auth=f"{USER}:{PASSWORD}", runs_dir=root / "runs")
    yield demo, images
    demo.close()


def _post(url: str, files: dict | None = None, data: dict | None = None, **kwargs) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=300, trust_env=False, follow_redirects=False) as http:
        return http.post("api/search", files=files, data=data, **kwargs)


def _search(url: str, image: bytes, index: str, k="3", **kwargs) -> httpx.Response:
    return _post(url, files={"image": ("q.png", image, "image/png")}, data={"index": index, "k": k}, **kwargs)


@pytest.mark.parametrize("index", ["pixels", "random"])
def test_the_results_are_those_of_workspace_search(running_app, index):
    query = running_app.images[4]
    resp = _search(running_app.url, query.read_bytes(), index, k="5")

    assert resp.status_code == 200, resp.text
    ws = running_app.demo.lookalike.ctx.ws
    assert resp.json() == [r.to_json() for r in ws.search(index, str(query), k=5)]
    assert resp.json()[0]["path"] == query.relative_to(running_app.collection).as_posix()
    assert [r["rank"] for r in resp.json()] == [1, 2, 3, 4, 5]


def test_a_file_that_is_not_an_image_is_refused_with_the_reason(running_app):
    resp = _search(running_app.url, b"this is not an image", "pixels")
    assert resp.status_code == 422
    assert resp.json()["error"].startswith("cannot use that image:")


def test_an_unknown_index_is_refused_with_the_available_names(running_app):
    resp = _search(running_app.url, running_app.images[0].read_bytes(), "nope")
    assert resp.status_code == 404
    assert resp.json() == {"error": "no index named 'nope'; available: pixels, random"}


@pytest.mark.parametrize("k", ["0", "101", "ten"])
def test_k_out_of_range_is_refused(running_app, k):
    resp = _search(running_app.url, running_app.images[0].read_bytes(), "pixels", k=k)
    assert resp.status_code == 400
    assert "k must be" in resp.json()["error"]


def test_missing_fields_are_named(running_app):
    image = running_app.images[0].read_bytes()
    no_image = _post(running_app.url, files={"other": ("x", b"x")}, data={"index": "pixels"})
    no_index = _post(running_app.url, files={"image": ("q.png", image, "image/png")})
    not_a_form = _post(running_app.url, json={"index": "pixels"})
    assert (no_image.status_code, no_index.status_code, not_a_form.status_code) == (400, 400, 400)
    assert "'image'" in no_image.json()["error"] and "'index'" in no_index.json()["error"]


def test_a_path_on_the_server_is_not_a_query(running_app):
    """The page takes only uploads; a path (of a collection file or any other) sent as the image is refused."""
    for path in (str(running_app.images[0]), "/etc/passwd"):
        resp = _post(running_app.url, data={"image": path, "index": "pixels", "k": "3"})
        assert resp.status_code == 400
        assert "uploaded as a file" in resp.json()["error"]


def test_without_the_login_nothing_is_answered(guarded):
    demo, images = guarded
    resp = _search(demo.local_url, images[0].read_bytes(), "px")
    wrong = _search(demo.local_url, images[0].read_bytes(), "px", auth=(USER, "wrong"))
    assert (resp.status_code, wrong.status_code) == (401, 401)
    assert "log in" in resp.json()["error"] and resp.headers["www-authenticate"].startswith("Basic")


def test_with_the_login_it_answers_basic_credentials_and_the_page_session(guarded):
    demo, images = guarded
    rel = images[1].relative_to(images[1].parents[1]).as_posix()
    basic = _search(demo.local_url, images[1].read_bytes(), "px", auth=(USER, PASSWORD))
    assert basic.status_code == 200 and basic.json()[0]["path"] == rel
    with httpx.Client(base_url=demo.local_url, timeout=300, trust_env=False) as http:
        assert http.post("login", data={"username": USER, "password": PASSWORD}).status_code == 200
        session = http.post("api/search", files={"image": ("q.png", images[1].read_bytes(), "image/png")},
                            data={"index": "px", "k": "2"})
    assert session.status_code == 200 and session.json()[0]["path"] == rel


def test_simultaneous_calls_all_get_their_own_answer(running_app):
    """More calls at once than searches may run (serving.CONCURRENCY): the rest wait, none fails or mixes up."""
    from concurrent.futures import ThreadPoolExecutor

    queries = running_app.images[:6]
    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(pool.map(lambda q: _search(running_app.url, q.read_bytes(), "pixels", k="1"), queries))
    assert [a.status_code for a in answers] == [200] * len(queries)
    assert [a.json()[0]["path"] for a in answers] == [q.relative_to(running_app.collection).as_posix()
                                                      for q in queries]
