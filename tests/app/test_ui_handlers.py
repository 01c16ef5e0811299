"""The UI's handlers called directly (no server): Indexes, Explore, Compare scores, Train polling, errors."""

from __future__ import annotations

import shutil
import sys
import threading
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from app.jobs import JobManager
from app.ui import LookalikeApp, build_app, near_duplicate_pairs, pca_2d, query_source
from retrieval.errors import LookalikeError
from retrieval.synthetic import make_collection
from retrieval.workspace import Workspace


def _no_progress(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("handlers")
    photos = root / "photos"
    images = make_collection(photos, n_classes=3, per_class=4, size=32, seed=5)
    shutil.copy(images[0], images[0].parent / "copy-of-000.png")  # an exact duplicate
    (photos / "notes.txt").write_text("not an image")
    (photos / images[1].parent.name / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    ws = Workspace(root / "indexes")
    app = LookalikeApp(ws, JobManager(), runs_dir=root / "runs")
    app.build_index(str(photos), "pixels", "px", "flat", False, progress=_no_progress)
    return types.SimpleNamespace(root=root, photos=photos, images=images, ws=ws, app=app)


def test_a_built_index_is_listed(env):
    rows = env.app.index_rows()
    assert [r[0] for r in rows] == ["px"]
    name, count, encoder, kind, size, updated, skipped = rows[0]
    assert (count, encoder, kind, skipped) == (13, "pixels 32x32", "flat", 2)
    assert size.endswith("KB") and updated[:2] == "20"


def test_details_list_each_skipped_file_with_its_reason(env):
    text, skipped = env.app.index_details("px")
    assert "13 images" in text and "2 file(s) skipped" in text
    reasons = dict(map(tuple, skipped))
    assert reasons["notes.txt"].startswith("unsupported file type")
    broken = next(p for p in reasons if p.endswith("broken.png"))
    assert reasons[broken]


def test_build_refuses_bad_input_with_what_to_do(env):
    with pytest.raises(gr.Error, match="does not exist"):
        env.app.build_index(str(env.root / "nowhere"), "pixels", "x", "auto", False, progress=_no_progress)
    with pytest.raises(gr.Error, match="already exists"):
        env.app.build_index(str(env.photos), "pixels", "px", "auto", False, progress=_no_progress)
    with pytest.raises(gr.Error, match="name"):
        env.app.build_index(str(env.photos), "pixels", " ", "auto", False, progress=_no_progress)


def test_an_empty_workspace_says_how_to_build_an_index(tmp_path):
    app = LookalikeApp(Workspace(tmp_path / "none"))
    with pytest.raises(gr.Error, match="No index yet — build one in the Indexes tab"):
        app.search({"path": "x.png"}, None, 5)
    with pytest.raises(gr.Error, match="No index yet"):
        app.compare({"path": "x.png"}, [], 5)
    assert app.search_if_ready(None, None, 5) == ([], [], [])


def test_near_duplicates_finds_the_copied_file(env):
    summary, rows, gallery = env.app.near_duplicates("px", 0.999, 3)
    rel = env.images[0].relative_to(env.photos).as_posix()
    copy = f"{env.images[0].parent.name}/copy-of-000.png"
    assert rows[0][1:] == sorted([rel, copy]) and rows[0][0] == pytest.approx(1.0, abs=1e-4)
    assert len(rows) == 1 and summary.startswith("1 pair(s)")
    assert [caption.split(" · ")[1] for _, caption in gallery] == rows[0][1:]
    # This collection was indexed after "launch": results are served as copies in Gradio's upload folder.
    from gradio.utils import get_upload_folder

    for path, caption in gallery:
        assert path.startswith(str(Path(get_upload_folder()).resolve()))
        assert Path(path).read_bytes() == (env.photos / caption.split(" · ")[1]).read_bytes()


def test_near_duplicate_pairs_are_unordered_unique_and_above_threshold():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 8)).astype(np.float32)
    vecs = np.concatenate([base, base[:2] + 1e-3]).astype(np.float32)  # items 6, 7 ≈ items 0, 1
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    paths = [f"p{i}" for i in range(len(vecs))]

    def search(q, k):  # exact search standing in for IndexStore.search
        sims = q @ vecs.T
        order = np.argsort(-sims, axis=1)[:, :k]
        return [[types.SimpleNamespace(path=paths[j], score=float(s[j])) for j in row] for s, row in zip(sims, order)]

    pairs = near_duplicate_pairs(paths, vecs, search, threshold=0.99, neighbours=2, batch=3)
    assert sorted((a, b) for _, a, b in pairs) == [("p0", "p6"), ("p1", "p7")]
    assert all(s >= 0.99 for s, _, _ in pairs)


