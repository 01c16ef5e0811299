"""Training speed on CPU: images/s of Lookalike's trainer vs lightly's implementation of the same method.

For SimCLR, MoCo v2 and BYOL this runs, back to back, each run in a fresh process, our trainer
(``training.trainer.train`` with the demo's settings, ``app.demo.demo_config``: resnet10t, stem "default", 64 px,
batch 128, the demo's augmentation overrides and pooling) and the lightly peer (``bench.peers.train_lightly``:
lightly's transforms, heads, losses and momentum utilities around the same timm backbone, same optimiser and
schedule, configured with the same augmentation settings) on the same data (the demo collection
``data/demo/emoji/twitter``, 1,911 PNGs), on the CPU, both in fp32, with the same number of DataLoader workers (our
trainer's rule unless ``--workers``: 1 on 2 cores) and the same torch thread count. Each run skips ``--warmup``
steps (worker start-up, first-touch allocations) and times the next ``--steps`` optimiser steps end to end:
``images/s = steps * batch / seconds``. The implementations alternate (ours, lightly, ours, lightly, ...) for
``--rounds`` rounds, so machine noise hits both alike; the ratio is computed per round and the median reported.
``--ref GITREF`` also times our trainer as of a git revision (its ``training/`` package unpacked to a temp dir) in
the same rounds: before/after a change.

On a CPU with native bf16 (AMX / AVX512-BF16) our trainer's default precision (``auto``) is bf16 autocast, which
lightly's examples do not use; the full run therefore also times ours in bf16 in the same rounds (``--bf16``), a
second, "as shipped" ratio. The goal is judged on the fp32 ratio.

Where the time goes, per step, in the training process: waiting for the DataLoader (``wait``), photometric
augmentation in the training process (``aug``) and the rest (``compute``: forward, backward, optimiser, momentum
update, our per-step logging and epoch-end checkpoints). On a CPU both implementations augment in the DataLoader
workers (ours batched on uint8 tensors, lightly per image on PIL images), so ``aug`` is 0 for both unless ``--ref``
names a revision that augmented in the training process. Ours is measured with hooks the benchmark attaches (a
timing wrapper around the DataLoader iterator, forward hooks on the augmentation module), lightly's by the peer
loop. A second table gives the worker side: CPU milliseconds per image on one thread for decoding
(``retrieval.imageio.load_image``, both), our geometric views (crop + flip, two views), our batched photometric
augmentation (both views) and lightly's full two-view transform.

Fairness notes. Same backbone module (``retrieval.encoders.build_backbone``), batch, image size, views per image
(2), augmentation distributions, data, workers and threads. Remaining differences, all inherent to the two
implementations as their users get them: our trainer uses channels-last memory format and the fused AdamW kernel
(lightly's examples use the default layout and ``torch.optim.AdamW``; ``--peer-channels-last`` gives the peer
channels-last too), our trainer writes a checkpoint at the end of every epoch (14 steps here, ~1 s each; it is in
the timed wall-clock) and logs every step (``log_every=1`` to take the timestamps); the head and loss details
listed in ``bench/peers.py`` (e.g. lightly's SimCLR head has an output BatchNorm, its MoCo uses whole-batch BN with
batch shuffling where ours computes BN in 4 chunks). torch.compile is not used by either: compiling the training
step took longer than the demo's whole 3-minute budget on 2 cores.

Rerun:  python -m bench.train_throughput --quick      # ~5 min on a quiet 2-core machine: 1 round,
                                                      # 2 warm-up + 6 timed steps per run
        python -m bench.train_throughput              # 3 rounds, 3 warm-up steps + one epoch (14 steps)
        python -m bench.train_throughput --ref 07cbce4~1   # + our trainer before the speed changes
Writes bench/results/train_throughput[_quick].json (figures, settings, machine, date) and its .png.
Other jobs sharing the CPU slow both sides, and our trainer less than lightly or more depending on what they do;
compare the ratios, which are measured back to back.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import (ROOT, child_main, lightly_version, logger, parser, pyplot, quick_name, report, run_child,
                          save_figure, save_result, setup)
from bench.peers import lightly_available, lightly_transform, train_lightly

NAME = "train_throughput"
log = logger(NAME)
METHODS = ("simclr", "moco", "byol")
GOAL = 1.3
DATA = ROOT / "data" / "demo" / "emoji" / "twitter"


# ---------------------------------------------------------------------------------------------------------------
# settings: the demo's
# ---------------------------------------------------------------------------------------------------------------
def demo_settings() -> dict:
    """What the demo trains with: backbone, stem, image size, batch, pooling and augmentation overrides."""
    cfg = our_config("simclr", DATA, Path("unused"), None)
    return {"backbone": cfg.backbone, "stem": cfg.stem, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
            "pool": cfg.pool, "augment": dict(cfg.augment)}


def our_config(method: str, data: Path, out: Path, workers: int | None, precision: str = "fp32"):
    """The demo's TrainConfig for ``method`` (``app.demo.demo_config``) on the CPU in ``precision`` (fp32 unless
    told), logging every step, without a time limit (the benchmark stops it)."""
    from app.demo import demo_config

    cfg = demo_config(method, data, out, minutes=60.0)
    return dataclasses.replace(cfg, minutes=None, epochs=10_000, precision=precision, device="cpu", workers=workers,
                               log_every=1, val_dir=None, resume=False)


# ---------------------------------------------------------------------------------------------------------------
# timing our trainer from the outside
# ---------------------------------------------------------------------------------------------------------------
class _Probe:
    """Timestamps of our trainer's steps, plus time spent waiting for batches and in the augmentation module."""

    def __init__(self) -> None:
        self.wait = 0.0
        self.aug = 0.0
        self._aug_start = 0.0
        self.steps: list[tuple[float, float, float]] = []  # (time, cumulative wait, cumulative aug) after each step

    def on_log(self, record: dict) -> None:
        if "loss" in record:
            self.steps.append((time.perf_counter(), self.wait, self.aug))


