"""scan(): every file of a hostile folder becomes an item or a skip with the right reason, deterministically."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from retrieval.collection import Collection, Item, Skipped, scan
from retrieval.errors import LookalikeError
from tests import hostile
from tests.hostile import IGNORED, ITEM, RED


@pytest.fixture
def hostile_dir(tmp_path) -> tuple[Path, dict[str, hostile.Expect]]:
    root = tmp_path / "collection"
    return root, hostile.make_hostile_folder(root, fifo=True)


def test_hostile_folder_outcomes(hostile_dir):
    root, expect = hostile_dir
    col = scan(root)
    items = {it.path for it in col.items}
    skipped = {sk.path: sk.reason for sk in col.skipped}

    assert items == {rel for rel, e in expect.items() if e.scan == ITEM}
    assert set(skipped) == {rel for rel, e in expect.items() if e.scan not in (ITEM, IGNORED)}
    for rel, reason in skipped.items():
        assert reason.startswith(expect[rel].scan), (rel, reason)
    assert not any(p.startswith(".") or "/." in p for p in items | set(skipped))  # hidden stays hidden


def test_specific_reasons_and_items(hostile_dir):
    root, _ = hostile_dir
    col = scan(root)
    skipped = {sk.path: sk.reason for sk in col.skipped}
    assert skipped["bad/empty.jpg"] == "empty file"
    assert skipped["bad/text.png"] == "not an image"
    assert skipped["bad/random.webp"] == "not an image"
    assert skipped["bad/bomb.png"] == "too large: 40000x40000 pixels exceeds limit of 89478485"
    assert skipped["bad/notes.txt"] == "unsupported file type (.txt)"
    paths = [it.path for it in col.items]
    assert "folder.jpg/inside.png" in paths  # a folder named like an image is walked, not reported
    assert "folder.jpg" not in skipped
    assert "good/été 🌞 photo.png" in paths and "good/many   spaces  .jpeg" in paths
    assert "bad/truncated.jpg" in paths  # header is fine: decode failures surface at embedding time


def test_items_carry_size_mtime_and_posix_paths(hostile_dir):
    root, _ = hostile_dir
    col = scan(root)
    assert col.root == root and col.root.is_absolute()
    for it in col.items:
        assert "\\" not in it.path and not it.path.startswith("/")
        st = (root / it.path).stat()
        assert (it.size, it.mtime) == (st.st_size, st.st_mtime)
        assert col.abspath(it) == root / it.path == col.abspath(it.path)


def test_order_is_sorted_and_stable(hostile_dir):
    root, _ = hostile_dir
    first, second = scan(root), scan(root)
    assert first == second
    keys = [it.path.split("/") for it in first.items]
    assert keys == sorted(keys)
    assert [sk.path.split("/") for sk in first.skipped] == sorted(sk.path.split("/") for sk in first.skipped)


def test_labels_are_first_level_folders(hostile_dir):
    root, _ = hostile_dir
    unlabelled = scan(root)
    assert unlabelled.labels is None and all(it.label is None for it in unlabelled.items)
    col = scan(root, labels=True)
    by_path = {it.path: it.label for it in col.items}
    assert by_path["plain.png"] is None
    assert by_path["good/cmyk.jpg"] == "good"
    assert by_path["folder.jpg/inside.png"] == "folder.jpg"
    assert col.labels == ["bad", "folder.jpg", "good"]


def test_nested_labels_use_only_the_first_level(tmp_path):
    hostile.write_bytes(tmp_path / "cats" / "indoor" / "a.png", hostile.solid_png())
    assert [(it.path, it.label) for it in scan(tmp_path, labels=True).items] == [("cats/indoor/a.png", "cats")]


def test_root_must_be_an_existing_folder(tmp_path):
    with pytest.raises(LookalikeError, match="folder not found"):
        scan(tmp_path / "nope")
    file = hostile.write_bytes(tmp_path / "one.png", hostile.solid_png())
    with pytest.raises(LookalikeError, match="not a folder"):
        scan(file)


def test_empty_folder_gives_an_empty_collection(tmp_path):
    col = scan(tmp_path)
    assert col == Collection(tmp_path, [], []) and col.labels is None


def test_max_pixels_is_passed_to_the_probe(tmp_path):
    hostile.write_bytes(tmp_path / "big.png", hostile.solid_png(RED, (50, 50)))
    hostile.write_bytes(tmp_path / "small.png", hostile.solid_png(RED, (10, 10)))
    col = scan(tmp_path, max_pixels=1000)
    assert [it.path for it in col.items] == ["small.png"]
    assert col.skipped == [Skipped("big.png", "too large: 50x50 pixels exceeds limit of 1000")]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    hostile.write_bytes(tmp_path / "a.png", hostile.solid_png())
    scan(tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "scanning" in err


def test_abspath_refuses_to_leave_the_root(tmp_path):
    col = Collection(tmp_path, [], [])
    assert col.abspath("a/b.png") == tmp_path / "a" / "b.png"
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x.png", ""):
        with pytest.raises(LookalikeError):
            col.abspath(bad)
    assert col.abspath(Item("x.png", 1, 0.0)) == tmp_path / "x.png"


# ------------------------------------------------------------------------------------ symbolic links

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")


@needs_symlinks
def test_symlink_loops_terminate(tmp_path):
    hostile.write_bytes(tmp_path / "a" / "b" / "x.png", hostile.solid_png())
    os.symlink("../..", tmp_path / "a" / "b" / "up")
    os.symlink("..", tmp_path / "a" / "back")
    os.symlink(str(tmp_path / "a"), tmp_path / "abs-loop")
    done: list[Collection] = []
    worker = threading.Thread(target=lambda: done.append(scan(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert done, "scan did not finish: symlink loop"
    col = done[0]
    assert [it.path for it in col.items] == ["a/b/x.png"]  # real path wins, no repeats
    assert {sk.path for sk in col.skipped} == {"a/b/up", "a/back", "abs-loop"}
    assert all("already scanned" in sk.reason for sk in col.skipped)


@needs_symlinks
def test_linked_outside_folder_is_followed_once(tmp_path):
    outside = tmp_path / "outside"
    hostile.write_bytes(outside / "o.png", hostile.solid_png())
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link1")
    os.symlink(outside, root / "link2")
    col = scan(root, labels=True)
    assert [(it.path, it.label) for it in col.items] == [("link1/o.png", "link1")]
    assert [sk.path for sk in col.skipped] == ["link2"]


@needs_symlinks
def test_dangling_and_self_links(tmp_path):
    os.symlink("missing.png", tmp_path / "gone.png")
    os.symlink("me.jpg", tmp_path / "me.jpg")
    os.symlink("missing-dir", tmp_path / "gone-dir")
    col = scan(tmp_path)
    assert col.items == []
    assert col.skipped == [Skipped("gone-dir", "broken symbolic link"), Skipped("gone.png", "broken symbolic link"),
                           Skipped("me.jpg", "broken symbolic link")]


@needs_symlinks
def test_root_given_through_a_link(tmp_path):
    hostile.write_bytes(tmp_path / "real" / "a.png", hostile.solid_png())
    os.symlink(tmp_path / "real", tmp_path / "alias")
    col = scan(tmp_path / "alias")
    assert col.root == tmp_path / "alias" and [it.path for it in col.items] == ["a.png"]


# ------------------------------------------------------------------------------------ odd names


def test_undecodable_file_name_is_skipped_not_crashing(tmp_path):
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as fp:
            fp.write(hostile.solid_png())
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    hostile.write_bytes(tmp_path / "ok.png", hostile.solid_png())
    col = scan(tmp_path)
    assert [it.path for it in col.items] == ["ok.png"]
    assert len(col.skipped) == 1 and col.skipped[0].reason.startswith("file name is not valid UTF-8")
    col.skipped[0].path.encode("utf-8")  # safe to store and show


@pytest.mark.skipif(os.name != "posix", reason="backslash is a separator elsewhere")
def test_backslash_in_a_posix_file_name_is_just_a_character(tmp_path):
    hostile.write_bytes(tmp_path / "back\\slash.png", hostile.solid_png())
    col = scan(tmp_path)
    assert [it.path for it in col.items] == ["back\\slash.png"]
    assert col.abspath(col.items[0]).is_file()


def test_uppercase_and_mixed_extensions(tmp_path):
    for name in ("A.PNG", "b.JpEg", "c.Tiff"):
        fmt = {"A.PNG": "PNG", "b.JpEg": "JPEG", "c.Tiff": "TIFF"}[name]
        hostile.write_bytes(tmp_path / name, hostile.image_bytes(Image.new("RGB", (4, 4)), fmt))
    assert [it.path for it in scan(tmp_path).items] == ["A.PNG", "b.JpEg", "c.Tiff"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_subfolder_is_reported(tmp_path):
    locked = tmp_path / "locked"
    hostile.write_bytes(locked / "a.png", hostile.solid_png())
    locked.chmod(0)
    try:
        col = scan(tmp_path)
    finally:
        locked.chmod(0o755)
    assert col.skipped == [Skipped("locked", "unreadable folder: permission denied")]


def test_unreadable_subfolder_is_reported_simulated(tmp_path, monkeypatch):
    hostile.write_bytes(tmp_path / "locked" / "a.png", hostile.solid_png())
    hostile.write_bytes(tmp_path / "open" / "b.png", hostile.solid_png())
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    col = scan(tmp_path)
    assert [it.path for it in col.items] == ["open/b.png"]
    assert col.skipped == [Skipped("locked", "unreadable folder: permission denied")]
    monkeypatch.setattr(os, "scandir", lambda path: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(LookalikeError, match="cannot read folder .*: permission denied"):
        scan(tmp_path)


def test_hostile_folder_copies_with_its_links_intact(tmp_path):
    import shutil

    src = tmp_path / "src"
    expect = hostile.make_hostile_folder(src)  # no FIFO: safe to copy
    dst = tmp_path / "dst"
    shutil.copytree(src, dst, symlinks=True)
    col = scan(dst)
    assert {it.path for it in col.items} == {rel for rel, e in expect.items() if e.scan == ITEM}
    assert "bad/pipe.png" not in expect


def test_a_folder_mounted_inside_the_collection_is_not_walked_again(tmp_path, monkeypatch):
    # A bind mount of the root at sub/mnt: a real folder (no link) with the root's device and inode.
    import retrieval.collection as collection_module

    root = tmp_path / "root"
    hostile.write_bytes(root / "a.png", hostile.solid_png())
    hostile.write_bytes(root / "sub" / "mnt" / "a.png", hostile.solid_png())  # what the mount shows
    mount = os.fspath(root / "sub" / "mnt")
    root_st = os.stat(root)
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if os.fspath(path) == mount:
            return os.stat_result((st.st_mode, root_st.st_ino, root_st.st_dev, *tuple(st)[3:]))
        return st

    monkeypatch.setattr(collection_module.os, "stat", stat)
    col = scan(root)
    assert [it.path for it in col.items] == ["a.png"]
    assert col.skipped == [Skipped("sub/mnt", "folder already scanned (a mount loop)")]