def test_pca_separates_two_clusters_whichever_way_it_is_computed():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.1, size=(20, 5)) + np.array([3, 0, 0, 0, 0])
    b = rng.normal(0, 0.1, size=(20, 5)) - np.array([3, 0, 0, 0, 0])
    x = np.concatenate([a, b])
    tall = pca_2d(x)  # D ≤ N: covariance
    wide = pca_2d(np.pad(x, ((0, 0), (0, 60))))  # D > N: Gram matrix
    for coords in (tall, wide):
        assert coords.shape == (40, 2)
        assert (np.sign(coords[:20, 0]) == np.sign(coords[0, 0])).all()
        assert (np.sign(coords[20:, 0]) == -np.sign(coords[0, 0])).all()
    np.testing.assert_allclose(np.abs(tall), np.abs(wide), atol=1e-6)


def test_explore_map_has_every_image_coloured_by_label(env):
    plot = env.app.explore_map("px", 3000)
    assert plot.color == "label" and plot.tooltip == ["path", "label"]
    rows = plot.value["data"]  # the plot's serialised DataFrame
    assert len(rows) == 13


def test_compare_scores_come_from_labels_and_are_cached_per_generation(env):
    first = env.app.metrics_for("px")
    assert set(first) >= {"recall@1", "map@10", "knn_acc"} and first["count"] == 13
    assert env.app.metrics_for("px") is first
    assert "recall@1" in env.app.metrics_text(first)
    env.app.build_index(str(env.photos), "pixels", "px", "flat", True, progress=_no_progress)
    again = env.app.metrics_for("px")
    assert again is not first and again == pytest.approx(first)


def test_query_source_accepts_uploads_and_data_urls_only(tmp_path):
    upload = tmp_path / "uploads"
    (upload / "abc").mkdir(parents=True)
    inside = upload / "abc" / "q.png"
    assert query_source(None, upload) is None
    assert query_source({"path": None, "url": None}, upload) is None
    assert query_source({"path": str(inside), "url": None}, upload) == str(inside.resolve())
    assert query_source(str(inside), upload) == str(inside.resolve())
    assert query_source({"path": None, "url": "data:image/png;base64,aGVsbG8="}, upload) == b"hello"
    for elsewhere in ("/etc/hostname", str(upload / ".." / "secret.png"), "relative.png", "/etc/pass\x00wd",
                      str(upload / "abc" / "q\x00.png")):
        with pytest.raises(LookalikeError, match="must be uploaded"):
            query_source({"path": elsewhere}, upload)