def _instrument(probe: _Probe, trainer, augment):
    """Patch the DataLoader and augmentation factory of the ``trainer`` module (and its ``augment`` module) so that
    ``probe`` sees waits and training-process augmentation time. Returns a function that undoes the patches."""
    from torch.utils.data import DataLoader

    class _TimedIterator:
        def __init__(self, it):
            self.it = it

        def __iter__(self):
            return self

        def __next__(self):
            t = time.perf_counter()
            try:
                return next(self.it)
            finally:
                probe.wait += time.perf_counter() - t

    class _TimedLoader(DataLoader):
        def __iter__(self):
            return _TimedIterator(super().__iter__())

    original_views_for = augment.views_for

    def views_for(*args, **kwargs):
        pipeline = original_views_for(*args, **kwargs)

        def pre(module, inputs):
            probe._aug_start = time.perf_counter()

        def post(module, inputs, output):
            probe.aug += time.perf_counter() - probe._aug_start

        pipeline.register_forward_pre_hook(pre)
        pipeline.register_forward_hook(post)
        return pipeline

    # the module that builds the DataLoader: training.data now, training.trainer in older revisions (--ref)
    home = trainer if hasattr(trainer, "DataLoader") else sys.modules[trainer.__name__.rsplit(".", 1)[0] + ".data"]
    original_loader = home.DataLoader
    home.DataLoader = _TimedLoader
    augment.views_for = views_for

    def undo() -> None:
        home.DataLoader = original_loader
        augment.views_for = original_views_for

    return undo


def _steady(times: list[float], waits: list[float], augs: list[float], warmup: int, steps: int, batch: int) -> dict:
    """Figures over steps warmup+1 .. warmup+steps (timestamps taken after each step)."""
    a, b = warmup - 1, warmup + steps - 1
    seconds = times[b] - times[a]
    wait, aug = waits[b] - waits[a], augs[b] - augs[a]
    return {"images_per_s": steps * batch / seconds, "step_s": seconds / steps, "wait_s": wait / steps,
            "aug_s": aug / steps, "compute_s": (seconds - wait - aug) / steps}


