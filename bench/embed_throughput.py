"""Indexing throughput: ``index build`` images/s on a folder of JPEGs vs the same encoder's bare forward pass.

What it measures, per encoder (default ``random:resnet10t?size=64``, the demo encoders' architecture and input,
and ``random:resnet18`` at its default 224 px):

* **build** — ``Workspace(root).build(folder, spec, name)``, the call behind ``lookalike index build``, timed end to
  end (scan + decode + resize + forward + index write), with the encoder already loaded (its one-off load time is
  reported apart). The embedding phase alone (``BuildReport.images_per_s``) is reported too.
* **limit** — ``Encoder.embed_uint8`` (the very call the build makes per batch: uint8 → float, normalise,
  channels-last, forward, L2-normalise) over the same images already decoded and resized into one uint8 tensor, at
  the same batch size: what the build would reach if decoding were free. The build may run its forward on fewer
  threads than torch's default beside its decode workers (``build_forward_threads``; see
  ``retrieval.embed.ForwardThreads``), so the limit is timed at both counts (``limit_ips_by_threads``) and is the
  faster of the two. ``ratio = build / limit``; the goal is >= 0.8. ``model_only`` is the bare ``model(x)`` on
  ready float tensors (full mode only), for reference.
* **before** — the same build with the pipeline as it was before the decode/threads changes in
  ``retrieval.embed`` (full-size JPEG decode, forward on all threads beside the decode workers), interleaved with
  the others, so the effect of those changes is measured under the same conditions.
* **breakdown** — CPU milliseconds per image, one thread, for each stage: JPEG decode at full size and with the
  DCT-domain reduction the build uses (``load_image(..., reduce_to=S)``), resize + crop (``Encoder.preprocess``)
  after each, and the forward pass; this is where the time goes.

Peak memory: the build runs in a fresh subprocess at two collection sizes (hard links to the same JPEGs, so the
folder costs no disk), reporting the subprocess's peak RSS (``VmHWM``), the largest decode worker's peak RSS
(``ru_maxrss`` of its reaped children; it counts pages shared with the parent) and the index size on disk. The
growth between the two sizes, per added image, is compared with one vector (``dim × 4`` bytes) and with one
decoded image (``W × H × 3`` bytes): it has to follow the first.

The images are synthetic photos (smooth gradients + soft-edged filled shapes + sensor-like noise, seeded), W×H and
JPEG quality as in ``settings``; about 78 kB each at 640x480, quality 90, i.e. not trivially compressible.

Rerun:  python -m bench.embed_throughput            # full run (~10 min on 2 idle cores)
        python -m bench.embed_throughput --quick    # smaller folders, one repeat (2-3 min)
Wall-clock figures: other jobs sharing the CPU lower them. Build and limit are interleaved (limit, build, limit,
build, ...) and the best of each is kept, so the ratio compares numbers taken under the same conditions.
Every run writes ``bench/results/embed_throughput[_quick].json`` (``settings.mode`` says quick or full) and the bar
chart ``embed_throughput[_quick].png`` beside it.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (child_main, logger, parser, peak_rss_kb, pyplot, quick_name, report, run_child,
                          save_figure, save_result, timed)
from bench.datasets import JPEG_SIZE, jpeg_files, link_folder, make_jpegs

NAME = "embed_throughput"
ENCODERS = ("random:resnet10t?size=64", "random:resnet18")
GOAL = 0.8
BATCH = 64
_log = logger(NAME)

# Per mode: images per encoder for the throughput runs (the heavy encoder gets fewer; both stay above the
# 2 x batch size below which the build decodes in the main process), repeats, and the two memory sizes.
MODES = {
    "quick": {"images": {"random:resnet10t?size=64": 512, "random:resnet18": 144}, "default_images": 256,
              "repeats": 1, "memory_sizes": (256, 1024), "breakdown_images": 16},
    "full": {"images": {"random:resnet10t?size=64": 2048, "random:resnet18": 320}, "default_images": 512,
             "repeats": 3, "memory_sizes": (1000, 8000), "breakdown_images": 64},
}


def _limit_run(encoder, x, batch: int) -> float:
    """Seconds for ``Encoder.embed_uint8`` over the pre-decoded uint8 tensor ``x`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        encoder.embed_uint8(x[i:i + batch])
    return time.perf_counter() - t0


def _model_run(encoder, xf, batch: int) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(xf), batch):
            encoder.model(xf[i:i + batch])
    return time.perf_counter() - t0


def predecode(encoder, folder: Path, files: list[Path]):
    """(N, 3, S, S) uint8 exactly as the build's loader workers produce it."""
    import torch

    from retrieval.embed import ImageFiles

    dataset = ImageFiles(folder, [f.relative_to(folder).as_posix() for f in files], encoder)
    return torch.stack([dataset[i][1] for i in range(len(files))])


class _PipelineBefore:
    """The embedding pipeline as it was before the DCT-domain decode and the forward thread choice: full-size JPEG
    decode, forward on all of torch's threads beside the decode workers. Patches two private names of
    ``retrieval.embed`` for the duration of one comparison build."""

    def __enter__(self) -> "_PipelineBefore":
        import retrieval.embed as embed

        class _Wide(embed.ForwardThreads):
            def __init__(self, *args):
                super().__init__(*args)
                self.active = False

        self.embed, self.saved = embed, (embed.decode_size, embed.ForwardThreads)
        embed.decode_size, embed.ForwardThreads = (lambda encoder: None), _Wide
        return self

    def __exit__(self, *exc) -> None:
        self.embed.decode_size, self.embed.ForwardThreads = self.saved


class _EmbedSpy:
    """Wraps ``retrieval.embed.embed_collection`` (the workspace imports it at each call) to keep its EmbedResult
    (forward threads); changes nothing."""

    def __init__(self):
        import retrieval.embed as embed

        self.module, self.real, self.results = embed, embed.embed_collection, []

    def __call__(self, *args, **kwargs):
        result = self.real(*args, **kwargs)
        self.results.append(result)
        return result

    def __enter__(self) -> "_EmbedSpy":
        self.module.embed_collection = self
        return self

    def __exit__(self, *exc) -> None:
        self.module.embed_collection = self.real


def measure_encoder(spec: str, folder: Path, work: Path, batch: int, workers: int | None, repeats: int,
                    model_only: bool, before: bool) -> dict:
    import torch

    from retrieval.embed import cpu_count, default_workers
    from retrieval.workspace import Workspace

    files = jpeg_files(folder)
    n = len(files)
    ws = Workspace(work / "indexes")
    load_s, encoder = timed(ws.encoder, spec)
    x = predecode(encoder, folder, files)
    if model_only:
        mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
        std = torch.tensor(encoder.std).view(1, 3, 1, 1)
        xf = ((x.float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    n_workers = default_workers(n, batch) if workers is None else workers
    # The limit is the faster of the forward on all threads and on the narrower count the build may pick.
    limit_threads = sorted({threads, max(1, cpu_count() - n_workers) if n_workers else threads})
    for t in limit_threads:  # warm-up (allocator, oneDNN primitives)
        torch.set_num_threads(t)
        _limit_run(encoder, x[:batch], batch)
    torch.set_num_threads(threads)
    builds, embeds, limits, models, pairs, forward_threads, befores = [], [], [], [], [], [], []
    limit_by_threads: dict[int, list[float]] = {t: [] for t in limit_threads}

    def build_ips() -> tuple[float, object]:
        t0 = time.perf_counter()
        report = ws.build(folder, spec, "bench", overwrite=True, batch_size=batch, workers=workers, progress=False)
        ips = n / (time.perf_counter() - t0)
        assert report.count == n, f"indexed {report.count} of {n} images"
        assert torch.get_num_threads() == threads, "the build left torch's thread count changed"
        return ips, report

    for r in range(repeats):
        for t in limit_threads:
            torch.set_num_threads(t)
            limit_by_threads[t].append(n / _limit_run(encoder, x, batch))
        torch.set_num_threads(threads)
        lim = max(v[-1] for v in limit_by_threads.values())
        with _EmbedSpy() as spy:
            build, report = build_ips()
        if before:
            with _PipelineBefore():
                befores.append(build_ips()[0])
        limits.append(lim)
        builds.append(build)
        embeds.append(report.images_per_s)
        pairs.append(build / lim)
        forward_threads.append(getattr(spy.results[-1], "forward_threads", None) if spy.results else None)
        if model_only:
            models.append(n / _model_run(encoder, xf, batch))
        _log(f"{spec} repeat {r + 1}/{repeats}: limit {lim:.1f} img/s, build {build:.1f} (embed phase "
             f"{report.images_per_s:.1f})" + (f", build before {befores[-1]:.1f}" if before else ""))
    index_dir = work / "indexes" / "bench"
    best_build, best_limit = max(builds), max(limits)
    return {
        "images": n, "image_size": encoder.image_size, "dim": encoder.dim, "batch_size": batch,
        "workers": n_workers, "torch_threads": threads, "build_forward_threads": forward_threads, "encoder_load_s": round(load_s, 3),
        "build_ips": round(best_build, 2), "embed_phase_ips": round(max(embeds), 2),
        "limit_ips": round(best_limit, 2), "model_only_ips": round(max(models), 2) if models else None,
        "ratio": round(best_build / best_limit, 3),
        "ratio_embed_phase": round(max(embeds) / best_limit, 3),
        "build_before_ips": round(max(befores), 2) if befores else None,
        "ratio_before": round(max(befores) / best_limit, 3) if befores else None,
        "build_before_ips_per_repeat": [round(b, 2) for b in befores],
        "ratio_per_repeat": [round(p, 3) for p in pairs],
        "build_ips_per_repeat": [round(b, 2) for b in builds],
        "limit_ips_per_repeat": [round(v, 2) for v in limits],
        "limit_ips_by_threads": {str(t): round(max(v), 2) for t, v in limit_by_threads.items()},
        "index_bytes": sum(p.stat().st_size for p in index_dir.iterdir() if p.is_file()),
        "goal_met": best_build / best_limit >= GOAL,
    }


def breakdown(spec: str, files: list[Path], batch: int) -> dict:
    """One-thread CPU ms per image for each stage (best of 3 over ``files``)."""
    import torch

    from retrieval.encoders import load_encoder
    from retrieval.imageio import load_image

    encoder = load_encoder(spec)
    s = encoder.image_size
    n = len(files)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def cpu_ms(fn) -> float:
            best = float("inf")
            for _ in range(3):
                t0 = time.process_time()
                fn()
                best = min(best, time.process_time() - t0)
            return round(best / n * 1e3, 3)

        full = [load_image(f) for f in files]
        reduced = [load_image(f, reduce_to=s) for f in files]
        x = torch.stack([encoder.preprocess(im) for im in reduced])
        encoder.embed_uint8(x[:batch])
        out = {
            "decode_full_ms": cpu_ms(lambda: [load_image(f) for f in files]),
            "decode_reduced_ms": cpu_ms(lambda: [load_image(f, reduce_to=s) for f in files]),
            "reduced_to": list(reduced[0].size),
            "resize_from_full_ms": cpu_ms(lambda: [encoder.preprocess(im) for im in full]),
            "resize_from_reduced_ms": cpu_ms(lambda: [encoder.preprocess(im) for im in reduced]),
            "forward_1thread_ms": cpu_ms(lambda: [encoder.embed_uint8(x[i:i + batch]) for i in range(0, n, batch)]),
        }
    finally:
        torch.set_num_threads(old)
    out["decode_resize_before_ms"] = round(out["decode_full_ms"] + out["resize_from_full_ms"], 3)
    out["decode_resize_after_ms"] = round(out["decode_reduced_ms"] + out["resize_from_reduced_ms"], 3)
    return out


# --------------------------------------------------------------------------------------------- memory


def memory_child(args: dict) -> dict:
    """In a fresh interpreter (:func:`bench.common.run_child`): build one index; its peak RSS figures.

    ``VmHWM`` rather than ``ru_maxrss``: the latter carries over the parent's peak through fork + exec, so a child
    started by a big parent would report the parent's size."""
    from retrieval.workspace import Workspace

    ws = Workspace(args["root"])
    ws.encoder(args["spec"])
    before_kb = peak_rss_kb("VmRSS")
    t0 = time.perf_counter()
    report = ws.build(args["folder"], args["spec"], "mem", batch_size=args["batch"], progress=False)
    seconds = time.perf_counter() - t0
    index_dir = Path(args["root"]) / "mem"
    return {
        "count": report.count, "dim": report.dim, "seconds": round(seconds, 2),
        "rss_before_build_mb": round(before_kb / 1024, 1),  # imports + loaded encoder
        "peak_rss_mb": round(peak_rss_kb("VmHWM") / 1024, 1),
        "peak_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "index_bytes": sum(p.stat().st_size for p in index_dir.iterdir() if p.is_file()),
    }


def measure_memory(spec: str, src_files: list[Path], work: Path, sizes: tuple[int, int], batch: int,
                   decoded_bytes: int) -> dict:
    runs = []
    for n in sizes:
        folder = work / f"mem-{n}"
        link_folder(src_files, folder, n)
        child = {"spec": spec, "folder": str(folder), "root": str(work / f"mem-indexes-{n}"), "batch": batch}
        run = run_child(__spec__.name, child)
        assert run["count"] == n, run
        runs.append(run)
        _log(f"memory {spec} at {n} images: peak RSS {run['peak_rss_mb']} MB")
    (a, b), (ra, rb) = sizes, runs
    added = b - a
    dim = rb["dim"]
    slope = (rb["peak_rss_mb"] - ra["peak_rss_mb"]) * 2**20 / added
    index_slope = (rb["index_bytes"] - ra["index_bytes"]) / added
    vector_bytes = dim * 4
    return {
        "encoder": spec, "sizes": list(sizes), "runs": runs, "vector_bytes_per_image": vector_bytes,
        "decoded_bytes_per_image": decoded_bytes,
        "peak_rss_growth_mb": round(rb["peak_rss_mb"] - ra["peak_rss_mb"], 1),
        "build_increment_mb": [round(r["peak_rss_mb"] - r["rss_before_build_mb"], 1) for r in runs],
        "peak_rss_growth_bytes_per_image": round(slope),
        "index_bytes_per_image": round(index_slope),
        "growth_over_vector_bytes": round(slope / vector_bytes, 2),
        "growth_over_decoded_image_bytes": round(slope / decoded_bytes, 4),
        # What holding the decoded images would add between the two sizes:
        "if_images_were_held_growth_mb": round(added * decoded_bytes / 2**20, 1),
        "grows_with_vectors_not_images": slope < 0.05 * decoded_bytes,
    }


# ------------------------------------------------------------------------------------------- reporting


def table(figures: dict) -> str:
    lines = ["| encoder | images | workers | threads (build forward) | limit img/s (by threads) | build img/s | "
             "embed phase img/s | ratio | goal | build before img/s (ratio) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for spec, r in figures["encoders"].items():
        fwd = "/".join(str(t) for t in sorted(set(r["build_forward_threads"]), key=str))
        before = f"{r['build_before_ips']:.1f} ({r['ratio_before']:.2f})" if r.get("build_before_ips") else "-"
        by_threads = ", ".join(f"{t}: {v:.1f}" for t, v in r["limit_ips_by_threads"].items())
        lines.append(f"| `{spec}` | {r['images']} | {r['workers']} | {r['torch_threads']} ({fwd}) | "
                     f"{r['limit_ips']:.1f} ({by_threads}) | {r['build_ips']:.1f} | {r['embed_phase_ips']:.1f} | {r['ratio']:.2f} | "
                     f"{'met' if r['goal_met'] else 'not met'} (>= {GOAL}) | {before} |")
    lines += ["", "| encoder | decode full ms | decode reduced ms | resize full ms | resize reduced ms | "
              "forward ms (1 thread) |", "|---|---:|---:|---:|---:|---:|"]
    for spec, b in figures["breakdown"].items():
        lines.append(f"| `{spec}` | {b['decode_full_ms']:.2f} | {b['decode_reduced_ms']:.2f} "
                     f"({b['reduced_to'][0]}x{b['reduced_to'][1]}) | {b['resize_from_full_ms']:.2f} | "
                     f"{b['resize_from_reduced_ms']:.2f} | {b['forward_1thread_ms']:.2f} |")
    m = figures.get("memory")
    if m:
        lines += ["", "| images | RSS before build MB | peak RSS MB | largest worker peak MB | index bytes |",
                  "|---:|---:|---:|---:|---:|"]
        for n, r in zip(m["sizes"], m["runs"]):
            lines.append(f"| {n} | {r['rss_before_build_mb']} | {r['peak_rss_mb']} | {r['peak_worker_rss_mb']} | "
                         f"{r['index_bytes']} |")
        lines.append(f"\nPeak RSS grows {m['peak_rss_growth_bytes_per_image']} B per added image "
                     f"({m['growth_over_vector_bytes']}x a {m['vector_bytes_per_image']} B vector, "
                     f"{m['growth_over_decoded_image_bytes']:.2%} of a {m['decoded_bytes_per_image']} B decoded "
                     "image); "
                     f"index on disk {m['index_bytes_per_image']} B per image.")
    return "\n".join(lines)


def plot(figures: dict, path: Path) -> None:
    plt = pyplot()

    specs = list(figures["encoders"])
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 3.6), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        r = figures["encoders"][spec]
        names = ["forward\n(limit)", "index build\n(end to end)", "embed\nphase"]
        vals = [r["limit_ips"], r["build_ips"], r["embed_phase_ips"]]
        colors = ["#888888", "#2b6cb0", "#63b3ed"]
        if r.get("build_before_ips"):
            names.append("build\nbefore")
            vals.append(r["build_before_ips"])
            colors.append("#cbd5e0")
        bars = ax.bar(names, vals, color=colors)
        ax.axhline(GOAL * r["limit_ips"], color="#c53030", lw=1, ls="--", label=f"{GOAL:g} x limit")
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.0f}" if v >= 20 else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{spec}\nratio {r['ratio']:.2f}", fontsize=9)
        ax.set_ylabel("images / s")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{JPEG_SIZE[0]}x{JPEG_SIZE[1]} JPEGs, batch {BATCH}, {os.cpu_count()} CPU cores", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    if child_main(argv, memory_child):
        return 0
    ap = parser(__doc__, quick="smaller folders and one repeat (a few minutes)", threads=False, seed=None)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), help="encoder specs to measure")
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the build's own choice)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--memory-encoder", default=ENCODERS[0], help="encoder of the peak-memory runs")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--no-before", action="store_true",
                    help="skip the comparison builds with the previous pipeline (full-size decode, wide forward)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    mode = MODES["quick" if args.quick else "full"]
    repeats = args.repeats or mode["repeats"]
    counts = {spec: mode["images"].get(spec, mode["default_images"]) for spec in args.encoders}
    started = time.perf_counter()
    figures: dict = {"encoders": {}, "breakdown": {}}
    with tempfile.TemporaryDirectory(prefix="embed-throughput-") as tmp:
        work = Path(tmp)
        source = work / "jpegs"
        t0 = time.perf_counter()
        images = make_jpegs(source, max(counts.values()))
        _log(f"wrote {images['count']} JPEGs in {time.perf_counter() - t0:.0f}s")
        src_files = jpeg_files(source)
        for spec in args.encoders:
            folder = work / f"set-{counts[spec]}"
            if not folder.exists():
                link_folder(src_files, folder, counts[spec])
            figures["breakdown"][spec] = breakdown(spec, src_files[:mode["breakdown_images"]], args.batch_size)
            figures["encoders"][spec] = measure_encoder(spec, folder, work / f"work-{len(figures['encoders'])}",
                                                        args.batch_size, args.workers, repeats,
                                                        model_only=not args.quick, before=not args.no_before)
        if not args.no_memory:
            figures["memory"] = measure_memory(args.memory_encoder, src_files, work, mode["memory_sizes"],
                                               args.batch_size, images["decoded_bytes_per_image"])
    figures["goal"] = GOAL
    figures["goal_met"] = all(r["goal_met"] for r in figures["encoders"].values())
    figures["seconds"] = round(time.perf_counter() - started, 1)
    settings = {"mode": "quick" if args.quick else "full", "images": images, "batch_size": args.batch_size,
                "workers": args.workers, "repeats": repeats, "encoders": args.encoders,
                "memory_encoder": None if args.no_memory else args.memory_encoder,
                "memory_sizes": None if args.no_memory else list(mode["memory_sizes"]),
                "load_average": os.getloadavg()}
    path = save_result(quick_name(NAME, args.quick), figures, plot=None if args.no_plot else plot, **settings)
    report(path, args, table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
