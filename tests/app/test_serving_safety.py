"""How the UI is served, checked without opening a port: this machine only, no share link, uploads capped, errors
without internals, and only the collection roots readable; the CLI passes the same safe defaults."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

import app.ui as ui
from app.cli import build_parser, main
from retrieval.synthetic import make_collection
from retrieval.workspace import Workspace


@pytest.fixture
def launched(tmp_path, monkeypatch):
    """(kwargs given to Blocks.launch, collection root, example image) for a default ``ui.launch``."""
    collection = tmp_path / "photos"
    images = make_collection(collection, n_classes=2, per_class=2, size=16, seed=1)
    ws = Workspace(tmp_path / "indexes")
    ws.build(collection, "pixels", "px", progress=False)
    (tmp_path / "later").mkdir()  # a folder that is not indexed: never readable
    seen: dict = {}

    def fake_launch(self, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    example = tmp_path / "example.png"
    example.write_bytes(images[0].read_bytes())
    ui.launch(workspace=ws, block=False, examples=[str(example)], runs_dir=tmp_path / "runs")
    return seen, collection, example


def test_by_default_the_server_listens_on_this_machine_only_without_a_share_link(launched):
    kwargs, _, _ = launched
    assert kwargs["server_name"] == "127.0.0.1"
    assert kwargs["share"] is False


def test_uploads_are_capped_and_internal_errors_are_not_shown(launched):
    kwargs, _, _ = launched
    assert kwargs["max_file_size"] == ui.MAX_UPLOAD == "20mb"
    assert kwargs["show_error"] is False


def test_only_the_indexed_collection_and_the_examples_may_be_served(launched):
    kwargs, collection, example = launched
    assert kwargs["allowed_paths"] == [str(collection.resolve()), str(example.resolve())]
    assert not kwargs.get("blocked_paths")  # nothing is carved out of a wider grant, because nothing wider exists


def test_the_cli_keeps_the_safe_defaults():
    parser = build_parser()
    app = parser.parse_args(["app"])
    assert (app.host, app.share) == ("127.0.0.1", False)
    assert parser.parse_args(["app", "--share"]).share is True
    assert parser.parse_args(["app", "--host", "0.0.0.0"]).host == "0.0.0.0"
    assert parser.parse_args(["demo"]).host == "127.0.0.1"


def test_the_cli_passes_host_and_share_to_the_server(tmp_path, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(ui, "launch", lambda **kwargs: seen.update(kwargs))
    assert main(["app", "--indexes", str(tmp_path)]) == 0
    assert (seen["host"], seen["share"]) == ("127.0.0.1", False)
    assert main(["app", "--indexes", str(tmp_path), "--host", "0.0.0.0", "--share"]) == 0
    assert (seen["host"], seen["share"]) == ("0.0.0.0", True)