def test_training_is_polled_into_a_loss_curve_and_can_be_stopped(env, monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class TrainConfig:
        data_dir: str
        method: str = "simclr"
        backbone: str = "resnet18"
        image_size: int = 64
        batch_size: int = 64
        minutes: float | None = None
        epochs: int | None = None
        out: str | None = None

    started = threading.Event()

    def train(config, progress=True, stop_event=None, on_log=None):
        for step in range(4):
            on_log({"step": step, "epoch": 0, "loss": 4.0 - step, "lr": 0.01, "images_per_s": 50.0})
        started.set()
        stop_event.wait(10)
        return env.root / "runs" / "fake"

    monkeypatch.setitem(sys.modules, "training.trainer", types.SimpleNamespace(TrainConfig=TrainConfig, train=train))
    app = LookalikeApp(env.ws, JobManager(), runs_dir=env.root / "runs")
    with pytest.raises(gr.Error, match="does not exist"):
        app.start_training(str(env.root / "nowhere"), "simclr", "resnet18", 32, 8, 1, "small")
    job_id, timer, message = app.start_training(str(env.photos), "byol", "resnet10t", 32, 8, 0.5, "small")
    assert timer.active and "byol" in message
    assert started.wait(10)
    shown, plot, status, bar, stop_btn, build_row, build_text, timer, announced, *_ = app.poll(job_id, None, None)
    assert shown == job_id
    assert list(plot["loss"]) == [4.0, 3.0, 2.0, 1.0]
    assert "loss 1.0000" in status and "running" in status and "<progress" in bar
    assert stop_btn.interactive and not build_row.visible and timer.active
    assert app.stop_job(job_id).startswith("Stopping")
    app.jobs.get(job_id).wait(10)
    _, _, status, _, stop_btn, build_row, _, timer, *_ = app.poll(job_id, None, None)
    assert "stopped" in status and "fake" in status
    assert not stop_btn.interactive and build_row.visible and not timer.active


def test_the_live_view_follows_the_next_run_of_a_sequence(env):
    jobs = JobManager()
    app = LookalikeApp(env.ws, jobs)
    gate = threading.Event()
    first = jobs.start("train", "first", lambda job: "runs/first")
    first.wait(10)
    second = jobs.start("train", "second", lambda job: gate.wait(10))
    shown, *_, timer, _, _, _, _, _ = app.poll(first.id, None, None)
    assert shown == second.id and timer.active
    gate.set()
    second.wait(10)
    assert app.resume_jobs()[0] == second.id


def test_build_app_wires_only_search_and_compare_as_public_endpoints(env):
    demo = build_app(env.ws, examples=[str(env.images[0])], train_dirs=[str(env.photos)])
    names = {d.api_name for d in demo.fns.values() if d.api_visibility == "public"}
    assert names == {"search", "compare"}


@pytest.mark.slow
def test_train_an_encoder_then_index_with_it_from_the_train_tab(env, tmp_path):
    """The real trainer, for a few seconds: the run it writes becomes an index that finds its own images."""
    ws = Workspace(tmp_path / "indexes")
    app = LookalikeApp(ws, JobManager(), runs_dir=tmp_path / "runs")
    job_id, _, _ = app.start_training(str(env.photos), "simclr", "resnet10t", 32, 8, 0.05, "small")
    job = app.jobs.get(job_id)
    assert job.wait(300) and job.status == "done", job.error
    _, plot, status, _, stop_btn, build_row, *_ = app.poll(job_id, None, None)
    assert len(plot) >= 1 and (plot["loss"] > 0).all()
    assert "done" in status and not stop_btn.interactive and build_row.visible

    build_id, timer, _ = app.build_from_run(job_id, "trained")
    assert timer.active
    assert app.jobs.get(build_id).wait(300)
    *_, build_text, timer, announced, search_dd, compare_dd, refresh_dd, _ = app.poll(job_id, build_id, None)
    assert "**trained** ready: 13 images" in build_text and announced == build_id and not timer.active
    assert search_dd.choices == [("trained", "trained")] and search_dd.value == "trained"
    assert compare_dd.value == ["trained"] and refresh_dd.value == "trained"
    assert app.poll(job_id, build_id, announced)[-4:] == (gr.skip(),) * 4  # announced once, then left alone
    store = ws.store("trained")
    assert store.manifest["encoder"]["kind"] == "run"
    results = ws.search("trained", env.images[2], k=3)
    assert results[0].path == env.images[2].relative_to(env.photos).as_posix()
    assert results[0].score == pytest.approx(1.0, abs=1e-4)