def run_ours(method: str, data: Path, tmp: Path, workers: int | None, warmup: int, steps: int,
             package: str = "training", precision: str = "fp32") -> dict:
    """Our trainer (from ``package``: ``training``, or a copy made by :func:`trainer_at`) on the demo's config."""
    import importlib

    trainer = importlib.import_module(f"{package}.trainer")
    augment = importlib.import_module(f"{package}.augment")
    probe = _Probe()
    stop = threading.Event()
    need = warmup + steps

    def on_log(record: dict) -> None:
        probe.on_log(record)
        if len(probe.steps) >= need:
            stop.set()

    out = Path(tempfile.mkdtemp(prefix=f"ours-{method}-", dir=tmp)) / "run"
    cfg = trainer.TrainConfig(**dataclasses.asdict(our_config(method, data, out, workers, precision)))
    undo = _instrument(probe, trainer, augment)
    try:
        trainer.train(cfg, progress=False, stop_event=stop, on_log=on_log)
    finally:
        undo()
    if len(probe.steps) < need:
        raise RuntimeError(f"our {method} run stopped after {len(probe.steps)} of {need} steps")
    t, w, a = zip(*probe.steps)
    return _steady(list(t), list(w), list(a), warmup, steps, cfg.batch_size)


def run_peer(method: str, data: Path, tmp: Path, settings: dict, workers: int | None, warmup: int, steps: int,
             channels_last: bool) -> dict:
    records: list[tuple[float, float, float]] = []
    wait = 0.0

    def on_step(record: dict) -> None:
        nonlocal wait
        wait += record["wait_s"]
        records.append((time.perf_counter(), wait, 0.0))

    out = Path(tempfile.mkdtemp(prefix=f"lightly-{method}-", dir=tmp)) / "run"
    train_lightly(method, data, out, steps=warmup + steps, workers=workers, channels_last=channels_last,
                  on_step=on_step, **settings)
    t, w, a = zip(*records)
    return _steady(list(t), list(w), list(a), warmup, steps, settings["batch_size"])


# ---------------------------------------------------------------------------------------------------------------
# worker-side costs, alone on one thread
# ---------------------------------------------------------------------------------------------------------------
def worker_costs(data: Path, settings: dict, n_images: int) -> dict:
    """CPU milliseconds per image on one thread (as in a DataLoader worker): decode, our geometric two views, our
    batched photometric augmentation (both views, batches of ``n_images``) and lightly's full two-view transform."""
    from retrieval.collection import scan
    from retrieval.imageio import load_image
    from training.augment import AugmentConfig, views_for

    size = settings["image_size"]
    collection = scan(data)
    paths = [collection.abspath(it) for it in collection.items[:n_images]]
    threads = torch.get_num_threads()
    clock = time.process_time  # CPU time: what the work costs, less sensitive to other jobs than wall time
    out: dict = {}
    torch.set_num_threads(1)
    try:
        t = clock()
        images = [load_image(p, reduce_to=4 * size) for p in paths]
        out["decode_ms"] = 1000 * (clock() - t) / len(paths)
        for method in METHODS:
            views = views_for(method, AugmentConfig(image_size=size, **settings["augment"]))
            t = clock()
            pairs = [views.geometric(im) for im in images]
            out[f"ours_{method}_geometric_ms"] = 1000 * (clock() - t) / len(paths)
            v1 = torch.stack([p[0] for p in pairs])
            v2 = torch.stack([p[1] for p in pairs])
            with torch.no_grad():
                views(v1, v2)  # warm-up
                t = clock()
                views(v1, v2)
            out[f"ours_{method}_photometric_ms"] = 1000 * (clock() - t) / len(paths)
            peer = lightly_transform(method, size, settings["augment"])
            t = clock()
            for im in images:
                peer(im)
            out[f"lightly_{method}_transform_ms"] = 1000 * (clock() - t) / len(paths)
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def summarise(rounds: dict) -> dict:
    """Per method: median images/s of each side over the rounds, median of the per-round ratios, and the median
    per-step breakdown. ``rounds[method]`` is a list of ``{"ours": ..., "peer": ..., ["ref": ...]}``."""
    figures = {}
    parts = ("step_s", "wait_s", "aug_s", "compute_s")
    for method, runs in rounds.items():
        med = lambda side, key: statistics.median(r[side][key] for r in runs)  # noqa: E731
        ratios = [r["ours"]["images_per_s"] / r["peer"]["images_per_s"] for r in runs]
        f = {"lookalike_ips": med("ours", "images_per_s"), "peer_ips": med("peer", "images_per_s"),
             "ratio": statistics.median(ratios), "ratios": ratios,
             "lookalike_step": {k: med("ours", k) for k in parts}, "peer_step": {k: med("peer", k) for k in parts}}
        if "ref" in runs[0]:
            f["ref_ips"] = med("ref", "images_per_s")
            f["ref_ratio"] = statistics.median(r["ref"]["images_per_s"] / r["peer"]["images_per_s"] for r in runs)
            f["speedup_vs_ref"] = statistics.median(r["ours"]["images_per_s"] / r["ref"]["images_per_s"]
                                                    for r in runs)
            f["ref_step"] = {k: med("ref", k) for k in parts}
        if "bf16" in runs[0]:
            f["lookalike_bf16_ips"] = med("bf16", "images_per_s")
            f["bf16_ratio"] = statistics.median(r["bf16"]["images_per_s"] / r["peer"]["images_per_s"] for r in runs)
            f["bf16_step"] = {k: med("bf16", k) for k in parts}
        figures[method] = f
    return figures


