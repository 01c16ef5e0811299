"""What the three real-photo benchmarks share: their rows, how a row is trained, the command line, the table.

The benchmarks (``bench/tuxpaint_retrieval.py``, ``bench/copy_detection.py``, ``bench/fashion_mnist.py``) each build
their data, say which folder a trained row trains on and how an encoder is scored, and hand the rest to
:func:`run_benchmark`. The rows, in groups (``--groups``):

* ``baselines`` (no training): ``pixels``; ``random:resnet10t`` (the trainer's default backbone, random weights);
  ``random:<pretrained architecture>``; the pretrained encoder itself (``--pretrained``, default
  ``timm:tf_efficientnet_lite0``, ImageNet-1k weights from the ``pretrained`` extra);
* ``scratch``: every method of :data:`training.methods.METHODS` (the registry, so a new method gets a row) trained
  from random weights with ``lookalike train``'s defaults;
* ``pretrained``: the same methods fine-tuned from the pretrained encoder (``TrainConfig.init``);
* ``distill``: the trainer's default student taught by ``--teacher`` (``method="distill"``, ``TrainConfig.teacher``);
* ``lightly``: lightly's SimCLR (``bench/peers.py``) from random weights, and from the pretrained weights where
  ``bench.peers.train_lightly`` takes an ``init`` (where it does not, the row says so).

Every trained row gets the same budget, ``--minutes`` of wall-clock training on the CPU (``device="cpu"``), and
trains on the benchmark's own collection without its labels: transductive, as a user trains on the folder they
index. Rows that need a trainer feature this checkout lacks (``init``, ``teacher``, the ``distill`` method) are
skipped with that reason in ``--quick`` and are errors in a full run. Results go to ``bench/results/<name>.json``
(``<name>_quick.json`` with ``--quick``, which git ignores) with the settings, machine and date; ``--part P``
writes a share of the rows to ``<name>_part_P.json`` (e.g. a row group on each core) and ``--merge P Q`` joins them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.demo import PRETRAINED_SPEC as PRETRAINED  # the pretrained encoder the demo uses
from bench.common import (logger, setup, timed, markdown_table, parser, quick_name, report, result_path, save_result,
                          work_dir)
from retrieval.allocator import release_free_memory
from retrieval.errors import LookalikeError
from retrieval.runformat import read_meta, read_metrics

GROUPS = ("baselines", "scratch", "pretrained", "distill", "lightly")
QUICK_MINUTES = 0.25
FULL_MINUTES = 3.0
PEER_METHOD = "simclr"


class NeedsTrainerFeature(LookalikeError):
    """A row needs a trainer feature (``--init``, ``--teacher``, a method) this checkout does not have."""


@dataclass
class Row:
    """One row: an encoder spec to score as it is, or a training (``train``: TrainConfig fields, ``peer``:
    lightly's) whose run is scored."""

    name: str
    group: str
    spec: str | None = None
    train: dict = field(default_factory=dict)
    peer: dict | None = None


_log = logger("photos")


def trainable_methods() -> list[str]:
    """The registry's methods that train without a teacher (distill's rows are built apart)."""
    from training.methods import METHODS

    return [m for m in METHODS if not METHODS[m].uses_teacher]


def plan(groups, methods, pretrained: str = PRETRAINED, teacher: str | None = None) -> list[Row]:
    """The rows of ``groups`` in table order (module docstring)."""
    from training.settings import DEFAULT_BACKBONE

    arch = pretrained.split(":", 1)[1].split("?", 1)[0]
    teacher = teacher or pretrained
    rows = {"baselines": [Row("pixels", "baselines", "pixels"),
                          Row(f"random:{DEFAULT_BACKBONE}", "baselines", f"random:{DEFAULT_BACKBONE}"),
                          Row(f"random:{arch}", "baselines", f"random:{arch}"),
                          Row(pretrained, "baselines", pretrained),
                          *([Row(teacher, "baselines", teacher)] if teacher != pretrained else [])],
            "scratch": [Row(m, "scratch", train={"method": m}) for m in methods],
            "pretrained": [Row(f"{m} from {arch}", "pretrained", train={"method": m, "init": pretrained})
                           for m in methods],
            "distill": [Row(f"distill from {teacher.split(':', 1)[-1]}", "distill",
                            train={"method": "distill", "teacher": teacher})],
            "lightly": [Row(f"lightly-{PEER_METHOD}", "lightly", peer={"method": PEER_METHOD}),
                        Row(f"lightly-{PEER_METHOD} from {arch}", "lightly",
                            peer={"method": PEER_METHOD, "init": pretrained})]}
    return [r for g in GROUPS if g in groups for r in rows[g]]


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------
SIDECAR = ".bench-quality.json"  # beside each run dir: wall minutes of the training call, for reused runs


def run_facts(run: Path) -> dict:
    """Steps, epochs and the trainer's own clock of a run directory, from encoder.json / metrics.jsonl."""
    facts: dict = {}
    meta = read_meta(run) or {}
    for k in ("step", "epoch", "finished"):
        if k in meta:
            facts[k if k != "step" else "steps"] = meta[k]
    cfg = meta.get("config") or {}
    if "batch_size" in cfg:
        facts["batch_size"] = cfg["batch_size"]
    last_time = None
    for rec in read_metrics(run):
        if "time" in rec:
            last_time = rec["time"]
        if "steps" not in facts and "step" in rec:
            facts["steps"] = rec["step"]
    if last_time is not None:
        facts["clock_minutes"] = round(float(last_time) / 60, 3)
    return facts


def sidecar(run: Path) -> Path:
    return run.parent / f"{run.name}{SIDECAR}"


def timed_training(run: Path, fn) -> float | None:
    """Call ``fn()`` (which trains into ``run``); wall minutes, also written beside the run for a later reuse."""
    minutes = timed(fn)[0] / 60
    sidecar(run).write_text(json.dumps({"wall_minutes": minutes}))
    return minutes


def wall_minutes(run: Path) -> float | None:
    try:
        return float(json.loads(sidecar(run).read_text())["wall_minutes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished(run: Path) -> bool:
    return bool((read_meta(run) or {}).get("finished"))


def peers_or_reason():
    """bench/peers.py (lightly's trainer), or the reason it cannot be used."""
    try:
        from bench import peers
    except ImportError as exc:
        return None, f"bench/peers.py is not importable ({exc})"
    try:
        if not peers.lightly_available():
            return None, "lightly is not installed (pip install -e '.[bench]')"
    except Exception as exc:  # noqa: BLE001 - any failure here means "no peer rows", with the reason
        return None, f"bench.peers.lightly_available() failed: {type(exc).__name__}: {exc}"
    return peers, None


def check_trainer(train: dict) -> None:
    """Raise :class:`NeedsTrainerFeature` when this checkout's trainer cannot take ``train``'s fields."""
    from training.methods import METHODS
    from training.trainer import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in ("init", "teacher"):
        if key in train and key not in fields:
            raise NeedsTrainerFeature(f"needs --{key}: training.trainer.TrainConfig has no {key!r} field here")
    if train.get("method", "simclr") not in METHODS:
        raise NeedsTrainerFeature(f"needs --method {train['method']}: not in training.methods.METHODS here")


def train_run(run: Path, config: Callable[[bool], object]) -> tuple[Path, float | None, bool]:
    """Train ``config(resume)`` (a TrainConfig writing to ``run``), reuse ``run`` when it finished or resume it when
    it was interrupted (the clock then includes its first segment): (run, wall minutes, reused)."""
    from retrieval.runformat import STATE
    from training.trainer import train

    if finished(run):
        return run, wall_minutes(run), True
    resume = (run / STATE).exists()
    if run.exists() and not resume:  # killed before its first checkpoint
        shutil.rmtree(run)
    cfg = config(resume)
    prior = (run_facts(run).get("clock_minutes") or 0.0) if resume else 0.0
    wall = timed_training(run, lambda: train(cfg, progress=False)) + prior
    sidecar(run).write_text(json.dumps({"wall_minutes": wall}))
    return run, wall, resume


def peer_run(run: Path, call: Callable[[], Path]) -> tuple[Path, float | None, bool]:
    """Train lightly's run by ``call()`` (it returns the run directory), or reuse a finished one; a run cut short
    cannot resume and starts again: (run, wall minutes, reused)."""
    from retrieval.runformat import META, WEIGHTS

    if (run / META).is_file() and (run / WEIGHTS).is_file():
        return run, wall_minutes(run), True
    if run.exists():
        shutil.rmtree(run)
    out: dict = {}
    wall = timed_training(run, lambda: out.setdefault("run", Path(call())))
    if out["run"] != run:
        sidecar(out["run"]).write_text(json.dumps({"wall_minutes": wall}))
    return out["run"], wall, False


def train_row(row: Row, data_dir: Path, run: Path, minutes: float) -> tuple[Path, float | None, bool]:
    """Train (or reuse a finished / resume an interrupted) Lookalike run of ``row``: (run, wall minutes, reused)."""
    from training.trainer import TrainConfig

    check_trainer(row.train)
    return train_run(run, lambda resume: TrainConfig(data_dir=str(data_dir), out=str(run), minutes=minutes,
                                                     device="cpu", resume=resume, **row.train))


def train_peer_row(row: Row, data_dir: Path, run: Path, minutes: float) -> tuple[Path, float | None, bool]:
    """lightly's run of ``row`` with the trainer's default backbone, stem, image size and batch (with an ``init``:
    its batch, the rest from the weights)."""
    from training.settings import setting

    peers, why = peers_or_reason()
    if peers is None:
        raise NeedsTrainerFeature(why)
    extra = {k: v for k, v in row.peer.items() if k != "method"}
    if "init" in extra and "init" not in inspect.signature(peers.train_lightly).parameters:
        raise NeedsTrainerFeature("bench.peers.train_lightly takes no init: lightly's rows start from random "
                                  "weights only")
    # from random weights: the trainer's defaults; from ``init``: the fine-tuning batch, and the rest from the init
    # (train_lightly derives it as our trainer does)
    if "init" in extra:
        from training.settings import FINETUNE_DEFAULTS

        defaults = {"batch_size": FINETUNE_DEFAULTS["batch_size"]}
    else:
        defaults = {k: setting(k).default for k in ("backbone", "stem", "image_size", "batch_size")}
    return peer_run(run, lambda: peers.train_lightly(row.peer["method"], data_dir, run, minutes=minutes,
                                                     progress=False, **defaults, **extra))


# ------------------------------------------------------------------------------------------------------------
# running and reporting
# ------------------------------------------------------------------------------------------------------------
def photo_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every photo benchmark takes: the harness's flags and the rows' own."""
    ap = parser(doc, quick=f"smaller data, {QUICK_MINUTES:g} min per trained row")
    ap.add_argument("--minutes", type=float, default=None,
                    help=f"CPU training budget per trained row, wall-clock (default {FULL_MINUTES:g}; --quick: "
                         f"{QUICK_MINUTES:g})")
    ap.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS), help="row groups to run")
    ap.add_argument("--methods", nargs="+", default=None, help="methods of the scratch/pretrained groups "
                    "(default: every method of training.methods.METHODS but distill)")
    ap.add_argument("--pretrained", default=PRETRAINED, help=f"pretrained spec (default {PRETRAINED})")
    ap.add_argument("--teacher", default=None, help="teacher of the distilled row (default: --pretrained)")
    ap.add_argument("--runs-dir", default=None, help="keep trained runs here and reuse finished ones "
                    "(default: a temp dir, deleted)")
    ap.add_argument("--eval-device", default="cpu", help="device that embeds for scoring (training stays on the "
                    "CPU); cuda makes the big evaluations fast, and makes img/s a GPU figure")
    ap.add_argument("--part", default=None, help="these rows are a share of the benchmark (e.g. --groups "
                    "pretrained on another core): write <name>_part_<PART>.json instead; --merge joins the parts")
    ap.add_argument("--merge", nargs="+", default=None, metavar="PART", help="run no row: join the part files "
                    "<name>_part_<PART>.json into <name>.json, rows in table order, goals judged on all of them; a "
                    "row in several parts is taken from the last one named")
    return ap


def minutes_of(args) -> float:
    m = args.minutes if args.minutes is not None else (QUICK_MINUTES if args.quick else FULL_MINUTES)
    if m <= 0:
        raise SystemExit("--minutes must be positive")
    return m


def _score(evaluate: Callable, spec: str, device: str) -> dict:
    from retrieval.encoders import load_encoder

    encoder = load_encoder(spec, device)
    t0 = time.perf_counter()
    out = evaluate(encoder)
    out.setdefault("encoder", encoder.name)
    out.setdefault("dim", encoder.dim)
    if out.get("embedded"):
        out["images_per_s"] = round(out["embedded"] / max(out.get("embed_seconds") or 0.0, 1e-9), 1)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_rows(rows: list[Row], evaluate: Callable, train_dir: Callable[[], Path], runs: Path, minutes: float,
             quick: bool, headline: tuple[str, ...], device: str = "cpu") -> dict[str, dict]:
    """Score every row (training the trained ones on ``train_dir()``, built on first use); failures are rows."""

    out: dict[str, dict] = {}
    for row in rows:
        base = {"group": row.group, **({"spec": row.spec} if row.spec else {}), **row.train,
                **({"peer": row.peer} if row.peer else {})}
        try:
            if row.spec:
                out[row.name] = {**base, "train_minutes": 0.0, **_score(evaluate, row.spec, device)}
            else:
                run = runs / row.name.replace(" ", "-").replace(":", "_")
                if not row.peer:
                    check_trainer(row.train)
                _log(f"training {row.name} for {minutes:g} min -> {run}")
                fn = train_peer_row if row.peer else train_row
                run, wall, reused = fn(row, train_dir(), run, minutes)
                facts = run_facts(run)
                out[row.name] = {**base, "budget_minutes": minutes,
                                 "train_minutes": None if wall is None else round(wall, 3),
                                 "steps": facts.get("steps"), "reused": reused, **_score(evaluate, str(run), device)}
        except NeedsTrainerFeature as exc:
            if not quick:
                traceback.print_exc(file=sys.stderr)
            out[row.name] = {**base, ("skipped" if quick else "error"): str(exc)}
        except Exception as exc:  # noqa: BLE001 - report the row, go on with the others
            traceback.print_exc(file=sys.stderr)
            out[row.name] = {**base, "error": f"{type(exc).__name__}: {exc}"}
        release_free_memory()  # rows run one after another in this process: keep its memory to one row's
        r = out[row.name]
        _log(f"{row.name}: " + (r.get("error") or r.get("skipped") or
                                ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k in headline)))
    return out


def table(rows: dict[str, dict], columns: tuple[str, ...]) -> str:
    body = []
    for name, r in rows.items():
        if "error" in r or "skipped" in r:
            why = f"ERROR: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            body.append([name, *("-" for _ in columns), "-", "-", why])
        else:
            body.append([name, *(r.get(c) for c in columns), r.get("train_minutes"), r.get("steps"),
                         r.get("images_per_s")])
    return markdown_table(["row", *columns, "train min", "steps", "img/s"], body)


def goals(rows: dict[str, dict], headline: tuple[str, ...], pretrained: str, teacher: str) -> dict:
    """The issue's goals, judged on the ``headline`` metrics ("beats" = higher on every one); None where a side
    of a comparison has no figures."""
    from training.settings import DEFAULT_BACKBONE

    ok = {n: r for n, r in rows.items() if "error" not in r and "skipped" not in r}

    def beats(a: str, b: str, strict: bool = True) -> bool | None:
        if a not in ok or b not in ok:
            return None
        return all(ok[a][m] > ok[b][m] if strict else ok[a][m] >= ok[b][m] for m in headline)

    trained = [n for n in ok if ok[n]["group"] in ("scratch", "pretrained", "distill")]
    best = max(trained, key=lambda n: ok[n][headline[0]], default=None)
    out: dict = {"metrics": list(headline), "best_trained": best,
                 "best_beats_pretrained": beats(best, pretrained) if best else None,
                 "scratch_beat_pixels_and_random": {n: {"pixels": beats(n, "pixels"),
                                                        "random": beats(n, f"random:{DEFAULT_BACKBONE}")}
                                                    for n, r in rows.items() if r["group"] == "scratch"}}
    student = next((n for n, r in rows.items() if r["group"] == "distill"), None)
    if student in ok and teacher in ok:
        out["distill_vs_teacher"] = {**{m: round(ok[student][m] / max(ok[teacher][m], 1e-12), 3) for m in headline},
                                     "speed": round(ok[student].get("images_per_s", 0) /
                                                    max(ok[teacher].get("images_per_s", 0), 1e-12), 2)}
    out["vs_lightly"] = {n: beats(n.removeprefix("lightly-"), n, strict=False)
                         for n, r in rows.items() if r["group"] == "lightly"}
    return out


def run_benchmark(name: str, args, evaluate: Callable, train_dir: Callable[[], Path], columns: tuple[str, ...],
                  headline: tuple[str, ...], title: str, **settings) -> int:
    """Plan the rows from ``args``, run them, save ``bench/results/<name>[_quick].json``, print; exit status."""
    import torch

    setup(args)
    if args.merge:
        return merge_parts(name, args, columns, headline, title)
    minutes = minutes_of(args)
    known = trainable_methods()
    methods = args.methods or known
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"unknown --methods {' '.join(unknown)}: choose from {' '.join(known)}")
    rows = plan(args.groups, methods, args.pretrained, args.teacher)
    t0 = time.perf_counter()
    with work_dir(args.runs_dir, f"bench-{name}-") as runs:
        results = run_rows(rows, evaluate, train_dir, runs, minutes, args.quick, headline, args.eval_device)
    result_name = quick_name(name, args.quick)
    if args.part:
        result_name = part_name(result_name, args.part)
    g = goals(results, headline, args.pretrained, args.teacher or args.pretrained)
    path = save_result(result_name, {"rows": results, "goals": g}, quick=args.quick, minutes_per_trained_row=minutes,
                       budget="wall-clock minutes of training per trained row, CPU (device='cpu')",
                       training="transductive: each trained row trains on the benchmark's own collection without "
                                "its labels, with lookalike train's defaults otherwise",
                       groups=list(args.groups), methods=methods, pretrained=args.pretrained,
                       teacher=args.teacher or args.pretrained, seed=args.seed, runs_dir=args.runs_dir,
                       eval_device=args.eval_device,
                       torch_threads=torch.get_num_threads(), total_seconds=round(time.perf_counter() - t0, 1),
                       **settings)
    show(path, args, results, g, columns, headline, f"{title}; {minutes:g} min per trained row (wall-clock, CPU)")
    return 1 if any("error" in r for r in results.values()) else 0


def show(path: Path, args, results: dict, g: dict, columns, headline, title: str) -> None:
    goals_line = json.dumps({k: v for k, v in g.items() if k != "metrics"})
    report(path, args, f"{title}\n\n{table(results, columns)}\n\ngoals (on {', '.join(headline)}): {goals_line}")


def part_name(result_name: str, part: str) -> str:
    return f"{result_name}_part_{part}"


def merge_parts(name: str, args, columns, headline, title: str) -> int:
    """Join part files (rows run by separate processes, e.g. one per core) into one result: each row as its part
    measured it, in the table order of :func:`plan`; the parts' settings, machines and dates are kept beside. A row
    in more than one part (a row run again) is taken from the last part named, and ``replaced_rows`` says so."""
    result_name = quick_name(name, args.quick)
    parts = {}
    for part in args.merge:
        path = result_path(part_name(result_name, part))
        if not path.is_file():
            raise SystemExit(f"no part {part!r}: {path} is missing (run the rows with --part {part})")
        parts[part] = json.loads(path.read_text())
    rows: dict[str, dict] = {}
    replaced: dict[str, str] = {}  # row -> the part whose figures a later part's replaced (a rerun of a row)
    for part, res in parts.items():
        for row, figures in res["figures"]["rows"].items():
            if row in rows:
                replaced[row] = rows[row]["part"]
            rows[row] = {**figures, "part": part}
    first = next(iter(parts.values()))["settings"]
    order = [r.name for r in plan(GROUPS, first["methods"], first["pretrained"], first["teacher"])]
    rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    g = goals(rows, headline, first["pretrained"], first["teacher"])
    keep = {k: v for k, v in first.items() if k not in ("groups", "total_seconds", "runs_dir")}
    path = save_result(result_name, {"rows": rows, "goals": g}, **keep, merged_from={
        part: {"groups": res["settings"]["groups"], "total_seconds": res["settings"].get("total_seconds"),
               "machine": res["machine"], "date": res["date"]} for part, res in parts.items()},
        replaced_rows={row: f"part {old} replaced by part {rows[row]['part']}" for row, old in replaced.items()})
    show(path, args, rows, g, columns, headline, f"{title}; merged from parts {', '.join(parts)}")
    return 1 if any("error" in r for r in rows.values()) else 0
