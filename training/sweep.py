"""Which method for this folder? Train each method for the same minutes, index the folder with each, score every
index with the label-free scorecard (the same seed and sample for all), and rank them beside ``pixels`` and the
pretrained start.

``sweep(folder, minutes)`` writes ``runs/sweep-NAME/`` (:data:`BOARD`)::

    moco/, simclr/, …      one training run per method (resumable with the trainer's --resume)
    leaderboard.json       settings and one row per scored encoder (score, 95% interval, parts); written after each
    leaderboard.txt        the same as a table, best first
    leaderboard.png        a bar chart with the intervals (where matplotlib is installed)

and marks the winner's index as the default one (:meth:`retrieval.workspace.Workspace.set_default_index`). A sweep
run again with the same name skips the rows already on its leaderboard and resumes a method whose training was cut
short, so an interrupted sweep goes on where it stopped.

The default methods (:data:`RECOMMENDED`) are the ones that never hurt their start by more than 0.007 on the photo
benchmarks (README "Which methods win where", 2-minute fine-tunes from Lite0, one run each): MoCo v2 (ahead of the
pretrained encoder on all three), SimCLR (the default method: ahead on copy detection, level elsewhere) and Barlow
Twins (best on the textured Tux Paint set, within 0.001 of the best on copy detection, 0.007 under on the white one).
BYOL, SimSiam, RotNet and the pairwise losses moved at least one benchmark the wrong way by 0.012 to 0.044; ask for
them with ``methods=``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import LookalikeError
from retrieval.fsutil import atomic_write_bytes, atomic_write_json, now_iso
from retrieval.runformat import STATE

__all__ = ["RECOMMENDED", "BASELINES", "BOARD", "SweepPlan", "plan_sweep", "sweep", "format_table", "sweep_dir",
           "ranked"]

RECOMMENDED = ("moco", "simclr", "barlow")
BASELINES = ("pixels", "start")  # rows scored beside the methods: raw pixels and the pretrained start
BOARD = "leaderboard"  # .json, .txt, .png in the sweep's folder
BOARD_VERSION = 1

Event = dict[str, Any]  # what progress(event) gets: {"row", "stage", "done", "total", "message", "record"?}


@dataclass
class SweepPlan:
    """What a sweep does, checked before anything runs."""

    data_dir: Path
    minutes: float
    methods: tuple[str, ...]
    name: str
    runs: Path
    indexes: Path
    seed: int = 0
    sample: int | None = None
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)  # more training settings for every method (tests)
    start: str | None = None  # the pretrained start every method fine-tunes from (None: random weights)
    paths: list[Path] = field(default_factory=list)  # the folder's images, scored by every row

    @property
    def dir(self) -> Path:
        return sweep_dir(self.runs, self.name)

    def rows(self) -> list[tuple[str, str]]:
        """(row name, kind) in the order they run: the baselines, then the methods."""
        return [(b, "baseline") for b in BASELINES if self.spec(b)] + [(m, "method") for m in self.methods]

    def spec(self, baseline: str) -> str | None:
        """The encoder of a baseline row (None: the row is left out)."""
        return self.start if baseline == "start" else baseline

    def index_name(self, row: str) -> str:
        return f"sweep-{self.name}-{row}"


def sweep_dir(runs: str | Path, name: str) -> Path:
    return Path(runs) / f"sweep-{name}"


def plan_sweep(data_dir: str | Path, minutes: float, methods: list[str] | tuple[str, ...] | None = None, *,
               name: str | None = None, runs: str | Path = "runs", indexes: str | Path = "indexes", seed: int = 0,
               sample: int | None = None, device: str = "cpu", settings: dict[str, Any] | None = None) -> SweepPlan:
    """Check the sweep's input (a folder with images, known methods that learn without a teacher, a positive
    budget) and resolve what it will do. Raises LookalikeError with what to change."""
    from retrieval.collection import scan
    from training.methods import METHODS, get_method
    from training.settings import default_init

    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise LookalikeError(f"no such folder: {data_dir}")
    if not (isinstance(minutes, (int, float)) and minutes > 0):
        raise LookalikeError(f"--minutes must be a positive number, got {minutes!r}")
    methods = tuple(dict.fromkeys(methods or RECOMMENDED))
    for m in methods:
        if m not in METHODS:
            raise LookalikeError(f"unknown method {m!r}: choose among {', '.join(METHODS)}")
        if get_method(m).uses_teacher:
            raise LookalikeError(f"--method {m} learns from a teacher; a sweep compares methods that learn from the "
                                 "folder alone (train it with 'lookalike train --method distill --teacher SPEC')")
    collection = scan(folder)
    if not collection.items:
        raise LookalikeError(f"{folder} has no images to sweep (found {len(collection.skipped)} unusable file(s))")
    settings = dict(settings or {})
    start = settings.get("init") or default_init(settings)
    name = _safe_name(name or folder.resolve().name)
    return SweepPlan(folder.resolve(), float(minutes), methods, name, Path(runs), Path(indexes), seed, sample, device,
                     settings, start if start != "scratch" else None,
                     [collection.abspath(it) for it in collection.items])


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:64]
    return safe or "folder"


def score(encoder, paths: list[Path], seed: int, sample: int | None):
    """The scorecard of one row (a seam: tests inject their own scorer)."""
    from retrieval.scorecard import score_encoder

    return score_encoder(encoder, paths, seed=seed, sample=sample)


def sweep(plan: SweepPlan, progress: Callable[[Event], None] | None = None, show: bool = True,
          stop_event: threading.Event | None = None) -> dict:
    """Run ``plan``: the rows not yet on its leaderboard, in order; returns the leaderboard (as written to
    ``leaderboard.json``). A stop asked for through ``stop_event`` ends the sweep after the training it interrupts
    saved its checkpoint; ``board["status"]`` is then ``"stopped"`` and running the sweep again goes on."""
    from retrieval.workspace import Workspace

    tell = progress or (lambda event: None)
    board = _open_board(plan)
    ws = Workspace(plan.indexes, device=plan.device)
    rows = plan.rows()
    for i, (row, kind) in enumerate(rows):
        if row in board["rows"]:
            tell({"row": row, "stage": "skipped", "done": i + 1, "total": len(rows),
                  "message": f"{row}: on the leaderboard already"})
            continue
        if kind == "method":
            spec = _train(plan, row, tell, show, stop_event, i, len(rows))
        else:
            spec = plan.spec(row)
        if spec is None:  # stopped while training
            board["status"] = "stopped"
            _write_board(plan, board)
            return board
        board["rows"][row] = _index_and_score(plan, ws, row, kind, spec, tell, show, i, len(rows))
        _write_board(plan, board)
        tell({"row": row, "stage": "done", "done": i + 1, "total": len(rows), "message": _row_line(board, row)})
    board["status"] = "done"
    board["winner"] = _mark_winner(plan, board)
    _write_board(plan, board)
    return board


def _train(plan: SweepPlan, method: str, tell, show: bool, stop_event, i: int, total: int) -> str | None:
    """Train (or resume) one method into the sweep's folder; returns its run directory, None if stopped."""
    from training.settings import config_from_values, setting
    from training.trainer import train

    out = plan.dir / method
    values = {**plan.settings, "method": method, "minutes": plan.minutes, "out": str(out), "seed": plan.seed,
              "device": plan.device}
    resuming = (out / STATE).is_file()
    if resuming:  # the run keeps what defines it (method, seed, init, …); the rest may change
        values = {k: v for k, v in values.items() if not setting(k).fixed} | {"resume": True}
    tell({"row": method, "stage": "train", "done": i, "total": total,
          "message": f"{method}: {'resuming' if resuming else 'training'} for {plan.minutes:g} min"})

    def on_log(record: dict) -> None:
        tell({"row": method, "stage": "train", "done": i, "total": total, "message": "", "record": record})

    run = train(config_from_values(str(plan.data_dir), values), progress=show, stop_event=stop_event, on_log=on_log)
    if stop_event is not None and stop_event.is_set():
        return None
    return str(run)


