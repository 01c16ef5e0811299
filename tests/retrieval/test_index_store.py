"""IndexStore: every index type against exact search, mutations, tombstones, persistence, refusals, threads."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

from retrieval import index_kinds
from retrieval import index_store as ist
from retrieval import store_files
from retrieval.collection import Item, Skipped
from retrieval.errors import EncoderMismatchError, IndexNotFoundError, LookalikeError
from retrieval.index_store import Hit, IndexStore, list_indexes

D = 32
IDENTITY = {"spec": "random:tiny", "kind": "random", "backbone": "tiny", "image_size": 32, "dim": D,
            "stem": "default", "weights": "seed:0"}


def set_kind(monkeypatch, name: str, **fields) -> None:
    """Change a row of the index kinds table for one test (e.g. a lower threshold, same code path)."""
    monkeypatch.setitem(index_kinds.KINDS, name, dataclasses.replace(index_kinds.KINDS[name], **fields))


def unit(n: int, seed: int = 0) -> np.ndarray:
    """Random unit vectors: the hardest case for approximate indexes (no structure to exploit)."""
    v = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered(n: int, seed: int = 0, centers: int = 50) -> np.ndarray:
    """Unit vectors around a few centres, closer to what image embeddings look like."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, D))
    v = (c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, D))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def items(n: int, prefix: str = "img", start: int = 0) -> list[Item]:
    return [Item(f"{prefix}/{i:05d}.png", size=100 + i, mtime=1000.0 + i, label=f"c{i % 3}")
            for i in range(start, start + n)]


def make(tmp_path, index_type: str = "flat", n: int = 0, vecs: np.ndarray | None = None,
         name: str = "idx") -> IndexStore:
    store = IndexStore.create(tmp_path, name, IDENTITY, D, tmp_path / "photos", index_type=index_type)
    if n:
        store.add(items(n), unit(n) if vecs is None else vecs)
    return store


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


def recall(store: IndexStore, base: np.ndarray, queries: np.ndarray, k: int) -> float:
    names = [it.path for it in items(len(base))]
    truth = exact_topk(base, queries, k)
    got = store.search(queries, k)
    return float(np.mean([len({names[j] for j in t} & {h.path for h in g}) / k for t, g in zip(truth, got)]))


# ----- search quality per index type ------------------------------------------------------------------------

def test_flat_is_exact(tmp_path):
    base = unit(500)
    store = make(tmp_path, "flat", 500, base)
    q = unit(20, seed=1)
    hits = store.search(q, 10)
    names = [it.path for it in items(500)]
    truth = exact_topk(base, q, 10)
    for row, t, qv in zip(hits, truth, q):
        assert [h.path for h in row] == [names[j] for j in t]
        assert [h.score for h in row] == pytest.approx((base[t] @ qv).tolist(), abs=1e-5)
        assert row[0].label == f"c{t[0] % 3}"
    assert isinstance(hits[0][0], Hit)


@pytest.mark.parametrize("index_type,n,factory,min_recall,min_top1", [
    ("hnsw", 2000, "IDMap2,HNSW32", 0.9, 1.0),
    ("ivf", 2000, "IVF51,Flat", 0.9, 1.0),
    # PQ keeps 8 bytes a vector instead of 128: ranks among near neighbours blur, so the bars are lower.
    ("ivfpq", 2000, "IVF51,PQ8np", 0.5, 0.85),
])
def test_approximate_types_match_flat(tmp_path, monkeypatch, index_type, n, factory, min_recall, min_top1):
    set_kind(monkeypatch, "ivfpq", min_train=2000)  # production wants 10k; same code path, faster test
    base = clustered(n)
    store = make(tmp_path, index_type, n, base)
    flat = make(tmp_path, "flat", n, base, name="exact")
    m = store.manifest
    assert (m["index_type"], m["factory"], m["note"]) == (index_type, factory, None)
    assert store.count == n
    probe = base[:300]  # queries equal to stored vectors: top-1 must be the vector itself, as in flat
    top1 = [h[0].path for h in store.search(probe, 1)]
    assert [h[0].path for h in flat.search(probe, 1)] == [it.path for it in items(300)]
    assert np.mean([a == b for a, b in zip(top1, [it.path for it in items(300)])]) >= min_top1
    assert recall(store, base, clustered(200, seed=7), 10) >= min_recall


