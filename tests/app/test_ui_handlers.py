"""The UI's handlers called directly (no server): Indexes, Explore, Compare scores, Train form and polling, errors."""

from __future__ import annotations

import os
import shutil
import threading
import types
import urllib.parse
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from app.jobs import JobManager
from app.serving import query_source
from app.ui import LookalikeApp, build_app
from retrieval.errors import LookalikeError
from training.settings import UI_PRESET
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
    app.indexes.build(str(photos), "pixels", "px", "flat", False, progress=_no_progress)
    return types.SimpleNamespace(root=root, photos=photos, images=images, ws=ws, app=app)


def test_a_built_index_is_listed(env):
    rows = env.app.indexes.rows()
    assert [r[0] for r in rows] == ["px"]
    name, count, encoder, kind, size, updated, skipped = rows[0]
    assert (count, encoder, kind, skipped) == (13, "pixels 32x32", "flat", 2)
    assert size.endswith("KB") and updated[:2] == "20"


def test_details_list_each_skipped_file_with_its_reason(env):
    text, skipped = env.app.indexes.details("px")
    assert "13 images" in text and "2 file(s) skipped" in text
    reasons = dict(map(tuple, skipped))
    assert reasons["notes.txt"].startswith("unsupported file type")
    broken = next(p for p in reasons if p.endswith("broken.png"))
    assert reasons[broken]


def test_build_refuses_bad_input_with_what_to_do(env):
    with pytest.raises(gr.Error, match="does not exist"):
        env.app.indexes.build(str(env.root / "nowhere"), "pixels", "x", "auto", False, progress=_no_progress)
    with pytest.raises(gr.Error, match="already exists"):
        env.app.indexes.build(str(env.photos), "pixels", "px", "auto", False, progress=_no_progress)
    with pytest.raises(gr.Error, match="name"):
        env.app.indexes.build(str(env.photos), "pixels", " ", "auto", False, progress=_no_progress)


def test_an_empty_workspace_says_how_to_build_an_index(tmp_path):
    app = LookalikeApp(Workspace(tmp_path / "none"))
    with pytest.raises(gr.Error, match="No index yet — build one in the Indexes tab"):
        app.search.search({"path": "x.png"}, None, 5)
    with pytest.raises(gr.Error, match="No index yet"):
        app.compare.compare({"path": "x.png"}, [], 5)
    assert app.search.search_if_ready(None, None, 5) == ([], [], [])


def test_near_duplicates_finds_the_copied_file(env):
    summary, rows, gallery = env.app.explore.near_duplicates("px", 0.999, 3)
    rel = env.images[0].relative_to(env.photos).as_posix()
    copy = f"{env.images[0].parent.name}/copy-of-000.png"
    assert rows[0][1:] == sorted([rel, copy]) and rows[0][0] == pytest.approx(1.0, abs=1e-4)
    assert len(rows) == 1 and summary.startswith("1 pair(s)")
    assert [caption.split(" · ")[1] for _, caption in gallery] == rows[0][1:]
    # The pairs are shown as thumbnails from the cache beside the indexes ...
    from gradio.utils import get_upload_folder
    from PIL import Image

    for path, caption in gallery:
        assert Path(path).parent.parent == env.ws.root / ".thumbnails"
        with Image.open(path) as thumb:
            assert thumb.format == "JPEG" and thumb.size == (32, 32)
        # ... and this collection was indexed after "launch": its originals are served as copies in Gradio's
        # upload folder.
        original, _ = env.app.ctx.original("px", caption.split(" · ")[1])
        assert original.startswith(str(Path(get_upload_folder()).resolve()))
        assert Path(original).read_bytes() == (env.photos / caption.split(" · ")[1]).read_bytes()


def test_explore_map_has_every_image_coloured_by_label_with_its_picture(env):
    plot, job_id, timer = env.app.explore.map("px", 3000)
    assert job_id is None and timer.active is False  # PCA: drawn at once, nothing in the background
    assert plot.color == "label" and plot.tooltip == ["path", "label", "image"]
    rows = plot.value["data"]  # the plot's serialised DataFrame
    assert len(rows) == 13
    # Hovering a point shows its thumbnail: the "image" column is its URL, made by a background job if missing.
    job = env.app.jobs.latest("thumbnails")
    assert job is None or job.wait(60)
    columns = plot.value["columns"]
    for row in rows:
        point = dict(zip(columns, row))
        prefix, _, thumb = point["image"].partition("gradio_api/file=")
        thumb = urllib.parse.unquote(thumb)
        assert prefix == "" and Path(thumb).is_file()
        assert thumb == env.app.ctx.thumbnail("px", point["path"])