def _index_and_score(plan: SweepPlan, ws, row: str, kind: str, spec: str, tell, show: bool, i: int,
                     total: int) -> dict:
    """Index the folder with ``spec`` (replacing the sweep's earlier index of that row) and score it."""
    name = plan.index_name(row)
    tell({"row": row, "stage": "index", "done": i, "total": total, "message": f"{row}: indexing as {name}"})
    t0 = time.perf_counter()
    ws.build(plan.data_dir, spec, name, overwrite=True, progress=show)
    tell({"row": row, "stage": "score", "done": i, "total": total, "message": f"{row}: scoring"})
    card = score(ws.encoder(spec), plan.paths, plan.seed, plan.sample)
    return {"row": row, "kind": kind, "spec": spec, "index": name, "score": float(card.score),
            "ci": [float(card.ci[0]), float(card.ci[1])], "parts": dict(getattr(card, "parts", {}) or {}),
            "n_images": int(getattr(card, "n_images", len(plan.paths))), "seconds": time.perf_counter() - t0,
            "finished": now_iso()}


# -- the leaderboard -----------------------------------------------------------------------------------------------
def _open_board(plan: SweepPlan) -> dict:
    """The sweep's leaderboard so far (rows already scored are kept), or a new one."""
    import json

    path = plan.dir / f"{BOARD}.json"
    fresh = {"version": BOARD_VERSION, "data_dir": str(plan.data_dir), "minutes": plan.minutes, "seed": plan.seed,
             "sample": plan.sample, "start": plan.start, "methods": list(plan.methods), "rows": {},
             "status": "running", "winner": None, "created": now_iso()}
    if not path.is_file():
        plan.dir.mkdir(parents=True, exist_ok=True)
        return fresh
    try:
        board = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"{path} is unreadable ({exc}); remove it to start that sweep over") from None
    if board.get("data_dir") != str(plan.data_dir) or board.get("seed") != plan.seed or \
            board.get("sample") != plan.sample:
        raise LookalikeError(f"{plan.dir} holds a sweep of {board.get('data_dir')} (seed {board.get('seed')}, "
                             f"sample {board.get('sample')}); its rows would not compare with this one's: give "
                             "another --name")
    board["methods"] = list(dict.fromkeys([*board.get("methods", []), *plan.methods]))
    board["status"] = "running"
    return board