def test_hnsw_recall_on_unstructured_vectors(tmp_path):
    base = unit(2000)
    store = make(tmp_path, "hnsw", 2000, base)
    assert recall(store, base, unit(200, seed=3), 10) >= 0.9


def test_ivf_nprobe_is_a_stored_search_parameter(tmp_path):
    base = unit(2000)
    store = make(tmp_path, "ivf", 2000, base)
    q = unit(200, seed=3)
    assert store.manifest["params"]["nprobe"] == 16
    low = recall(store, base, q, 10)
    store.set_search_params(nprobe=51)  # every list: exact
    assert IndexStore.open(tmp_path, "idx").manifest["params"]["nprobe"] == 51
    assert recall(store, base, q, 10) == pytest.approx(1.0)
    assert low < 1.0
    with pytest.raises(LookalikeError, match="nprobe"):
        store.set_search_params(efSearch=10)


# ----- type selection and training fallbacks ---------------------------------------------------------------

@pytest.mark.parametrize("index_type", ["ivf", "ivfpq"])
def test_too_few_vectors_fall_back_to_flat_with_note(tmp_path, index_type):
    base = unit(200)
    store = make(tmp_path, index_type, 200, base)
    m = IndexStore.open(tmp_path, "idx").manifest
    assert (m["index_type"], m["requested_type"], m["factory"]) == ("flat", index_type, "IDMap2,Flat")
    assert "needs at least" in m["note"] and "200" in m["note"]
    assert [h[0].path for h in store.search(base[:50], 1)] == [it.path for it in items(50)]


def test_fallback_switches_to_requested_type_once_enough_vectors(tmp_path):
    store = make(tmp_path, "ivf", 200, clustered(1200)[:200])
    store.add(items(1000, start=200), clustered(1200)[200:])
    m = store.manifest
    assert (m["index_type"], m["note"], m["params"]["trained_on"]) == ("ivf", None, 1200)
    assert [h[0].path for h in store.search(clustered(1200)[::50], 1)] == [it.path for it in items(1200)][::50]


def test_auto_grows_from_flat_to_hnsw(tmp_path, monkeypatch):
    set_kind(monkeypatch, "hnsw", auto_from=300)
    base = unit(500)
    store = make(tmp_path, "auto", 200, base[:200])
    assert store.manifest["index_type"] == "flat"
    store.add(items(300, start=200), base[200:])
    assert (store.manifest["index_type"], store.manifest["requested_type"]) == ("hnsw", "auto")
    assert [h[0].path for h in store.search(base, 1)] == [it.path for it in items(500)]


def test_auto_on_first_add_of_large_batch(tmp_path, monkeypatch):
    set_kind(monkeypatch, "hnsw", auto_from=100)
    store = make(tmp_path, "auto")
    assert store.manifest["index_type"] == "flat" and store.count == 0
    store.add(items(150), unit(150))
    assert store.manifest["index_type"] == "hnsw"


def test_a_new_index_kind_is_one_row_of_the_table(tmp_path, monkeypatch):
    # A kind the code has never heard of: an HNSW graph of 8 links, added as one row, and nothing else.
    row = index_kinds.IndexKind("hnsw8", "a thinner graph", rank=1, tombstones=True,
                                layout=lambda n, dim: ("IDMap2,HNSW8", {"efSearch": 16}),
                                search_params={"efSearch": 16}, searcher=index_kinds.KINDS["hnsw"].searcher)
    monkeypatch.setitem(index_kinds.KINDS, "hnsw8", row)
    base = unit(120)
    store = make(tmp_path, "hnsw8", 120, base)
    assert (store.manifest["index_type"], store.manifest["factory"]) == ("hnsw8", "IDMap2,HNSW8")
    assert store.remove([it.path for it in items(5)]) == 5 and store.tombstones == 5  # the row says: tombstones
    store.set_search_params(efSearch=40)
    with pytest.raises(LookalikeError, match="takes efSearch"):
        store.set_search_params(nprobe=4)
    reopened = IndexStore.open(tmp_path, "idx")
    assert [h[0].path for h in reopened.search(base[5:], 1)] == [it.path for it in items(120)][5:]
    assert reopened.manifest["params"]["efSearch"] == 40


def test_pq_subquantizers_divide_dim():
    assert [index_kinds.pq_m(d) for d in (32, 512, 768, 2048, 3, 30)] == [8, 64, 64, 64, 1, 6]


