"""Concurrent use of the web UI: many simultaneous /search calls, and searches while the index is refreshed."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file

from retrieval.synthetic import make_collection
from retrieval.workspace import Workspace

from .app_server import RunningApp, free_port

N_THREADS = 16


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(root, app): 4 classes × 4 images of 32 px indexed with ``pixels`` under ``root/indexes``, served locally."""
    from app.ui import launch

    root = tmp_path_factory.mktemp("concurrency")
    collection = root / "photos"
    images = make_collection(collection, n_classes=4, per_class=4, size=32, seed=3)
    ws = Workspace(root / "indexes")
    ws.build(collection, "pixels", "pixels", progress=False)  # only the cheap index: the app starts fast
    demo = launch(workspace=ws, port=free_port(), block=False, examples=[str(images[0])],
                  train_dirs=[str(collection)], runs_dir=root / "runs")
    app = RunningApp(demo.local_url, collection, images, ("pixels",), demo)
    yield root, app
    app.demo.close()


def _client(url: str) -> Client:
    return Client(url, download_files=False, verbose=False)


def _search(client: Client, app, query, k: int = 3):
    _, results = client.predict(handle_file(str(query)), "pixels", k, api_name="/search")
    return results


def _assert_first_is(app, query, results):
    assert results, f"no results for {query}"
    assert results[0]["path"] == query.relative_to(app.collection).as_posix()
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("shared", [False, True], ids=["client-per-thread", "one-shared-client"])
def test_sixteen_concurrent_searches_each_find_their_own_image(served, shared):
    _, app = served
    queries = app.images[:N_THREADS]
    assert len(queries) == N_THREADS
    shared_client = _client(app.url) if shared else None
    start = threading.Barrier(N_THREADS, timeout=60)

    def one(query):
        client = shared_client or _client(app.url)
        start.wait()  # fire all 16 requests together
        return query, _search(client, app, query)

    with ThreadPoolExecutor(N_THREADS) as pool:
        outcomes = [f.result(timeout=120) for f in [pool.submit(one, q) for q in queries]]
    assert len(outcomes) == N_THREADS
    for query, results in outcomes:
        _assert_first_is(app, query, results)


def test_searches_keep_working_while_the_index_is_refreshed(served, tmp_path):
    root, app = served
    stop = threading.Event()
    errors: list[BaseException] = []
    refreshes, searches = [0], [0]
    count_lock = threading.Lock()

    def refresher():
        ws = Workspace(root / "indexes")
        i = 0
        try:
            while not stop.is_set():
                # a new image (written outside, then moved in whole), then a changed mtime of an existing one
                staging = tmp_path / f"new{i}"
                made = make_collection(staging, n_classes=4, per_class=1, size=32, seed=3, draw_seed=1000 + i)
                src = made[i % len(made)]
                dst = app.collection / src.parent.name / f"added_{i}{src.suffix}"
                shutil.copyfile(src, staging / "tmp")
                os.replace(staging / "tmp", dst)
                ws.refresh("pixels", progress=False)
                touched = app.images[i % len(app.images)]
                t = time.time() + i + 1
                os.utime(touched, (t, t))
                ws.refresh("pixels", progress=False)
                refreshes[0] += 1
                i += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    def searcher(queries):
        try:
            client = _client(app.url)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not errors:
                for q in queries:
                    _assert_first_is(app, q, _search(client, app, q))
                    with count_lock:
                        searches[0] += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    ref = threading.Thread(target=refresher, daemon=True)
    ref.start()
    workers = [threading.Thread(target=searcher, args=(app.images[j::4],), daemon=True) for j in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    stop.set()
    ref.join(timeout=120)
    assert not ref.is_alive() and not any(w.is_alive() for w in workers), "a thread hung"
    if errors:
        raise errors[0]
    assert refreshes[0] >= 1, "the index was never refreshed during the searches"
    assert searches[0] >= 4
    # after it all the index holds the added images and still finds each query first
    final = _client(app.url)
    for q in app.images[::5]:
        _assert_first_is(app, q, _search(final, app, q))