def test_compare_scores_come_from_labels_and_are_cached_per_generation(env):
    first = env.app.compare.metrics_for("px")
    assert set(first) >= {"recall@1", "map@10", "knn_acc"} and first["count"] == 13
    assert env.app.compare.metrics_for("px") is first
    assert "recall@1" in env.app.compare.metrics_text(first)
    env.app.indexes.build(str(env.photos), "pixels", "px", "flat", True, progress=_no_progress)
    again = env.app.compare.metrics_for("px")
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


def test_the_train_form_is_the_settings_models_ui_settings_at_their_ui_defaults(env):
    from training.methods import METHODS
    from training.settings import choices_of, setting, ui_default, ui_settings

    app = build_app(env.ws, train_dirs=[str(env.photos)]).lookalike
    fields = app.train.fields
    assert list(fields) == [s.name for s in ui_settings()]
    shown = {s.name: "" if ui_default(s) is None else ui_default(s) for s in ui_settings()}  # "": not given
    assert {name: f.value for name, f in fields.items()} == shown
    # the trainer's own defaults, not a UI copy of them
    assert fields["batch_size"].value == setting("batch_size").default == 128
    assert fields["stem"].value == setting("stem").default == "default"
    assert [c[0] for c in fields["method"].choices] == list(METHODS) == list(choices_of(setting("method")))
    assert fields["method"].info == setting("method").help


def test_training_is_polled_into_a_loss_curve_and_can_be_stopped(env):
    started = threading.Event()
    configs = []

    def train(config, progress=True, stop_event=None, on_log=None):
        configs.append(config)
        for step in range(4):
            on_log({"step": step, "epoch": 0, "loss": 4.0 - step, "lr": 0.01, "images_per_s": 50.0})
        started.set()
        stop_event.wait(10)
        return env.root / "runs" / "fake"

    app = LookalikeApp(env.ws, JobManager(train=train), runs_dir=env.root / "runs")
    form = app.train.form(method="byol", backbone="resnet10t", image_size=32, batch_size=8, minutes=0.5,
                          stem="small")
    with pytest.raises(gr.Error, match="does not exist"):
        app.train.start(str(env.root / "nowhere"), *form)
    with pytest.raises(gr.Error, match="--batch-size must be an integer >= 2"):
        app.train.start(str(env.photos), *app.train.form(batch_size=1))
    job_id, timer, message = app.train.start(str(env.photos), *form)
    assert timer.active and "byol" in message
    assert started.wait(10)
    config = configs[0]  # the form's values, converted, in the trainer's own config
    assert (config.method, config.image_size, config.batch_size, config.minutes, config.stem) == \
        ("byol", 32, 8, 0.5, "small")
    assert config.data_dir == str(env.photos.resolve()) and config.log_every == 1
    assert config.given("batch_size") and not config.given("lr")
    view = app.train.poll(job_id, None, None)
    assert view.job == job_id
    assert list(view.plot["loss"]) == [4.0, 3.0, 2.0, 1.0]
    assert "loss 1.0000" in view.status and "running" in view.status and "<progress" in view.bar
    assert view.stop.interactive and not view.build_row.visible and view.timer.active
    assert app.train.stop(job_id).startswith("Stopping")
    app.jobs.get(job_id).wait(10)
    view = app.train.poll(job_id, None, None)
    assert "stopped" in view.status and "fake" in view.status
    assert not view.stop.interactive and view.build_row.visible and not view.timer.active
    # a form left at its defaults gives only the UI preset: the trainer's default start applies, and the run is
    # named after the network it will train
    from retrieval import pretrained

    started.clear()
    job_id, _, _ = app.train.start(str(env.photos), *app.train.form())
    assert started.wait(30) and len(configs) == 2
    app.train.stop(job_id)
    app.jobs.get(job_id).wait(10)
    plain = configs[1]
    assert set(plain.explicit) == set(UI_PRESET) | {"out"}
    if pretrained.DEFAULT_SPEC in pretrained.available_pretrained():
        assert plain.init == pretrained.DEFAULT_SPEC and "-tf_efficientnet_lite0-" in Path(plain.out).name
    else:
        assert plain.init is None and f"-{plain.backbone}-" in Path(plain.out).name


