"""Background jobs for the web UI: training runs and index builds that outlive one request.

A :class:`JobManager` belongs to one app instance (never a module global). Each :class:`Job` runs one function on a
daemon thread and collects what the page polls for: status, progress (done / total), log records (the trainer's
``on_log`` dicts) and a stop flag the function is expected to check. Everything a poller reads comes from
:meth:`Job.snapshot`, a copy taken under the job's lock, so a page refresh never sees a half-updated job.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from retrieval.errors import LookalikeError

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED, STOPPED = "pending", "running", "done", "failed", "stopped"
FINISHED = (DONE, FAILED, STOPPED)


@dataclass
class Job:
    """One unit of background work. The function it runs receives the job and reports through it."""

    id: str
    kind: str  # "train", "build", … (free-form, used to find the latest job of a kind)
    title: str
    max_records: int = 20_000
    status: str = PENDING
    done: int = 0
    total: int = 0
    message: str = ""
    records: list[dict] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    meta: dict = field(default_factory=dict)  # what the job was started with (e.g. data_dir, minutes)
    stop_event: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    # ----- called from the worker thread ----------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append a log record (e.g. ``{"step", "epoch", "loss", "lr", "images_per_s"}``).

        Past ``max_records`` every other old record is dropped, so a week-long run still plots in constant memory.
        """
        with self._lock:
            self.records.append(dict(record))
            if len(self.records) > self.max_records:
                half = self.max_records // 2
                self.records = self.records[:half:2] + self.records[half:]

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        with self._lock:
            self.done, self.total = int(done), int(total)
            if message is not None:
                self.message = message

    def say(self, message: str) -> None:
        with self._lock:
            self.message = message

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    # ----- called from anywhere -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the function to stop; it decides when (a trainer saves a checkpoint first)."""
        self.stop_event.set()

    @property
    def finished_ok(self) -> bool:
        return self.status in (DONE, STOPPED) and self.result is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` seconds passed (False)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status in FINISHED

    def snapshot(self) -> dict:
        """A consistent copy of the job's state for display."""
        with self._lock:
            now = time.time()
            end = self.finished or now
            return {
                "id": self.id, "kind": self.kind, "title": self.title, "status": self.status,
                "done": self.done, "total": self.total, "message": self.message,
                "records": list(self.records), "result": self.result, "error": self.error,
                "stopping": self.stop_event.is_set(),
                "elapsed": (end - self.started) if self.started else 0.0,
            }


class JobManager:
    """Starts jobs on daemon threads and keeps them (and their logs) for the life of the app."""

    def __init__(self, max_jobs: int = 50, train: Callable[..., Any] | None = None):
        self.max_jobs = max_jobs
        self.train = train  # what run_training calls; None: training.trainer.train, imported when first needed
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, kind: str, title: str, fn: Callable[[Job], Any], exclusive: bool = False,
              meta: dict | None = None) -> Job:
        """Run ``fn(job)`` in the background; its return value becomes ``job.result``.

        With ``exclusive``, refuse to start while another job of the same kind is running (two trainings on
        the same CPU cores only make both slow).
        """
        with self._lock:
            if exclusive:
                busy = [j for j in self._jobs.values() if j.kind == kind and j.status not in FINISHED]
                if busy:
                    raise LookalikeError(f"a {kind} job is already running ({busy[0].title}); "
                                         "wait for it or stop it first")
            job = Job(id=f"{kind}-{next(self._ids)}", kind=kind, title=title, meta=dict(meta or {}))
            self._jobs[job.id] = job
            self._forget_old()
        job._thread = threading.Thread(target=self._run, args=(job, fn), name=f"lookalike-{job.id}", daemon=True)
        job._thread.start()
        return job

    def run_training(self, config: Any, label: str | None = None, wait: bool = False,
                     stop: threading.Event | None = None) -> Job:
        """Train ``config`` (a ``training.config.TrainConfig``) as a "train" job; ``job.result`` is the run dir.

        It runs ``self.train(config, progress=False, stop_event=…, on_log=…)``; the job's log records are the
        ``on_log`` dicts. ``stop`` (an outside event, e.g. the demo's shutdown flag) stops the job as well as its
        own Stop button. Only one training runs at a time: without ``wait`` a second one is refused; with ``wait``
        it starts when the first ends, and the call blocks until it has finished, raising its error if it failed.
        """

        def work(job: Job):
            train = self.train
            if train is None:
                from training.trainer import train  # torch is imported in the background, not in the request
            if stop is not None:
                threading.Thread(target=_relay_stop, args=(stop, job), daemon=True,
                                 name=f"lookalike-{job.id}-stop").start()
            return train(config, progress=False, stop_event=job.stop_event, on_log=job.log)

        title = label or f"{config.method} on {config.data_dir}"
        meta = {k: getattr(config, k) for k in ("data_dir", "method", "backbone", "minutes", "epochs", "out")}
        while True:
            try:
                job = self.start("train", title, work, exclusive=True, meta=meta)
                break
            except LookalikeError:
                if not wait:
                    raise
                # A waiting caller (the demo's background loop) queues behind a training started from the page.
                if (stop or threading.Event()).wait(1.0):
                    raise LookalikeError("stopped while waiting for another training to finish") from None
        if wait:
            job.wait()
            if job.status == FAILED:
                raise LookalikeError(f"training failed: {job.error}")
        return job

    @staticmethod
    def _run(job: Job, fn: Callable[[Job], Any]) -> None:
        with job._lock:
            job.status, job.started = RUNNING, time.time()
        try:
            result = fn(job)
        except LookalikeError as exc:
            status, result, error = FAILED, None, str(exc)
        except Exception as exc:  # a background thread has nobody else to report to
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            status, result, error = FAILED, None, f"{type(exc).__name__}: {exc}"
        else:
            status, error = (STOPPED if job.stop_event.is_set() else DONE), None
        with job._lock:
            job.status, job.result, job.error, job.finished = status, result, error, time.time()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in FINISHED]
        for j in finished[: max(0, len(self._jobs) - self.max_jobs)]:
            del self._jobs[j.id]

    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def list(self, kind: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if kind is None or j.kind == kind]

    def latest(self, kind: str) -> Job | None:
        jobs = self.list(kind)
        return jobs[-1] if jobs else None

    def stop(self, job_id: str) -> bool:
        job = self.get(job_id)
        if job is None or job.status in FINISHED:
            return False
        job.stop()
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask every running job to stop and wait (up to ``timeout`` seconds in all) for them to finish."""
        deadline = time.time() + timeout
        jobs = self.list()
        for job in jobs:
            job.stop()
        for job in jobs:
            job.wait(max(0.0, deadline - time.time()))


def _relay_stop(outside: threading.Event, job: Job) -> None:
    """Forward an outside stop request to ``job`` until the job ends."""
    while job.status not in FINISHED:
        if outside.wait(0.5):
            job.stop()
            return