# ----- mutations -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_add_remove_replace(tmp_path, index_type):
    n = 1200
    base = clustered(n)
    store = make(tmp_path, index_type, n, base)
    names = [it.path for it in items(n)]
    gone = names[:100] + ["not/there.png"]
    assert store.remove(gone) == 100
    assert store.remove(names[:100]) == 0  # already gone: nothing counted, nothing written
    assert store.count == n - 100
    for row in store.search(base[:100], 20):
        assert not {h.path for h in row} & set(names[:100])
    # Survivors still map to the right vectors (ids stay paired with rows after removal).
    assert [h[0].path for h in store.search(base[100:400], 1)] == names[100:400]
    # Replace: same path, new vector and metadata, count unchanged.
    new_vec = unit(1, seed=99)
    store.add([Item(names[500], size=1, mtime=2.0, label="new")], new_vec)
    assert store.count == n - 100
    hit = store.search(new_vec, 1)[0][0]
    assert (hit.path, hit.label) == (names[500], "new") and hit.score == pytest.approx(1.0, abs=1e-4)
    assert store.items()[names[500]] == Item(names[500], 1, 2.0, "new")
    assert all(h.path != names[500] for h in store.search(base[500:501], 5)[0])
    # Re-add a removed path.
    store.add([items(1)[0]], base[:1])
    assert store.search(base[:1], 1)[0][0].path == names[0] and store.count == n - 99
    assert sorted(store.paths()) == store.paths() == sorted(set(names) - set(names[1:100]))


def test_hnsw_tombstones_are_filtered_then_compacted(tmp_path):
    base = unit(200)
    store = make(tmp_path, "hnsw", 200, base)
    names = [it.path for it in items(200)]
    assert store.remove(names[:30]) == 30  # 15 %: tombstones only
    assert (store.tombstones, store.count, store.info()["tombstones"]) == (30, 170, 30)
    files_before = store.manifest["files"]["index"]
    assert files_before == IndexStore.open(tmp_path, "idx").manifest["files"]["index"]  # vectors untouched
    for row in store.search(base[:30], 170):
        assert len(row) == 170 and not {h.path for h in row} & set(names[:30])
    assert store.search(base[:5], 500)[0][-1].path not in names[:30]
    # Replacing a live path leaves its old vector as a tombstone too.
    store.add([items(1, start=50)[0]], unit(1, seed=5))
    assert store.tombstones == 31 and store.count == 170
    assert store.remove(names[30:40]) == 10  # 41 of 201 > 20 %: rebuilt without them
    assert store.tombstones == 0 and store.count == 160
    assert store.manifest["files"]["index"] != files_before
    reopened = IndexStore.open(tmp_path, "idx")
    assert reopened.tombstones == 0
    top = [h[0].path for h in reopened.search(base[40:200], 1)]  # names[50] now holds another vector
    assert top[:10] == names[40:50] and top[11:] == names[51:200]