def test_the_live_view_follows_the_next_run_of_a_sequence(env):
    jobs = JobManager()
    app = LookalikeApp(env.ws, jobs)
    gate = threading.Event()
    first = jobs.start("train", "first", lambda job: "runs/first")
    first.wait(10)
    second = jobs.start("train", "second", lambda job: gate.wait(10))
    view = app.train.poll(first.id, None, None)
    assert view.job == second.id and view.timer.active
    gate.set()
    second.wait(10)
    assert app.train.resume()[0] == second.id


def test_build_app_wires_only_search_compare_and_marks_as_public_endpoints(env):
    demo = build_app(env.ws, examples=[str(env.images[0])], train_dirs=[str(env.photos)])
    names = {d.api_name for d in demo.fns.values() if d.api_visibility == "public"}
    assert names == {"search", "compare", "mark", "learn_marks"}


@pytest.mark.slow
def test_train_an_encoder_then_index_with_it_from_the_train_tab(env, tmp_path):
    """The real trainer, for a few seconds: the run it writes becomes an index that finds its own images."""
    ws = Workspace(tmp_path / "indexes")
    app = build_app(ws, jobs=JobManager(), runs_dir=tmp_path / "runs").lookalike  # laid out: it has index pickers
    form = app.train.form(method="simclr", backbone="resnet10t", image_size=32, batch_size=8, minutes=0.05,
                          stem="small")
    job_id, _, _ = app.train.start(str(env.photos), *form)
    job = app.jobs.get(job_id)
    assert job.wait(300) and job.status == "done", job.error
    view = app.train.poll(job_id, None, None)
    assert len(view.plot) >= 1 and (view.plot["loss"] > 0).all()
    assert "done" in view.status and not view.stop.interactive and view.build_row.visible

    build_id, timer, _ = app.train.build_index(job_id, "trained")
    assert timer.active
    assert app.jobs.get(build_id).wait(300)
    view = app.train.poll(job_id, build_id, None)
    assert "**trained** ready: 13 images" in view.build_status and view.announced == build_id
    assert not view.timer.active
    search_dd, compare_dd, refresh_dd, _ = view.pickers
    assert search_dd.choices == [("trained", "trained")] and search_dd.value == "trained"
    assert compare_dd.value == ["trained"] and refresh_dd.value == "trained"
    again = app.train.poll(job_id, build_id, view.announced)
    assert again.pickers == (gr.skip(),) * 4  # announced once, then left alone
    assert len(again.outputs()) == len(again) - 1 + 4  # the timer's outputs: every field, each picker in place
    store = ws.store("trained")
    assert store.manifest["encoder"]["kind"] == "run"
    results = ws.search("trained", env.images[2], k=3)
    assert results[0].path == env.images[2].relative_to(env.photos).as_posix()
    assert results[0].score == pytest.approx(1.0, abs=1e-4)


def test_thumbnails_are_made_only_for_items_of_an_index_and_go_with_them(tmp_path):
    photos = tmp_path / "photos"
    images = make_collection(photos, n_classes=2, per_class=2, size=16, seed=8)
    ws = Workspace(tmp_path / "indexes")
    app = LookalikeApp(ws, JobManager(), runs_dir=tmp_path / "runs")
    app.indexes.build(str(photos), "pixels", "px", "flat", False, progress=_no_progress)
    thumbs = app.ctx.thumbs.directory
    (tmp_path / "secret.png").write_bytes(images[0].read_bytes())
    for not_an_item in ("../secret.png", str(tmp_path / "secret.png"), "photos/nothing.png"):
        with pytest.raises(LookalikeError, match="is not an item of index 'px'"):
            app.ctx.thumbnail("px", not_an_item)
    assert not thumbs.exists() or not any(thumbs.rglob("*.jpg"))

    rels = [p.relative_to(photos).as_posix() for p in images]
    made = {rel: Path(app.ctx.thumbnail("px", rel)) for rel in rels}
    assert all(p.is_file() and p.is_relative_to(thumbs) for p in made.values())
    for p in made.values():
        os.utime(p, (1, 1))  # older than a sweep's grace period
    images[0].unlink()
    app.indexes.refresh("px", progress=_no_progress)
    assert not made[rels[0]].exists()
    assert all(made[rel].exists() for rel in rels[1:])


