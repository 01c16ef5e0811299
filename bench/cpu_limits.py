"""The CPU's limits, and how close Lookalike's commands come to them.

Two cases: ``demo`` (resnet10t at 64 px, the demo's settings) and ``pretrained`` (tf_efficientnet_lite0 at 224 px,
the pretrained encoder's architecture and input; random weights, which cost the same). Every figure is taken in a
fresh child process of this script, so each starts as a real command does (allocator, threads, imports):

* ``forward``: the bare ``model(x)`` on pre-made float tensors, torch's default threads, NCHW and channels-last —
  the embedding limit.
* ``step/METHOD``: backbone + heads + loss + backward + AdamW on pre-made (x1, x2) at the trainer's precision
  (``auto``) and memory format — the training limit of each method.
* ``build``: ``lookalike index build FOLDER --encoder SPEC`` on a folder of 640x480 JPEGs, images / wall seconds of
  the whole command (start-up, scan, decode, index write included), as a fraction of ``forward``.
* ``train/METHOD``: ``lookalike train FOLDER --method METHOD`` with the case's settings; the images/s it logs
  (training time, the way its progress bar shows it), as a fraction of ``step/METHOD``.
* ``job/build``, ``job/train``: the same two through the web UI's job runner (``app.jobs.JobManager``, a thread of
  the app's process), as fractions of the same limits.
* ``allocators`` (``--allocators``): the pretrained forward under glibc as it comes (``LOOKALIKE_ALLOCATOR=system``),
  glibc tuned (what the commands start with: ``retrieval.allocator``), and tcmalloc / jemalloc preloaded where
  Debian's packages are installed; rounds interleaved, medians (the whole command: ``bench/allocator.py``).
* ``startup``: wall seconds of the commands that need no model (``--help``, ``index list``, ``index info``, a bad
  argument), median of runs.

Rerun:  python -m bench.cpu_limits                 # full: both cases, every method (~25 min, 2 cores)
        python -m bench.cpu_limits --quick         # SimCLR only, fewer steps (~6 min)
        python -m bench.cpu_limits --allocators    # also the allocator comparison
Writes ``bench/results/cpu_limits.json`` (``*_quick.json`` with --quick). Wall-clock figures: a busy machine lowers
them; each ratio's two sides are measured back to back.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import ROOT, child_main, logger, parser, quick_name, report, save_result
from bench.datasets import make_jpegs

NAME = "cpu_limits"
log = logger(NAME)
PY = sys.executable
LOOKALIKE = [PY, "-m", "app.cli"]
CASES = {
    "demo": {"backbone": "resnet10t", "image_size": 64, "embed_batch": 64, "train_batch": 128,
             "spec": "random:resnet10t?size=64&pool=grid", "train_args": ["--pool", "grid"]},
    "pretrained": {"backbone": "tf_efficientnet_lite0", "image_size": 224, "embed_batch": 64, "train_batch": 32,
                   "spec": "random:tf_efficientnet_lite0?size=224", "train_args": ["--image-size", "224"]},
}
MODES = {
    "quick": {"methods": ("simclr",), "images": {"demo": 512, "pretrained": 128}, "steps": 6, "train_epochs": 3},
    "full": {"methods": None, "images": {"demo": 2048, "pretrained": 512}, "steps": 12, "train_epochs": 3},
}


# ------------------------------------------------------------------------------------------------ child processes
def child(task: dict) -> dict:
    """One measurement in this (fresh) process; ``task["kind"]`` says which."""
    import torch

    from retrieval.allocator import allocator_state

    case = CASES[task["case"]]
    out = {"allocator": allocator_state(), "threads": torch.get_num_threads()}
    if task["kind"] == "forward":
        out.update(_forward(case, task.get("steps", 6)))
    elif task["kind"] == "step":
        out.update(_step(case, task["method"], task.get("steps", 6), task.get("precision", "auto")))
    elif task["kind"] == "job_train":
        out.update(_job_train(case, task))
    elif task["kind"] == "job_build":
        out.update(_job_build(case, task))
    return out


def _timed(fn, steps: int, min_s: float = 3.0) -> float:
    """Calls per second of ``fn()`` after one warm-up call: at least ``steps`` calls and ``min_s`` seconds."""
    fn()
    n, t = 0, time.perf_counter()
    while n < steps or time.perf_counter() - t < min_s:
        fn()
        n += 1
    return n / (time.perf_counter() - t)


def _forward(case: dict, steps: int) -> dict:
    """The index build's own per-batch call (``Encoder.embed_uint8``: normalise, channels-last, forward, pool,
    L2-normalise) on pre-made uint8 images, and the bare ``model(x)`` in both memory formats."""
    import torch

    from retrieval.encoders import load_encoder

    encoder = load_encoder(case["spec"])
    b, s = case["embed_batch"], encoder.image_size
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)
    rates = {"embed_uint8": b * _timed(lambda: encoder.embed_uint8(images), steps)}
    x = torch.randn(b, 3, s, s)
    for fmt_name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        m, xf = encoder.model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        with torch.inference_mode():
            rates[fmt_name] = b * _timed(lambda: m(xf), steps)
    return {"ips_by_format": rates, "ips": rates["embed_uint8"]}


def _step(case: dict, method_name: str, steps: int, precision: str = "auto") -> dict:
    import torch

    from retrieval.encoders import build_backbone, feature_dim
    from training.methods import build_method
    from training.optim import default_lr, default_weight_decay, make_optimizer
    from training.trainer import resolve_precision

    backbone = build_backbone(case["backbone"])
    method = build_method(method_name, backbone, feature_dim(backbone))
    method.to(memory_format=torch.channels_last).train()
    b, s = case["train_batch"], case["image_size"]
    # the trainer's own optimiser (fused AdamW), learning rate and weight decay
    opt = make_optimizer("adamw", method.param_groups(default_weight_decay("adamw", method)),
                         default_lr("adamw", b, method))
    amp, _ = resolve_precision(precision, torch.device("cpu"))
    x1 = torch.randn(b, 3, s, s).contiguous(memory_format=torch.channels_last)
    x2 = torch.randn(b, 3, s, s).contiguous(memory_format=torch.channels_last)

    def one(progress: float) -> None:
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = method(x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        method.after_step(progress)

    one(0.0)
    return {"ips": b * _timed(lambda: one(0.5), steps), "precision": str(amp or "fp32").replace("torch.", "")}


def _job_train(case: dict, task: dict) -> dict:
    from app.jobs import JobManager
    from training.settings import config_from_values

    values = {"method": task["method"], "backbone": case["backbone"], "image_size": case["image_size"],
              "batch_size": case["train_batch"], "epochs": task["epochs"], "out": task["out"]}
    job = JobManager().run_training(config_from_values(task["folder"], values), wait=True)
    rates = [r["images_per_s"] for r in job.snapshot()["records"] if "images_per_s" in r]
    return {"ips": _steady(rates)}


def _job_build(case: dict, task: dict) -> dict:
    from app.jobs import JobManager
    from retrieval.workspace import Workspace

    ws = Workspace(task["indexes"])
    t = time.perf_counter()
    job = JobManager().start("build", "bench", lambda j: ws.build(task["folder"], case["spec"], "job", progress=False))
    job.wait()
    report = job.result
    return {"ips": report.count / (time.perf_counter() - t), "embed_ips": report.images_per_s}


def _steady(rates: list[float]) -> float:
    """Median of the logged rates after the first (which includes the loader's start)."""
    rates = rates[1:] or rates
    return statistics.median(rates) if rates else 0.0


def run_child(task: dict, env: dict | None = None) -> dict:
    return common.run_child(__spec__.name, task, env)


def child_task(task: dict) -> dict:
    """A Lookalike process as the commands start one (app.cli.main tunes the allocator: retrieval.allocator),
    then ``task``."""
    from retrieval.allocator import tune_allocator

    tune_allocator()
    return child(task)


# ------------------------------------------------------------------------------------------------ whole commands
def time_command(args: list[str], cwd: Path = ROOT) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc


def build_command(case: dict, folder: Path, indexes: Path, name: str) -> dict:
    wall, proc = time_command([*LOOKALIKE, "index", "build", str(folder), "--encoder", case["spec"], "--name", name,
                               "--indexes", str(indexes), "--json"])
    count = json.loads(proc.stdout)["count"]
    return {"ips": count / wall, "wall_s": wall, "count": count}


def train_command(case: dict, method: str, folder: Path, out: Path, epochs: int) -> dict:
    _, proc = time_command([*LOOKALIKE, "train", str(folder), "--method", method, "--backbone", case["backbone"],
                            "--batch-size", str(case["train_batch"]), "--epochs", str(epochs), "--out", str(out),
                            "--log-every", "2", *case["train_args"]])
    from retrieval.runformat import read_metrics

    rates = [r.get("images_per_s") for r in read_metrics(out)]
    return {"ips": _steady([r for r in rates if r])}


def startup(runs: int, indexes: Path, name: str) -> dict:
    """Commands that need no model, on an index ``name`` under ``indexes``."""
    commands = {"--help": ["--help"], "train --help": ["train", "--help"], "index list": ["index", "list"],
                "index info": ["index", "info", name], "bad argument": ["index", "build"]}
    out = {}
    for label, args in commands.items():
        if label.startswith("index"):
            args = [*args, "--indexes", str(indexes)]
        walls = [time_command([*LOOKALIKE, *args])[0] for _ in range(runs)]
        out[label] = {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls)}
    return out