def ranked(board: dict) -> list[dict]:
    """The rows best first; on a tie the earlier row (the baselines run first: a method that did not help does not
    displace the start)."""
    return sorted(board["rows"].values(), key=lambda r: -r["score"])


def _row_line(board: dict, row: str) -> str:
    r = board["rows"][row]
    return f"{row}: scorecard {r['score']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def format_table(board: dict) -> str:
    """The leaderboard as text, best first."""
    lines = [f"{'rank':<5}{'encoder':<10}{'score':>7}  {'95% interval':<16}{'images':>7}  index",
             *(f"{i:<5}{r['row']:<10}{r['score']:>7.3f}  [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  {r['n_images']:>7}  "
               f"{r['index']}" for i, r in enumerate(ranked(board), 1))]
    if board.get("winner"):
        lines.append(f"winner: {board['winner']} (the default index now)")
    return "\n".join(lines) + "\n"


def _write_board(plan: SweepPlan, board: dict) -> None:
    board["updated"] = now_iso()
    board["chart"] = _write_chart(plan, board)
    atomic_write_json(plan.dir / f"{BOARD}.json", board)
    atomic_write_bytes(plan.dir / f"{BOARD}.txt", format_table(board).encode())


def _write_chart(plan: SweepPlan, board: dict) -> str | None:
    """A bar chart of the scores with their intervals; None (and a note in the board) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        board["chart_note"] = "no leaderboard.png: matplotlib is not installed (pip install 'lookalike[plots]')"
        return None
    rows = ranked(board)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    scores = [r["score"] for r in rows]
    err = [[r["score"] - r["ci"][0] for r in rows], [r["ci"][1] - r["score"] for r in rows]]
    ax.barh([r["row"] for r in rows], scores, xerr=err, capsize=3,
            color=["#4c72b0" if r["kind"] == "method" else "#999999" for r in rows])
    ax.set_xlabel("label-free scorecard (95% interval)")
    ax.set_title(f"{plan.data_dir.name}: {plan.minutes:g} min per method")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(plan.dir / f"{BOARD}.png", buf.getvalue())
    return str(plan.dir / f"{BOARD}.png")


def _mark_winner(plan: SweepPlan, board: dict) -> str | None:
    from retrieval.workspace import Workspace

    rows = ranked(board)
    if not rows:
        return None
    best = rows[0]
    Workspace(plan.indexes).set_default_index(best["index"])  # the best scorecard of this sweep
    return best["row"]