def trainer_at(ref: str, tmp: Path) -> str:
    """Our ``training`` package as of git revision ``ref``, unpacked under ``tmp`` as an importable package;
    returns its name (to time the trainer before and after a change in the same run)."""
    import io
    import re
    import subprocess
    import tarfile

    name = "training_at_" + re.sub(r"\W", "_", ref)
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "training"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp / "ref", filter="data")
    (tmp / "ref" / "training").rename(tmp / "ref" / name)
    return name


def table(figures: dict, costs: dict | None) -> str:
    lines = ["| method | Lookalike img/s | lightly img/s | ratio | goal | Lookalike step s (wait / aug / compute) "
             "| lightly step s (wait / compute) |", "|---|---:|---:|---:|:---:|---|---|"]
    for method, f in figures.items():
        o, p = f["lookalike_step"], f["peer_step"]
        lines.append(f"| {method} | {f['lookalike_ips']:.1f} | {f['peer_ips']:.1f} | {f['ratio']:.2f}x | "
                     f"{'met' if f['ratio'] >= GOAL else 'not met'} | {o['step_s']:.2f} ({o['wait_s']:.2f} / "
                     f"{o['aug_s']:.2f} / {o['compute_s']:.2f}) | {p['step_s']:.2f} ({p['wait_s']:.2f} / "
                     f"{p['compute_s']:.2f}) |")
    if any("ref_ips" in f for f in figures.values()):
        lines += ["", "| method | Lookalike at ref img/s | now img/s | speed-up | ratio to lightly at ref |",
                  "|---|---:|---:|---:|---:|"]
        for method, f in figures.items():
            lines.append(f"| {method} | {f['ref_ips']:.1f} | {f['lookalike_ips']:.1f} | {f['speedup_vs_ref']:.2f}x | "
                         f"{f['ref_ratio']:.2f}x |")
    if any("bf16_ratio" in f for f in figures.values()):
        lines += ["", "| method | Lookalike as shipped (bf16 autocast) img/s | lightly (fp32) img/s | ratio |",
                  "|---|---:|---:|---:|"]
        for method, f in figures.items():
            lines.append(f"| {method} | {f['lookalike_bf16_ips']:.1f} | {f['peer_ips']:.1f} | {f['bf16_ratio']:.2f}x |")
    if costs:
        lines += ["", f"Per image, CPU time on one thread: decode {costs['decode_ms']:.2f} ms", "",
                  "| method | ours: geometric ms | ours: photometric (batched) ms | "
                  "lightly: full transform ms |", "|---|---:|---:|---:|"]
        for method in METHODS:
            lines.append(f"| {method} | {costs[f'ours_{method}_geometric_ms']:.2f} | "
                         f"{costs[f'ours_{method}_photometric_ms']:.2f} | "
                         f"{costs[f'lightly_{method}_transform_ms']:.2f} |")
    return "\n".join(lines)


