"""Marks stored with the index (round trip, refresh, reopen, bad marks) and the linear map learnt from them."""

import json
import shutil

import numpy as np
import pytest

from app.cli import main
from retrieval.errors import LookalikeError
from retrieval.marks import apply_map, fit_map, label_pairs
from retrieval.metrics import evaluate_labelled
from retrieval.store_files import MARKS
from retrieval.workspace import Workspace


@pytest.fixture()
def built(shapes_index):
    ws, col = shapes_index
    paths = sorted(ws.store("shapes").paths())
    return ws, col, paths


def test_marks_round_trip_survive_refresh_and_reopen(built, tmp_path):
    ws, col, paths = built
    ws.mark("shapes", paths[0], paths[1], True)
    ws.mark("shapes", paths[0], paths[-1], False)
    (col / paths[5]).write_bytes((col / paths[6]).read_bytes())  # a changed file: refresh re-embeds it
    ws.refresh("shapes", progress=False)
    again = Workspace(ws.root)  # an app restart
    got = again.marks("shapes")
    assert [(m["query_path"], m["result"], m["right"]) for m in got["marks"]] == [
        (paths[0], paths[1], True), (paths[0], paths[-1], False)]
    assert (got["right"], got["wrong"], got["stale"]) == (1, 1, 0)
    assert len(got["labels_available"]) == 6


def test_unknown_paths_and_bad_values_refused(built):
    ws, _, paths = built
    with pytest.raises(LookalikeError, match="not an image of this index"):
        ws.mark("shapes", paths[0], "nowhere/x.png", True)
    with pytest.raises(LookalikeError, match="neither an image"):
        ws.mark("shapes", "nowhere/q.png", paths[0], True)
    with pytest.raises(LookalikeError, match="right"):
        ws.mark("shapes", paths[0], paths[1], "yes")
    assert ws.marks("shapes")["count"] == 0


def test_same_pair_marked_both_ways_keeps_the_latest(built):
    ws, _, paths = built
    ws.mark("shapes", paths[0], paths[1], True)
    out = ws.mark("shapes", paths[0], paths[1], False)
    assert out["replaced"]["right"] is True
    marks = ws.marks("shapes")["marks"]
    assert len(marks) == 1 and marks[0]["right"] is False


def test_mark_on_deleted_file_is_kept_and_reported_stale(built):
    ws, col, paths = built
    ws.mark("shapes", paths[0], paths[1], True)
    ws.mark("shapes", paths[0], paths[2], False)
    (col / paths[1]).unlink()
    ws.refresh("shapes", progress=False)
    got = ws.marks("shapes")
    stale = {m["result"]: m["stale"] for m in got["marks"]}
    assert stale == {paths[1]: True, paths[2]: False}
    record = ws.learn_from_marks("shapes", use_labels=False)
    assert (record["marks_used"], record["marks_stale"]) == (1, 1)


def test_upload_query_stores_its_vector_and_hash(built, tmp_path):
    ws, col, paths = built
    outside = tmp_path / "upload.png"
    shutil.copy(col / paths[3], outside)
    ws.mark("shapes", str(outside), paths[4], True)
    data = json.loads((ws.store("shapes").path / MARKS).read_text())
    (query,) = data["queries"].values()
    assert query["kind"] == "upload" and len(query["sha256"]) == 64 and len(query["vector"]) == ws.store("shapes").dim


def _confused(n_per_class=40, dim=4, seed=0):
    """Two classes whose signal is in a low-variance direction (dim 0) under large nuisance in the others."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    x = rng.normal(0, 1.0, (len(labels), dim))
    x[:, 0] = (labels * 2 - 1) * 0.15 + rng.normal(0, 0.02, len(labels))
    return x.astype(np.float32), labels


def test_learnt_map_separates_a_class_signal_raw_vectors_bury():
    x, labels = _confused()
    known = [str(lab) if i % 4 == 0 else None for i, lab in enumerate(labels)]  # a quarter labelled
    same, diff = label_pairs(known)
    mean, matrix = fit_map(x, same, diff)
    raw = evaluate_labelled(x / np.linalg.norm(x, axis=1, keepdims=True), labels)["map@10"]
    learnt = evaluate_labelled(apply_map(mean, matrix, x), labels)["map@10"]
    assert raw < 0.5 and learnt > 0.8  # 0.38 -> 0.85 with this seed


def test_learnt_map_applies_to_queries_and_can_be_undone(built):
    ws, col, paths = built
    query = col / paths[0]
    before = [r.path for r in ws.search("shapes", query, k=36)]
    record = ws.learn_from_marks("shapes")  # the sub-folder labels alone
    assert record["applied"] and record["label_pairs"] > 0
    store = ws.store("shapes")
    assert store.manifest["learnt_map"]["applied"] is True
    ids, _, _, vecs = store.live_ids_vectors()
    mean, matrix = ws._learnt_index(store)[1:3]
    q = ws.encoder_for(store).embed_images([__import__("PIL.Image").Image.open(query).convert("RGB")])
    expected = store.search_other(ws._learnt_index(store)[3], apply_map(mean, matrix, q), 36)[0]
    after = ws.search("shapes", query, k=36)
    assert [r.path for r in after] == [h.path for h in expected] and [r.path for r in after] != before
    same_class = paths[0].split("/")[0]
    assert sum(r.path.startswith(same_class) for r in after[:6]) >= sum(p.startswith(same_class) for p in before[:6])
    ws2 = Workspace(ws.root)  # a restart keeps the map on
    assert [r.path for r in ws2.search("shapes", query, k=36)] == [r.path for r in after]
    ws2.undo_learnt("shapes")
    assert [r.path for r in ws2.search("shapes", query, k=36)] == before


def test_cli_mark_and_marks(built, capsys):
    ws, _, paths = built
    root = str(ws.root)
    assert main(["mark", "shapes", paths[0], paths[1], "--right", "--indexes", root]) == 0
    assert main(["mark", "shapes", paths[0], paths[2], "--wrong", "--indexes", root]) == 0
    capsys.readouterr()
    assert main(["marks", "shapes", "--json", "--indexes", root]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(m["result"], m["right"]) for m in out["marks"]] == [(paths[1], True), (paths[2], False)]
    assert main(["mark", "shapes", paths[0], "nowhere.png", "--right", "--indexes", root]) != 0
    assert "not an image of this index" in capsys.readouterr().err


def test_a_learnt_map_refuses_query_expansion_and_a_whitened_index_refuses_learning(built, tmp_path, shapes_dir):
    ws, col, paths = built
    ws.mark("shapes", paths[0], paths[1], True)
    ws.learn_from_marks("shapes")
    with pytest.raises(LookalikeError, match="does not combine with query expansion"):
        ws.search("shapes", col / paths[0], k=3, qe=2)
    assert ws.search("shapes", col / paths[0], k=3)  # without re-ranking it searches through the map

    ws.build(col, "pixels", "white", progress=False, whiten=True)
    ws.mark("white", paths[0], paths[1], True)
    with pytest.raises(LookalikeError, match="is whitened"):
        ws.learn_from_marks("white")
