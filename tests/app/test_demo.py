"""The demo: what it builds with and without a pretrained encoder, the order of its trainings, and the indexes the
page opens on (Search on the best there is, Compare on the baselines beside the pretrained and fine-tuned ones)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app import demo
from app.opening import Opening
from app.demo_data import DemoData
from app.ui import LookalikeApp
from retrieval import pretrained
from retrieval.errors import LookalikeError
from retrieval.synthetic import make_collection
from retrieval.workspace import Workspace


@pytest.fixture
def no_pretrained(monkeypatch, tmp_path):
    """No packaged weights on this machine: the package search looks in an empty folder."""
    empty = tmp_path / "no-packages"
    empty.mkdir()
    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(empty)])


@pytest.fixture
def with_pretrained(monkeypatch):
    """The pretrained encoder counted as installed (whether or not its package is)."""
    monkeypatch.setattr(pretrained, "available_pretrained", lambda: [demo.PRETRAINED_SPEC])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DemoData:
    root = tmp_path_factory.mktemp("demo")
    make_collection(root / "collection", n_classes=3, per_class=3, size=32, seed=2)
    make_collection(root / "queries", n_classes=3, per_class=1, size=32, seed=2, draw_seed=9)
    return DemoData(root / "collection", root / "queries", "generated")


# -- which index the page opens on ---------------------------------------------------------------------------------
def test_search_opens_on_the_best_index_there_is():
    pick = demo.OPENING.search_index
    assert pick(sorted(demo.RANKING)) == demo.FINETUNED
    assert pick(["demo-moco", "demo-pixels", "demo-pretrained", "demo-random", "demo-simclr"]) == demo.PRETRAINED
    assert pick(["demo-byol", "demo-moco", "demo-pixels", "demo-random", "demo-simclr"]) == "demo-simclr"
    assert pick(["demo-byol", "demo-pixels", "demo-random"]) == "demo-byol"
    assert pick(["demo-pixels", "demo-random"]) == demo.RANDOM
    assert pick(["holiday", "demo-pixels"]) == demo.PIXELS
    assert pick(["holiday", "zoo"]) == "holiday"  # none of the demo's: the first, as without a preference
    assert pick([]) is None


def test_compare_opens_on_the_baselines_beside_pretrained_and_finetuned():
    assert demo.OPENING.compare_indexes(sorted(demo.RANKING)) == [
        demo.PIXELS, demo.RANDOM, "demo-simclr", demo.PRETRAINED, demo.FINETUNED]
    assert demo.OPENING.compare_indexes(["demo-moco", "demo-pixels", "demo-random"]) == [demo.PIXELS, demo.RANDOM]
    assert demo.OPENING.compare_indexes(["holiday", "zoo"]) == ["holiday", "zoo"]
    assert Opening().compare_indexes(["b", "a"]) == ["b", "a"] and Opening().search_index(["b", "a"]) == "b"


def test_the_ranking_names_every_index_the_demo_makes(with_pretrained):
    plan = demo.demo_plan()
    made = set(plan.indexes) | {t.name for t in plan.trainings}
    assert made == set(demo.RANKING)
    assert set(demo.COMPARED) <= made


def test_the_page_opens_its_pickers_where_the_opening_says(tiny, tmp_path):
    ws = Workspace(tmp_path / "indexes")
    for name in ("demo-moco", demo.PIXELS, demo.PRETRAINED, demo.RANDOM):  # pixels is enough to have the names
        ws.build(tiny.collection, "pixels", name, progress=False)
    app = LookalikeApp(ws, opening=demo.OPENING)
    app.page()
    assert app.search.index.value == demo.PRETRAINED
    assert app.compare.indexes.value == [demo.PIXELS, demo.RANDOM, demo.PRETRAINED]
    plain = LookalikeApp(ws)
    plain.page()
    assert plain.search.index.value == "demo-moco"
    assert plain.compare.indexes.value == ["demo-moco", demo.PIXELS, demo.PRETRAINED, demo.RANDOM]


# -- what the demo builds ------------------------------------------------------------------------------------------
def test_with_a_pretrained_encoder_the_plan_indexes_it_and_finetunes_it_first(with_pretrained, tmp_path):
    plan = demo.demo_plan()
    assert plan.notes == []
    assert plan.indexes == {**demo.baseline_specs(), demo.PRETRAINED: f"{demo.PRETRAINED_SPEC}?pool=grid"}
    assert [t.name for t in plan.trainings] == [demo.FINETUNED, *demo.TRAINED]
    cfg = plan.trainings[0].config(tmp_path, tmp_path / "run", 2.5, resume=False)
    assert (cfg.method, cfg.init, cfg.pool, cfg.minutes, cfg.out, cfg.image_size, cfg.batch_size) == (
        "simclr", demo.PRETRAINED_SPEC, demo.DEMO_POOL, 2.5, str(tmp_path / "run"), 128, 64)
    # the fine-tuning defaults are the trainer's: learning rate, augmentation and BatchNorm not given
    assert cfg.given("init") and cfg.given("image_size") and not any(cfg.given(n) for n in ("lr", "augment",
                                                                                              "batchnorm"))
    cfg.validate()
    scratch = plan.trainings[1].config(tmp_path, tmp_path / "run", 2.5, resume=True)
    assert (scratch.method, scratch.init, scratch.resume) == ("simclr", None, True)
    assert scratch == demo.demo_config("simclr", tmp_path, tmp_path / "run", 2.5, resume=True)


def test_without_a_pretrained_encoder_the_plan_leaves_it_out_and_says_why(no_pretrained):
    plan = demo.demo_plan()
    assert plan.indexes == demo.baseline_specs()
    assert [t.name for t in plan.trainings] == list(demo.TRAINED)
    assert len(plan.notes) == 1
    assert "no pretrained encoder installed" in plan.notes[0] and "pip install efficientnet-lite0" in plan.notes[0]


def test_without_the_init_setting_the_finetune_is_left_out_and_said(with_pretrained, monkeypatch):
    import training.settings

    monkeypatch.setattr(training.settings, "SETTINGS", tuple(s for s in training.settings.SETTINGS
                                                             if s.name != "init"))
    plan = demo.demo_plan()
    assert demo.PRETRAINED in plan.indexes
    assert [t.name for t in plan.trainings] == list(demo.TRAINED)
    assert len(plan.notes) == 1 and "no init setting" in plan.notes[0]


def _run_without_ui(tiny, tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setattr(demo, "prepare_demo_data", lambda data, log: tiny)
    demo.run_demo(indexes=str(tmp_path / "indexes"), train=False, open_app=False)
    return Workspace(tmp_path / "indexes")


def test_the_demo_without_a_pretrained_encoder_logs_one_line_why(no_pretrained, tiny, tmp_path, monkeypatch,
                                                                 capsys):
    ws = _run_without_ui(tiny, tmp_path, monkeypatch)
    assert sorted(m["name"] for m in ws.list()) == [demo.PIXELS, demo.RANDOM]
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "pretrained" in line] == [
        f"[demo] note: {demo.demo_plan().notes[0]}"]
    assert "lookalike search IMAGE, which searches demo-random" in err
    assert ws.default_index() == demo.RANDOM  # the best index there is, marked default for 'lookalike search IMAGE'


def test_the_demo_keeps_a_default_index_the_user_chose(no_pretrained, tiny, tmp_path, monkeypatch, capsys):
    ws = Workspace(tmp_path / "indexes")
    ws.build(tiny.collection, "pixels", "mine", progress=False)
    ws.set_default_index("mine")
    _run_without_ui(tiny, tmp_path, monkeypatch)
    assert ws.default_index() == "mine"


@pytest.mark.skipif(demo.PRETRAINED_SPEC not in pretrained.available_pretrained(),
                    reason="the pretrained extra is not installed")
def test_the_demo_indexes_with_the_installed_pretrained_encoder(tiny, tmp_path, monkeypatch, capsys):
    ws = _run_without_ui(tiny, tmp_path, monkeypatch)
    assert sorted(m["name"] for m in ws.list()) == [demo.PIXELS, demo.PRETRAINED, demo.RANDOM]
    encoder = ws.store(demo.PRETRAINED).manifest["encoder"]
    assert "tf_efficientnet_lite0" in str(encoder) and encoder.get("pool") == "grid"
    assert "lookalike search IMAGE, which searches demo-pretrained" in capsys.readouterr().err


# -- the trainings behind the UI -----------------------------------------------------------------------------------
class FakeJobs:
    """Records each training; the ones named in ``fail`` raise as a failed job does."""

    def __init__(self, fail=()):
        self.trained, self.fail = [], set(fail)

    def run_training(self, config, label=None, wait=False, stop=None):
        name = Path(config.out).name
        self.trained.append((name, label, config.resume))
        if name in self.fail:
            raise LookalikeError("training failed: out of patience")


def test_the_trainings_run_in_plan_order_and_a_failure_does_not_stop_the_others(with_pretrained, tiny, tmp_path,
                                                                                monkeypatch, capsys):
    indexed = []
    monkeypatch.setattr(demo, "ensure_index", lambda ws, data, name, spec: indexed.append((name, spec)))
    runs = tmp_path / "runs"
    (runs / "demo-moco").mkdir(parents=True)
    (runs / "demo-moco" / "state.pt").write_bytes(b"")  # an interrupted run: resumed
    jobs = FakeJobs(fail={demo.FINETUNED})
    demo.train_and_index(None, tiny, runs, 1.0, threading.Event(), jobs)
    assert jobs.trained == [(demo.FINETUNED, "demo fine-tune", False), ("demo-simclr", "demo simclr", False),
                            ("demo-moco", "demo moco", True), ("demo-byol", "demo byol", False)]
    assert indexed == [(n, str(runs / n)) for n in demo.TRAINED]
    assert f"{demo.FINETUNED}: training failed: out of patience; going on with the others" in capsys.readouterr().err


def test_a_stopped_demo_trains_and_indexes_nothing_more(no_pretrained, tiny, tmp_path, monkeypatch):
    indexed, stop = [], threading.Event()
    monkeypatch.setattr(demo, "ensure_index", lambda ws, data, name, spec: indexed.append(name))

    class StopDuringTheFirst(FakeJobs):
        def run_training(self, config, label=None, wait=False, stop=None):
            super().run_training(config, label, wait, stop)
            stop.set()

    jobs = StopDuringTheFirst()
    demo.train_and_index(None, tiny, tmp_path / "runs", 1.0, stop, jobs)
    assert [t[0] for t in jobs.trained] == ["demo-simclr"] and indexed == []