def plot(figures: dict, path: Path, ref: str | None = None) -> None:
    plt = pyplot()

    methods = list(figures)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(methods))
    bars = [("lookalike_ips", "Lookalike", "#1f77b4"), ("peer_ips", "lightly", "#ff7f0e")]
    if all("ref_ips" in figures[m] for m in methods):
        bars.insert(0, ("ref_ips", f"Lookalike at {ref}", "#aec7e8"))
    if all("lookalike_bf16_ips" in figures[m] for m in methods):
        bars.insert(1, ("lookalike_bf16_ips", "Lookalike, bf16 autocast (its CPU default here)", "#17becf"))
    w = 0.8 / len(bars)
    for j, (key, label, color) in enumerate(bars):
        ax.bar([i + (j - (len(bars) - 1) / 2) * w for i in x], [figures[m][key] for m in methods], w, label=label,
               color=color)
    top = max(figures[m][key] for m in methods for key, _, _ in bars)
    for i, m in enumerate(methods):
        ax.text(i, max(figures[m][key] for key, _, _ in bars) + 0.02 * top, f"{figures[m]['ratio']:.2f}x",
                ha="center", fontsize=9)
    ax.set_xticks(list(x), [m.upper() if m != "moco" else "MoCo v2" for m in methods])
    ax.set_ylabel("training images / s (steady state)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title("CPU training throughput, resnet10t 64 px, batch 128")
    ax.legend(loc="lower right")
    # stacked per-step breakdown
    labels, bottoms = [], []
    parts = ("wait_s", "aug_s", "compute_s")
    colors = {"wait_s": "#d62728", "aug_s": "#2ca02c", "compute_s": "#7f7f7f"}
    for i, m in enumerate(methods):
        for j, (side, name) in enumerate((("lookalike_step", "ours"), ("peer_step", "lightly"))):
            pos = i * 2.5 + j
            labels.append((pos, f"{m}\n{name}"))
            bottom = 0.0
            for part in parts:
                v = figures[m][side][part]
                ax2.bar(pos, v, 0.8, bottom=bottom, color=colors[part],
                        label=part[:-2] if (i == 0 and j == 0) else None)
                bottom += v
            bottoms.append(bottom)
    ax2.set_xticks([p for p, _ in labels], [s for _, s in labels], fontsize=8)
    ax2.set_ylabel("seconds per step")
    ax2.set_title("where a step's time goes (training process)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def in_child(side: str, method: str, **kw) -> dict:
    """One run (``side`` = ``ours`` / ``peer``) in a fresh process (:func:`bench.common.run_child`), so each
    implementation runs as its users run it: ours as a Lookalike process (allocator tuned, :mod:`retrieval.allocator`),
    lightly's with the allocator as it comes (``LOOKALIKE_ALLOCATOR=system``: nothing of ours tunes the peer's
    process). A ``package`` made by :func:`trainer_at` is found on the child's ``PYTHONPATH``."""
    env = {"LOOKALIKE_ALLOCATOR": "system"} if side == "peer" else {}
    if kw.get("package"):
        env["PYTHONPATH"] = str(Path(kw["tmp"]) / "ref")
    task = {"side": side, "method": method, **{k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}}
    return run_child(__spec__.name, task, env)


def child(task: dict) -> dict:
    data, tmp = Path(task["data"]), Path(task["tmp"])
    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    if task["side"] == "peer":
        return run_peer(task["method"], data, tmp, task["settings"], task["workers"], task["warmup"],
                        task["steps"], task["channels_last"])
    package = task.get("package") or "training"  # or a copy made by trainer_at, on this child's PYTHONPATH
    return run_ours(task["method"], data, tmp, task["workers"], task["warmup"], task["steps"], package,
                    task.get("precision", "fp32"))


def main(argv: list[str] | None = None) -> int:
    if child_main(argv, child):
        return 0
    ap = parser(__doc__, quick="1 round, 2 warm-up + 6 timed steps (< 5 min)", seed=None)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--rounds", type=int, default=None, help="ours/lightly pairs per method (default 3, quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default 3, quick 2)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per run (default: one epoch of the data, 14 for the demo set; quick 6)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers for both (default: our rule)")
    ap.add_argument("--peer-channels-last", action="store_true", help="give the lightly model channels-last too")
    ap.add_argument("--data", default=str(DATA), help="image folder (default: the demo collection)")
    ap.add_argument("--no-costs", action="store_true", help="skip the per-image worker cost table")
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="also time our trainer with bf16 autocast, its default where the CPU has native bf16 "
                         "(auto: when it does)")
    ap.add_argument("--ref", default=None, metavar="GITREF",
                    help="also time our trainer as of this git revision (before/after a change), same rounds")
    args = setup(ap.parse_args(argv))
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = args.warmup or (2 if args.quick else 3)
    if not lightly_available():
        print("lightly is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    data = Path(args.data)
    if not data.is_dir():
        from app.demo_data import prepare_demo_data

        data = Path(prepare_demo_data(ROOT / "data" / "demo").collection)
    from retrieval.collection import scan
    from retrieval.precision import cpu_has_native_bf16
    from training.data import default_workers

    settings = demo_settings()
    n_images = len(scan(data).items)
    workers = args.workers if args.workers is not None else default_workers(n_images, settings["batch_size"])
    # a whole epoch per timed window: each includes exactly one of our epoch-end checkpoints, as a long run does
    steps = args.steps or (6 if args.quick else max(2, n_images // settings["batch_size"]))

    with_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and not args.quick and cpu_has_native_bf16())
    results: dict = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        ref_package = trainer_at(args.ref, Path(tmp)) if args.ref else None
        for r in range(rounds):
            for method in args.methods:
                run = {}
                shared = {"data": data, "tmp": tmp, "workers": workers, "warmup": warmup, "steps": steps,
                          "threads": args.threads}
                if ref_package:
                    run["ref"] = in_child("ours", method, package=ref_package, **shared)
                run["ours"] = in_child("ours", method, **shared)
                if with_bf16:
                    run["bf16"] = in_child("ours", method, precision="bf16", **shared)
                run["peer"] = in_child("peer", method, settings=settings, channels_last=args.peer_channels_last,
                                       **shared)
                results[method].append(run)
                ours, peer = run["ours"]["images_per_s"], run["peer"]["images_per_s"]
                line = (f"round {r + 1}/{rounds} {method}: Lookalike {ours:.1f} img/s, lightly {peer:.1f} img/s "
                        f"({ours / peer:.2f}x)")
                if with_bf16:
                    line += f"; Lookalike bf16 {run['bf16']['images_per_s']:.1f} img/s"
                if ref_package:
                    line += f"; Lookalike at {args.ref} {run['ref']['images_per_s']:.1f} img/s"
                log(line)
    costs = None if args.no_costs else worker_costs(data, settings, 64 if args.quick else 256)
    figures = summarise(results)
    path = save_result(quick_name(NAME, args.quick), figures, plot=lambda f, png: plot(f, png, args.ref),
                       worker_costs=costs, quick=args.quick, rounds=rounds, warmup_steps=warmup, timed_steps=steps,
                       workers=workers, torch_threads=torch.get_num_threads(), precision="fp32", also_bf16=with_bf16,
                       device="cpu", data=str(data), images=n_images, peer="lightly " + lightly_version(),
                       peer_channels_last=args.peer_channels_last, goal_ratio=GOAL, ref=args.ref, **settings)
    report(path, args, table(figures, costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
