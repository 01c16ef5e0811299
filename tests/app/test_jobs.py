"""Background jobs: results, failures, progress, logs and stop requests, as the web UI polls them."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from app.jobs import DONE, FAILED, STOPPED, JobManager
from retrieval.errors import LookalikeError


def test_a_job_reports_progress_logs_and_its_result():
    jobs = JobManager()
    release = threading.Event()

    def work(job):
        for step in range(3):
            job.log({"step": step, "loss": 1.0 / (step + 1)})
        job.progress(2, 4, "half way")
        release.wait(10)
        return "result"

    job = jobs.start("build", "test", work)
    while job.snapshot()["done"] != 2:
        threading.Event().wait(0.01)
    snap = job.snapshot()
    assert snap["status"] == "running" and snap["message"] == "half way" and snap["total"] == 4
    assert [r["step"] for r in snap["records"]] == [0, 1, 2]
    release.set()
    assert job.wait(10)
    assert job.status == DONE and job.result == "result" and job.finished_ok
    assert jobs.get(job.id) is job and jobs.latest("build") is job and jobs.latest("train") is None


def test_errors_become_the_job_error_not_a_crash():
    jobs = JobManager()
    user = jobs.start("build", "user error", lambda job: (_ for _ in ()).throw(LookalikeError("folder is empty")))
    bug = jobs.start("build", "bug", lambda job: 1 / 0)
    assert user.wait(10) and bug.wait(10)
    assert (user.status, user.error) == (FAILED, "folder is empty")
    assert bug.status == FAILED and bug.error.startswith("ZeroDivisionError")
    assert not user.finished_ok


def test_stop_sets_the_event_the_work_watches_and_ends_as_stopped():
    jobs = JobManager()

    def work(job):
        assert job.stop_event.wait(10)
        return "checkpoint"

    job = jobs.start("train", "t", work)
    assert jobs.stop(job.id)
    assert job.wait(10)
    assert job.status == STOPPED and job.result == "checkpoint" and job.finished_ok
    assert not jobs.stop(job.id)  # already over


def test_exclusive_jobs_of_a_kind_run_one_at_a_time():
    jobs = JobManager()
    gate = threading.Event()
    first = jobs.start("train", "first", lambda job: gate.wait(10), exclusive=True)
    with pytest.raises(LookalikeError, match="already running"):
        jobs.start("train", "second", lambda job: None, exclusive=True)
    jobs.start("build", "other kind", lambda job: None, exclusive=True).wait(10)
    gate.set()
    first.wait(10)
    assert jobs.start("train", "third", lambda job: None, exclusive=True).wait(10)


def test_log_records_are_thinned_past_the_cap():
    jobs = JobManager()

    def work(job):
        job.max_records = 100
        for step in range(1000):
            job.log({"step": step})

    job = jobs.start("train", "long", work)
    job.wait(10)
    steps = [r["step"] for r in job.snapshot()["records"]]
    assert len(steps) <= 100 and steps == sorted(steps) and steps[-1] == 999 and steps[0] == 0


@dataclass
class _Config:
    data_dir: str
    method: str = "simclr"
    minutes: float | None = None
    epochs: int | None = None
    out: str | None = None
    backbone: str = "resnet18"


def test_run_training_passes_the_jobs_stop_event_and_log_to_the_trainer(tmp_path):
    calls = {}

    def fake_train(config, progress=True, stop_event=None, on_log=None):
        calls.update(config=config, progress=progress)
        for step in range(5):
            on_log({"step": step, "epoch": 0, "loss": 5.0 - step, "lr": 0.1, "images_per_s": 100.0})
        assert stop_event.wait(10)
        return tmp_path / "run"

    outside = threading.Event()
    jobs = JobManager(train=fake_train)
    job = jobs.run_training(_Config(str(tmp_path), minutes=1.0), label="fake")
    assert job.meta["minutes"] == 1.0 and job.meta["data_dir"] == str(tmp_path)
    with pytest.raises(LookalikeError, match="already running"):
        jobs.run_training(_Config(str(tmp_path)))
    job.stop()
    job.wait(10)
    assert job.status == STOPPED and job.result == tmp_path / "run"
    assert calls["progress"] is False
    assert [r["loss"] for r in job.snapshot()["records"]] == [5.0, 4.0, 3.0, 2.0, 1.0]

    # A waiting caller queues behind a training started elsewhere instead of failing.
    blocker = jobs.run_training(_Config(str(tmp_path)), label="from the page")
    threading.Timer(0.3, blocker.stop).start()

    def stop_the_demo_job_once_it_runs():
        while jobs.latest("train").title != "demo":
            threading.Event().wait(0.05)
        jobs.latest("train").stop()

    threading.Thread(target=stop_the_demo_job_once_it_runs, daemon=True).start()
    queued = jobs.run_training(_Config(str(tmp_path)), label="demo", wait=True)
    assert blocker.status == STOPPED
    assert queued is jobs.latest("train") and queued.title == "demo" and queued.status == STOPPED

    # An outside event (the demo's shutdown flag) stops a waiting caller's job too.
    threading.Timer(0.2, outside.set).start()
    job2 = jobs.run_training(_Config(str(tmp_path)), wait=True, stop=outside)
    assert job2.status == STOPPED


def test_run_training_with_wait_raises_the_failure(tmp_path):
    def broken_train(config, progress=True, stop_event=None, on_log=None):
        raise LookalikeError("no images in folder")

    with pytest.raises(LookalikeError, match="training failed: no images in folder"):
        JobManager(train=broken_train).run_training(_Config(str(tmp_path)), wait=True)

