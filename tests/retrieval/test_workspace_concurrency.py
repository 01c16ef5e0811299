"""Many first searches at once (a freshly started app hit by 16 users) load the encoder and open the index once,
not once per request: with a real model, 16 copies at a time would be 16 times its memory."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import retrieval.workspace as workspace_module
from retrieval.index_store import IndexStore
from retrieval.synthetic import make_collection
from retrieval.workspace import Workspace

N = 16


def test_concurrent_first_searches_share_one_encoder_and_one_opened_index(tmp_path, monkeypatch):
    images = make_collection(tmp_path / "photos", n_classes=4, per_class=4, size=16, seed=2)
    Workspace(tmp_path / "indexes").build(tmp_path / "photos", "pixels", "px", progress=False)

    loads, opens = [], []
    real_load, real_open = workspace_module.load_encoder, IndexStore.open.__func__

    def slow_load(spec, **kwargs):
        loads.append(spec)
        threading.Event().wait(0.2)  # a real model takes a while: requests pile up meanwhile
        return real_load(spec, **kwargs)

    def slow_open(cls, *args, **kwargs):
        opens.append(args)
        threading.Event().wait(0.2)
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(workspace_module, "load_encoder", slow_load)
    monkeypatch.setattr(IndexStore, "open", classmethod(slow_open))
    ws = Workspace(tmp_path / "indexes")  # nothing loaded yet
    start = threading.Barrier(N, timeout=60)

    def search(query):
        start.wait()
        return query, ws.search("px", query, k=1)

    with ThreadPoolExecutor(N) as pool:
        outcomes = list(pool.map(search, images[:N]))
    for query, hits in outcomes:
        assert hits[0].path == query.relative_to(tmp_path / "photos").as_posix()
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(loads) == 1 and len(opens) == 1
