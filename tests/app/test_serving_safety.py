"""How the UI is served, checked without opening a port: this machine only, no share link, uploads capped, errors
without internals, only the collection roots readable, and no server beyond loopback without a login; the CLI
passes the same safe defaults."""

from __future__ import annotations

import gradio as gr
import pytest

import app.ui as ui
from app import serving
from app.cli import build_parser, main
from retrieval.errors import LookalikeError
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
    assert kwargs["max_file_size"] == serving.MAX_UPLOAD == "20mb"
    assert kwargs["show_error"] is False


def test_only_the_indexed_collection_the_examples_and_the_thumbnails_may_be_served(launched):
    kwargs, collection, example = launched
    thumbnails = collection.parent / "indexes" / ".thumbnails"  # holds only thumbnails of items (test_thumbnails)
    assert kwargs["allowed_paths"] == [str(collection.resolve()), str(example.resolve()), str(thumbnails.resolve())]
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


@pytest.mark.parametrize("host, share", [("0.0.0.0", False), ("192.168.1.20", False), ("::", False),
                                         ("photos.example", False), ("127.0.0.1", True)])
def test_a_server_reachable_from_elsewhere_refuses_to_start_without_a_login(tmp_path, monkeypatch, host, share):
    started = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: started.append(kwargs))
    monkeypatch.delenv("LOOKALIKE_AUTH", raising=False)
    with pytest.raises(LookalikeError, match="without a login.*--auth USER:PASSWORD"):
        ui.launch(workspace=Workspace(tmp_path / "indexes"), host=host, share=share, block=False)
    assert not started
    assert main(["app", "--indexes", str(tmp_path / "indexes"), "--host", host] + (["--share"] if share else [])) == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_login(host):
    from app.access import exposed, require_login

    assert not exposed(host, share=False)
    require_login(host, False, None)


def test_credentials_come_from_the_flag_a_file_or_the_environment(tmp_path, monkeypatch, launched):
    from app.access import login

    kwargs, _, _ = launched
    assert kwargs["auth"] is None  # a loopback server without credentials has no login
    secrets = tmp_path / "users.txt"
    secrets.write_text("# who may log in\nann:open sesame\nbob:pa:ss\n")
    assert login("ann:pw") == [("ann", "pw")]
    assert login(f"@{secrets}") == [("ann", "open sesame"), ("bob", "pa:ss")]
    assert login(None, {"LOOKALIKE_AUTH": "cy:pw"}) == [("cy", "pw")]
    assert login(None, {}) is None
    for bad, message in (("nopassword", "expected USER:PASSWORD"), (":pw", "expected USER:PASSWORD"),
                         (f"@{tmp_path / 'missing.txt'}", "cannot read the credentials file")):
        with pytest.raises(LookalikeError, match=message):
            login(bad)


def test_the_cli_passes_the_login_and_the_allowed_folders(tmp_path, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(ui, "launch", lambda **kwargs: seen.update(kwargs))
    assert main(["app", "--indexes", str(tmp_path), "--host", "0.0.0.0", "--auth", "ann:pw",
                 "--allow-dir", "/srv/a", "--allow-dir", "/srv/b"]) == 0
    assert (seen["auth"], seen["allow_dirs"]) == ("ann:pw", ["/srv/a", "/srv/b"])
    assert main(["app", "--indexes", str(tmp_path)]) == 0
    assert (seen["auth"], seen["allow_dirs"]) == (None, None)
    demo = build_parser().parse_args(["demo", "--auth", "@users.txt", "--allow-dir", "/srv/a"])
    assert (demo.auth, demo.allow_dir) == ("@users.txt", ["/srv/a"])