def test_the_train_tab_shows_what_the_defaults_resolve_to(env, monkeypatch):
    from retrieval import pretrained

    if pretrained.DEFAULT_SPEC in pretrained.available_pretrained():
        tab = LookalikeApp(env.ws, JobManager(), runs_dir=env.root / "runs").train
        # the form says resnet10t and 64 px, but with the pretrained extra the defaults fine-tune it at its own size
        shown = dict(zip((s.name for s in tab.settings), tab.form()))
        assert (shown["backbone"], shown["image_size"]) == ("resnet10t", 64)
        plan = tab.plan(str(env.photos), *tab.form())
        assert f"starting from **the weights of `{pretrained.DEFAULT_SPEC}`**" in plan
        assert "**tf_efficientnet_lite0** at **224 px**, batch 32" in plan and "BatchNorm frozen" in plan
    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(env.root / "no-packages")])
    tab = LookalikeApp(env.ws, JobManager(), runs_dir=env.root / "runs").train
    plan = tab.plan(str(env.photos), *tab.form())
    assert "simclr on **resnet10t** at **64 px**, batch 128, starting from **random weights**" in plan
    assert "BatchNorm batch" in plan
    plan = tab.plan(str(env.photos), *tab.form(method="byol", image_size=32, batch_size=8))
    assert "byol on **resnet10t** at **32 px**, batch 8" in plan
    assert tab.plan(str(env.photos), *tab.form(batch_size=1)).startswith("**Will not start:** --batch-size must be")


def test_a_slow_map_is_computed_in_the_background_with_pca_meanwhile(env, monkeypatch):
    from retrieval.neighbours import MAPS, MapKind

    release, calls = threading.Event(), []

    def slow(vectors):
        calls.append(len(vectors))
        assert release.wait(120)
        return np.stack([np.arange(len(vectors)), -np.arange(len(vectors))], axis=1).astype(float)

    monkeypatch.setitem(MAPS, "slow", MapKind(slow, "a test map", slow=True))
    explore = env.app.explore
    placeholder, job_id, timer = explore.map("px", 3000, "slow")
    assert timer.active and job_id is not None and "being computed in the background" in placeholder.caption
    assert "principal components" in placeholder.caption and len(placeholder.value["data"]) == 13
    _, still, timer = explore.tick(job_id)  # not done yet: nothing new, the timer goes on
    assert still == job_id and timer.active
    release.set()
    assert env.app.jobs.get(job_id).wait(120)
    plot, done_id, timer = explore.tick(job_id)
    assert done_id is None and timer.active is False and "a test map" in plot.caption
    xs = [dict(zip(plot.value["columns"], row))["x"] for row in plot.value["data"]]
    assert xs == list(range(13))
    # the same points of the same index again: the finished map, not a second computation
    again, again_id, timer = explore.map("px", 3000, "slow")
    assert calls == [13] and again_id is None and "a test map" in again.caption


def test_a_map_whose_package_is_missing_says_how_to_install_it(env, monkeypatch):
    from retrieval.neighbours import MAPS, MapKind

    monkeypatch.setitem(MAPS, "absent", MapKind(lambda v: v, "x", module="no_such_module_here", extra="maps"))
    with pytest.raises(gr.Error, match=r"pip install 'lookalike\[maps\]'"):
        env.app.explore.map("px", 3000, "absent")


def test_search_toggle_asks_for_query_expansion_and_explore_starts_at_the_calibrated_threshold(env, monkeypatch):
    from retrieval.workspace import QE_NEIGHBOURS

    asked = []
    real = env.ws.search
    monkeypatch.setattr(env.ws, "search", lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    monkeypatch.setattr("app.tabs.search.require_image", lambda image: image["path"])  # as if uploaded
    query = {"path": str(env.images[0])}
    plain = env.app.search.search(query, "px", 3, False)[1]
    expanded = env.app.search.search(query, "px", 3, True)[1]
    assert [kw["qe"] for kw in asked] == [0, QE_NEIGHBOURS]
    assert plain[0]["path"] == expanded[0]["path"]
    calibrated = env.ws.info("px")["duplicates"]["threshold"]
    assert env.app.explore.default_threshold("px")["value"] == round(calibrated, 3)