# ------------------------------------------------------------------------------------------------ allocators
def allocators(rounds: int) -> dict:
    libdir = Path("/usr/lib/x86_64-linux-gnu")
    variants = {"glibc": {"LOOKALIKE_ALLOCATOR": "system"}, "glibc tuned": {"LOOKALIKE_ALLOCATOR": "glibc"}}
    for label, lib in (("tcmalloc", "libtcmalloc_minimal.so.4"), ("jemalloc", "libjemalloc.so.2")):
        if (libdir / lib).exists():
            variants[label] = {"LD_PRELOAD": str(libdir / lib)}
    results: dict[str, list] = {k: [] for k in variants}
    for _ in range(rounds):
        for label, env in variants.items():
            results[label].append(run_child({"kind": "forward", "case": "pretrained", "steps": 4}, env))
    return {label: {"ips": statistics.median(r["ips"] for r in rs),
                    "ips_by_format": {f: statistics.median(r["ips_by_format"][f] for r in rs)
                                      for f in rs[0]["ips_by_format"]},
                    "allocator": rs[0]["allocator"]} for label, rs in results.items()}


# ------------------------------------------------------------------------------------------------ main
def measure_case(name: str, mode: dict, work: Path) -> dict:
    from training.methods import METHODS

    case = CASES[name]
    folder = work / f"{name}-images"
    make_jpegs(folder, mode["images"][name])
    steps = mode["steps"]
    fig: dict = {"settings": case}
    fig["forward"] = run_child({"kind": "forward", "case": name, "steps": steps})
    fig["build"] = build_command(case, folder, work / f"idx-{name}", "cmd")
    fig["job_build"] = run_child({"kind": "job_build", "case": name, "folder": str(folder),
                                  "indexes": str(work / f"idx-job-{name}")})
    for key in ("build", "job_build"):
        fig[key]["fraction_of_forward"] = fig[key]["ips"] / fig["forward"]["ips"]
    for method in mode["methods"] or tuple(METHODS):
        limit = run_child({"kind": "step", "case": name, "method": method, "steps": steps})
        cmd = train_command(case, method, folder, work / f"run-{name}-{method}", mode["train_epochs"])
        row = {"step": limit, "train": cmd, "fraction": cmd["ips"] / limit["ips"]}
        if method == "simclr":  # what the automatic precision buys (or costs) on this CPU
            row["step_fp32"] = run_child({"kind": "step", "case": name, "method": method, "steps": steps,
                                          "precision": "fp32"})
            job = run_child({"kind": "job_train", "case": name, "method": method, "folder": str(folder),
                             "epochs": mode["train_epochs"], "out": str(work / f"job-{name}-{method}")})
            row["job_train"] = {**job, "fraction": job["ips"] / limit["ips"]}
        fig[f"method/{method}"] = row
        log(f"{name} {method}: step {limit['ips']:.1f} img/s, train {cmd['ips']:.1f} "
                     f"({row['fraction']:.2f})")
    return fig


def main(argv: list[str] | None = None) -> int:
    if child_main(argv, child_task):
        return 0
    p = parser(__doc__, quick="SimCLR only, fewer steps", threads=False, seed=None)
    p.add_argument("--allocators", action="store_true", help="also compare allocators on the pretrained forward")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="lookalike-limits-") as tmp:
        work = Path(tmp)
        for name in args.cases:
            log(f"case {name} …")
            figures[name] = measure_case(name, mode, work)
        figures["startup"] = startup(3 if args.quick else 7, work / f"idx-{args.cases[0]}", "cmd")
        if args.allocators:
            figures["allocators"] = allocators(2 if args.quick else 4)
    path = save_result(quick_name(NAME, args.quick), figures, mode=mode_name,
                       methods=list(mode["methods"] or []))
    report(path, args, json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