def test_duplicate_paths_in_one_batch_keep_the_last(tmp_path):
    store = make(tmp_path)
    v = unit(2, seed=4)
    it = items(1)[0]
    store.add([it, Item(it.path, 7, 7.0, "b")], v)
    assert store.count == 1 and store.items()[it.path].label == "b"
    assert store.search(v[1], 1)[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_update_is_one_change(tmp_path):
    store = make(tmp_path, "flat", 10)
    gen = store.manifest["generation"]
    removed = store.update(items=items(2, prefix="new"), vectors=unit(2, seed=8), remove=[items(1)[0].path],
                           skipped=[Skipped("bad.png", "not an image")])
    assert removed == 1 and store.count == 11 and store.manifest["generation"] == gen + 1
    assert store.skipped() == [Skipped("bad.png", "not an image")]
    assert store.update(items=[], vectors=np.zeros((0,), np.float32), remove=["nope.png"]) == 0  # nothing to do
    assert store.manifest["generation"] == gen + 1


def test_vectors_are_validated_and_normalised(tmp_path):
    store = make(tmp_path)
    with pytest.raises(LookalikeError, match=r"expected \(N, 32\)"):
        store.add(items(2), np.ones((2, 16), np.float32))
    with pytest.raises(LookalikeError, match="pair up"):
        store.add(items(3), unit(2))
    with pytest.raises(LookalikeError, match="zero"):
        store.add(items(1), np.zeros((1, D)))
    with pytest.raises(LookalikeError, match="NaN"):
        store.add(items(1), np.full((1, D), np.nan))
    v = unit(5)
    store.add(items(5), v * 3.0)  # not unit length: stored normalised
    paths, stored = store.vectors()
    assert paths == [it.path for it in items(5)]
    np.testing.assert_allclose(stored, v, atol=1e-6)
    assert store.search(v[2] * 10, 1)[0][0].score == pytest.approx(1.0, abs=1e-5)  # queries too


def test_search_edges(tmp_path):
    store = make(tmp_path)
    assert store.search(unit(3), 5) == [[], [], []]
    store.add(items(4), unit(4))
    assert [len(r) for r in store.search(unit(2, seed=1), 10)] == [4, 4]
    assert len(store.search(unit(1)[0], 2)) == 1  # a single (dim,) query
    scores = [h.score for h in store.search(unit(1, seed=2), 4)[0]]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(LookalikeError, match="k must"):
        store.search(unit(1), 0)
    with pytest.raises(LookalikeError, match="shape"):
        store.search(np.ones((1, 8)), 1)


def test_many_queries_are_chunked(tmp_path, monkeypatch):
    monkeypatch.setattr(ist, "SEARCH_CHUNK", 7)
    base = unit(100)
    store = make(tmp_path, "flat", 100, base)
    assert [r[0].path for r in store.search(base, 3)] == [it.path for it in items(100)]


# ----- persistence and files ------------------------------------------------------------------------------

@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_round_trip_through_disk(tmp_path, index_type):
    base = clustered(1100)
    store = make(tmp_path, index_type, 1100, base)
    store.remove([it.path for it in items(10)])
    store.set_skipped([Skipped("b.jpg", "truncated or corrupt image"), Skipped("a.txt", "unsupported file type")])
    q = clustered(30, seed=2)
    again = IndexStore.open(tmp_path, "idx", encoder_identity=IDENTITY)
    assert again.search(q, 10) == store.search(q, 10)
    assert again.items() == store.items() and again.count == 1090
    assert again.skipped() == [Skipped("a.txt", "unsupported file type"),
                               Skipped("b.jpg", "truncated or corrupt image")]  # sorted by path
    np.testing.assert_array_equal(again.vectors()[1], store.vectors()[1])
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["count"] == 1090 and m["metric"] == "ip" and m["dim"] == D
    assert m["encoder"] == IDENTITY and m["root"] == str((tmp_path / "photos").resolve())
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == sorted([".lock", "manifest.json", m["files"]["index"], m["files"]["items"]])
    info = again.info()
    assert info["count"] == 1090 and info["skipped"] == 2
    assert info["size_bytes"] == sum(p.stat().st_size for p in (tmp_path / "idx").iterdir())


def test_info_from_the_files_alone_agrees_with_the_opened_index(tmp_path):
    """'index info' reads the manifest and SQLite only; tombstones (a replaced path's old vector included) and
    skipped files must come out as the opened store counts them, and an index whose manifest predates the
    "vectors" field is described by opening it."""
    store = make(tmp_path, "hnsw", 50)
    store.remove([it.path for it in items(3)])
    store.add([items(1, start=10)[0]], unit(1, seed=4))  # replaced: its old vector stays in the graph
    store.set_skipped([Skipped("bad.jpg", "truncated or corrupt image")])
    from_disk = store_files.describe_from_disk(tmp_path, "idx")
    assert (from_disk["tombstones"], from_disk["count"], from_disk["skipped"]) == (4, 47, 1)
    assert from_disk == store.info()
    manifest_path = tmp_path / "idx" / "manifest.json"
    older = json.loads(manifest_path.read_text())
    del older["vectors"]
    manifest_path.write_text(json.dumps(older))
    assert store_files.describe_from_disk(tmp_path, "idx") is None
    with pytest.raises(IndexNotFoundError, match="no index named 'other'.*available: idx"):
        store_files.describe_from_disk(tmp_path, "other")


def test_sqlite_schema(tmp_path):
    import sqlite3
    store = make(tmp_path, "flat", 3)
    con = sqlite3.connect(tmp_path / "idx" / store.manifest["files"]["items"])
    cols = [r[1] for r in con.execute("PRAGMA table_info(items)")]
    assert cols == ["id", "path", "size", "mtime", "label", "deleted"]
    assert con.execute("SELECT path, size, label, deleted FROM items ORDER BY id LIMIT 1").fetchone() == (
        "img/00000.png", 100, "c0", 0)
    con.close()


def test_reload_if_changed_sees_other_writers(tmp_path):
    a = make(tmp_path, "flat", 5)
    b = IndexStore.open(tmp_path, "idx")
    assert not b.reload_if_changed()
    a.add(items(3, start=5), unit(3, seed=1))
    assert b.count == 5 and b.reload_if_changed() and b.count == 8
    b.remove([items(1)[0].path])  # b writes on top of a's change, not over it
    assert a.reload_if_changed() and a.count == 7


def test_create_refuses_existing_and_overwrites_on_request(tmp_path):
    make(tmp_path, "flat", 5)
    with pytest.raises(LookalikeError, match="already exists"):
        make(tmp_path)
    fresh = IndexStore.create(tmp_path, "idx", IDENTITY, D, tmp_path, overwrite=True,
                              items=items(2), vectors=unit(2), skipped=[Skipped("x.gif", "empty file")])
    assert fresh.count == 2 and fresh.skipped() == [Skipped("x.gif", "empty file")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_list_open_missing_and_delete(tmp_path):
    make(tmp_path, name="b")
    make(tmp_path, name="a")
    (tmp_path / "junk").mkdir()
    assert [m["name"] for m in list_indexes(tmp_path)] == ["a", "b"]
    with pytest.raises(IndexNotFoundError, match="available: a, b"):
        IndexStore.open(tmp_path, "c")
    IndexStore.open(tmp_path, "a").delete()
    assert [m["name"] for m in list_indexes(tmp_path)] == ["b"]
    assert list_indexes(tmp_path / "nowhere") == []
    with pytest.raises(IndexNotFoundError, match="none yet"):
        IndexStore.open(tmp_path / "nowhere", "x")


@pytest.mark.parametrize("bad", ["", "a/b", "a\\b", "..", "../up", ".hidden", "-x", "sp ace", "x" * 200, "ä"])
def test_bad_names_are_refused(tmp_path, bad):
    with pytest.raises(LookalikeError, match="invalid index name"):
        IndexStore.create(tmp_path, bad, IDENTITY, D, tmp_path)
    with pytest.raises(LookalikeError, match="invalid index name"):
        IndexStore.open(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


def test_encoder_mismatch_is_refused(tmp_path):
    make(tmp_path, "flat", 2)
    other = {**IDENTITY, "spec": "pixels", "kind": "pixels", "backbone": None, "weights": "none"}
    with pytest.raises(EncoderMismatchError) as err:
        IndexStore.open(tmp_path, "idx", encoder_identity=other)
    msg = str(err.value)
    assert "random:tiny" in msg and "pixels" in msg and "rebuild the index" in msg
    renamed = {**IDENTITY, "spec": "random:tiny?size=32"}  # same vectors, other spelling: accepted
    assert IndexStore.open(tmp_path, "idx", encoder_identity=renamed).count == 2


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format_version=2), "upgrade Lookalike"),
    (lambda m: m.pop("dim"), "lacks dim"),
    (lambda m: m.update(dim="32"), "bad dim"),
    (lambda m: m.update(index_type="lsh"), "unknown index type"),
])
def test_damaged_manifest_is_explained(tmp_path, edit, match):
    make(tmp_path, "flat", 2)
    path = tmp_path / "idx" / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    with pytest.raises(LookalikeError, match=match):
        IndexStore.open(tmp_path, "idx")


def test_missing_data_file_is_explained(tmp_path):
    store = make(tmp_path, "flat", 2)
    (tmp_path / "idx" / store.manifest["files"]["index"]).unlink()
    with pytest.raises(LookalikeError, match="damaged"):
        IndexStore.open(tmp_path, "idx")


# ----- threads ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_searches_during_writes_never_see_a_torn_index(tmp_path, index_type):
    anchor = unit(50, seed=11)
    store = make(tmp_path, index_type, 50, anchor)
    anchors = [it.path for it in items(50)]
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                rows = store.search(anchor[:10], 5)
                assert [r[0].path for r in rows] == anchors[:10]
                assert all(len(r) == 5 for r in rows)
                assert (store.count - 50) % 5 == 0  # whole batches only: +20 per add, -5 per remove
                searches[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for b in range(15):
            store.add(items(20, prefix=f"batch{b}"), unit(20, seed=100 + b))
            store.remove([f"batch{b}/{i:05d}.png" for i in range(5)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert searches[0] > 0 and store.count == 50 + 15 * 15
