"""IndexStore guards that the other index tests leave implicit: every encoder identity field is compared, the FAISS
file must agree with the manifest, writers never lose each other's changes (across store objects, threads and
without the cross-process lock), files reach the disk before the manifest names them, and a failed overwrite puts
the old index back."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import faiss
import pytest

from retrieval import index_store as ist
from retrieval.fsutil import is_temp
from retrieval.errors import EncoderMismatchError, LookalikeError
from retrieval.index_store import IndexStore
from tests.retrieval.test_index_store import D, IDENTITY, items, unit


def make(root: Path, n: int = 4, name: str = "idx") -> IndexStore:
    return IndexStore.create(root, name, IDENTITY, D, root / "photos", items=items(n), vectors=unit(n))


# ----- manifests and identities ------------------------------------------------------------------------------

OTHER_VALUE = {"kind": "timm", "backbone": "other", "image_size": 64, "dim": D + 1, "stem": "small",
               "weights": "seed:1", "pool": "grid"}  # IDENTITY has no "pool": an index from before it existed


@pytest.mark.parametrize("key", list(OTHER_VALUE))  # spelled out: a field dropped from IDENTITY_KEYS must fail
def test_an_encoder_differing_in_any_identity_field_is_refused(tmp_path, key):
    make(tmp_path)
    other = {**IDENTITY, key: OTHER_VALUE[key]}
    with pytest.raises(EncoderMismatchError, match="rebuild the index"):
        IndexStore.open(tmp_path, "idx", encoder_identity=other)
    assert IndexStore.open(tmp_path, "idx", encoder_identity=dict(IDENTITY)).count == 4


def test_a_faiss_file_of_another_dimension_is_refused(tmp_path):
    import faiss

    store = make(tmp_path)
    wrong = faiss.index_factory(D + 8, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.write_index(wrong, str(tmp_path / "idx" / store.manifest["files"]["index"]))
    with pytest.raises(LookalikeError, match=f"FAISS file has dim {D + 8} but the manifest says {D}"):
        IndexStore.open(tmp_path, "idx")


def test_a_manifest_claiming_another_dimension_is_refused(tmp_path):
    make(tmp_path)
    path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["dim"] = D * 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(LookalikeError, match=f"FAISS file has dim {D} but the manifest says {D * 2}"):
        IndexStore.open(tmp_path, "idx")


# ----- writers never lose each other's changes ---------------------------------------------------------------

def test_a_stale_store_object_writes_on_top_of_the_latest_generation(tmp_path):
    a = make(tmp_path, n=4)
    b = IndexStore.open(tmp_path, "idx")  # loaded now, never told about a's change below
    a.add(items(3, prefix="from_a"), unit(3, seed=1))
    b.add(items(2, prefix="from_b"), unit(2, seed=2))
    final = IndexStore.open(tmp_path, "idx")
    assert final.count == 9
    assert {p.split("/")[0] for p in final.paths()} == {"img", "from_a", "from_b"}


@pytest.fixture
def slow_writes(monkeypatch):
    """Make every change take a while, so writers that are not serialised really do overlap."""
    real = ist._apply_update

    def slow(*args, **kwargs):
        out = real(*args, **kwargs)
        threading.Event().wait(0.05)
        return out

    monkeypatch.setattr(ist, "_apply_update", slow)


def _concurrent_adds(stores: list[IndexStore], batches: int = 4) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def writer(w: int, store: IndexStore) -> None:
        try:
            start.wait()
            for b in range(batches):
                store.add(items(2, prefix=f"w{w}b{b}"), unit(2, seed=100 * w + b))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w, s)) for w, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_writers_with_their_own_store_objects_are_serialised_by_the_index_lock(tmp_path, slow_writes):
    make(tmp_path, n=4)
    stores = [IndexStore.open(tmp_path, "idx") for _ in range(3)]  # like three processes
    errors = _concurrent_adds(stores)
    assert not errors, errors[0]
    final = IndexStore.open(tmp_path, "idx")
    assert final.count == 4 + 3 * 4 * 2
    assert final.manifest["generation"] == 3 * 4


def test_threads_sharing_one_store_are_serialised_even_without_the_file_lock(tmp_path, slow_writes, monkeypatch):
    # Where fcntl is missing (Windows) the in-process lock is all that keeps one app's writers apart.
    monkeypatch.setattr(ist, "dir_lock", lambda directory: contextlib.nullcontext())
    store = make(tmp_path, n=4)
    errors = _concurrent_adds([store] * 3)
    assert not errors, errors[0]
    assert IndexStore.open(tmp_path, "idx").count == store.count == 4 + 3 * 4 * 2


# ----- durability order ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors via /proc")
def test_data_files_and_the_new_manifest_are_on_disk_before_the_manifest_is_replaced(tmp_path, monkeypatch):
    store = make(tmp_path, n=4)
    synced: list[str] = []
    replaced: list[tuple[str, list[str]]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        replaced.append((os.path.basename(str(dst)), list(synced)))
        return real_replace(src, dst)

    monkeypatch.setattr(ist.os, "fsync", fsync)
    monkeypatch.setattr(ist.os, "replace", replace)
    store.add(items(2, prefix="new"), unit(2, seed=3))  # new FAISS and SQLite files
    manifest = store.manifest
    assert [dst for dst, _ in replaced] == ["manifest.json"]
    before = replaced[0][1]
    for name in (manifest["files"]["items"], manifest["files"]["index"]):
        assert name in before, f"{name} was not fsynced before the manifest named it ({before})"
    assert any(is_temp(name, of="manifest.json") for name in before), f"the new manifest was not fsynced ({before})"


# ----- overwriting ---------------------------------------------------------------------------------------------

def test_a_failed_overwrite_puts_the_old_index_back(tmp_path, monkeypatch):
    make(tmp_path, n=4)
    real_replace = os.replace

    def failing(src, dst):
        if Path(src).name.startswith(".tmp-idx-"):  # moving the new build into place
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(ist.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        IndexStore.create(tmp_path, "idx", IDENTITY, D, tmp_path, overwrite=True, items=items(9, prefix="new"),
                          vectors=unit(9, seed=5))
    monkeypatch.setattr(ist.os, "replace", real_replace)
    old = IndexStore.open(tmp_path, "idx")
    assert old.count == 4 and old.paths() == [it.path for it in items(4)]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_opening_while_another_writer_replaces_the_files_reads_the_new_generation(tmp_path, monkeypatch):
    make(tmp_path, n=4)
    writer = IndexStore.open(tmp_path, "idx")
    real_read = faiss.read_index
    raced = []

    def read_index(path, *args):
        if not raced:  # between reading the manifest and its FAISS file, another writer commits and tidies up
            raced.append(path)
            writer.add(items(3, prefix="meanwhile"), unit(3, seed=9))
        return real_read(path, *args)

    monkeypatch.setattr(faiss, "read_index", read_index)
    store = IndexStore.open(tmp_path, "idx")
    assert raced and not Path(raced[0]).exists()  # the file it first went for was deleted under it
    assert store.count == 7 and store.manifest["generation"] == 1


def test_half_written_files_of_a_crashed_writer_do_not_break_the_next_one(tmp_path):
    store = make(tmp_path, n=4)
    gen = store.manifest["generation"]
    directory = tmp_path / "idx"
    # What a writer killed mid-way through generation gen+1 can leave behind.
    (directory / f"items.{gen + 1}.sqlite").write_bytes(b"half a database" * 100)
    (directory / f"items.{gen + 1}.sqlite-journal").write_bytes(b"\0" * 512)
    (directory / f"index.{gen + 1}.faiss").write_bytes(b"half an index")
    (directory / "manifest.json.tmp").write_text('{"format_version": 1, "generat')  # as older versions named it
    (directory / ".manifest.json.tmp-4242").write_text('{"format_version": 1, "generat')
    other = IndexStore.open(tmp_path, "idx")  # like the next process to write
    other.add(items(2, prefix="next"), unit(2, seed=7))
    assert IndexStore.open(tmp_path, "idx").count == 6
    manifest = other.manifest
    assert sorted(p.name for p in directory.iterdir()) == sorted([".lock", "manifest.json",
                                                                 *manifest["files"].values()])
