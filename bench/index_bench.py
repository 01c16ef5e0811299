"""Index types on 1M vectors: build time, memory, queries/s (single and batched) and recall@10 against exact search.

Measures the four index types of ``retrieval.index_store`` (flat, hnsw, ivf, ivfpq) on two kinds of data:

1. **Synthetic, 1M x 512** (``--n``; 100k with ``--quick``). Pure i.i.d. Gaussian vectors have no neighbourhood
   structure, so every approximate method collapses on them; image embeddings are not like that. The generator is a
   seeded mixture of isotropic Gaussian clusters living in a low-dimensional subspace, projected to 512-d, plus
   small isotropic noise in all 512 dimensions, then L2-normalised (IndexStore's inner-product / cosine metric)::

       c_j ~ N(0, I_32), j = 1..4096            cluster centres in a 32-d latent space
       z   = c_j + 0.5 * N(0, I_32)             j uniform over the clusters
       x   = normalise(z @ P + 0.05 * N(0, I_512))   P: a random 32 x 512 matrix with orthonormal rows

   A 32-d latent space is in the range intrinsic-dimension estimates give for natural-image data sets (tens of
   dimensions; on the demo emoji, ``pixels`` vectors have a PCA participation ratio of about 20). With 4096
   clusters, 1M vectors put ~244 in each, so a query's 10 nearest neighbours mostly share its cluster. Queries
   (1000) are fresh draws from the same distribution, never members of the base set. Everything is seeded
   (``--seed``, default 0).

   The faiss indexes are built and searched with IndexStore's own code: ``index_kinds.plan`` (factory string,
   nlist, nprobe, efSearch, M, PQ size exactly as ``IndexStore.create`` picks them for that many vectors), ``build``
   (training on the same 100k sample, the same direct map) and ``search_parameters`` (what ``IndexStore.search``
   passes to faiss). Going through ``IndexStore.create`` at 1M would add a million-row SQLite table and a
   2 GB write + fsync + re-read per type to every build, which measures the disk, not the index. The search
   path users get is measured anyway: each built index is wrapped in an :class:`IndexStore` snapshot with
   synthetic paths (no SQLite, no disk) and ``IndexStore.search`` is timed one query at a time ("store
   single q/s": input checks, tombstone filter and ``Hit`` objects included), and checked to return the same
   top-10 as the raw faiss call.

2. **Real embeddings from the demo collection**: ``data/demo/emoji/twitter`` (1,911 images) as the base and
   ``data/demo/emoji/google`` (the same 1,911 emoji drawn by another vendor) as queries, embedded with
   ``random:resnet10t?size=64`` (512-d) and ``pixels`` (3072-d; ``--quick`` uses only ``pixels``). These go
   entirely through ``IndexStore.create`` + ``IndexStore.search``. 1,911 vectors is tiny: exact search is
   already fast there (``auto`` picks flat below 50k), ivfpq falls back to flat (it needs 10k vectors to
   train), and the speed-ups say little about large collections; the rows are there to show the index types
   behave on real vectors.

Per index type: build seconds (train + add; for the demo rows, the whole ``IndexStore.create``) with the CPU
seconds the process spent on it, memory as the serialized faiss index size (what ``index.<g>.faiss`` takes on
disk) and the process RSS growth during the build, single-query q/s (one query per call, in a loop), batched
q/s (all queries in one call, on ``--threads`` threads), recall@10 against the flat index's results, and the
speed-up over flat in both modes. A sweep of efSearch (hnsw) and nprobe (ivf, ivfpq) shows the recall / q/s
trade-off around the defaults. The goal checked: the type ``auto`` picks at N must reach >= 20x flat's
single-query q/s at recall@10 >= 0.95.

Single-query q/s (``single_qps``, the goal's figure) run faiss on one thread and count that thread's CPU time
per call: what one query costs on one idle core, steady however busy the machine is. ``single_qps_wall`` is
the same loop on ``--threads`` threads by the wall clock, what this machine gave at that moment: exact flat
search spreads one query over the threads, graph and list searches cannot, so on an idle machine its
speed-ups are smaller by about the thread count, and on a busy one it also counts waiting for a core. Batched
q/s and build seconds are wall-clock, with the build's CPU seconds beside them.

Rerun:  python -m bench.index_bench                 # 1M synthetic + demo, two encoders
        python -m bench.index_bench --quick         # 100k synthetic + demo with pixels (< 5 min)
        python -m bench.index_bench --n 300000 --json
The full run takes about 13 CPU-minutes (~10 min on two idle cores; 24 min measured with other jobs sharing
them); the 1M HNSW build is most of it. Prints a markdown table (``--json``: the JSON) and always writes
``bench/results/index_bench.json`` (with machine and date) and ``bench/results/index_bench.png`` (recall@10
against single-query q/s); ``--quick`` writes ``index_bench_quick.json`` / ``.png`` instead, so a quick check
never replaces the full run's figures. faiss (and torch) run on ``--threads`` threads (default 2). Wall-clock
figures drop when other jobs share the CPUs; the speed-ups are ratios measured within one run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from bench.common import (ROOT, logger, parser, pyplot, quick_name, recall_at_k, report, rss_bytes, save_figure,
                          save_result, serialized_bytes, trim_heap)
from bench.datasets import ClusteredGaussian
from retrieval import index_kinds
from retrieval.index_kinds import KINDS, search_parameters, target_kind
from retrieval.index_store import IndexStore
from retrieval.store_state import State

NAME = "index_bench"
TYPES = ("flat", "hnsw", "ivf", "ivfpq")
K = 10
GOAL_SPEEDUP = 20.0
GOAL_RECALL = 0.95
DEMO_BASE = ROOT / "data" / "demo" / "emoji" / "twitter"
DEMO_QUERIES = ROOT / "data" / "demo" / "emoji" / "google"
FULL_ENCODERS = ("random:resnet10t?size=64", "pixels")
QUICK_ENCODERS = ("pixels",)  # embeds in seconds; the resnet's forward passes cost ~40 s of the 5-minute budget
SWEEP = {"hnsw": ("efSearch", (16, 32, 64, 128, 256)),
         "ivf": ("nprobe", (4, 8, 16, 32, 64, 128, 256)),
         "ivfpq": ("nprobe", (4, 8, 16, 32, 64, 128, 256))}

log = logger(NAME)


# ----- measuring -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def single_qps(search_one, queries: np.ndarray, max_queries: int, budget_s: float,
               threads: int = 1) -> tuple[dict, list]:
    """One query per call, in a loop, until ``max_queries`` or ``budget_s`` (at least 5 queries), faiss on
    ``threads`` threads. Returns ({"qps_cpu", "qps_wall", "median_ms_wall", "n"}, results).

    ``qps_cpu`` counts the calling thread's CPU time: with one faiss thread the whole search runs there, so it is
    what a query costs on one idle core, however busy the machine is; the wall clock also counts waiting for a
    core."""
    with faiss_threads(threads):
        search_one(queries[:1])  # warm-up (first-touch of lazily built structures)
        results, wall, cpu = [], [], []
        start = time.perf_counter()
        while len(wall) < min(max_queries, len(queries)) and (len(wall) < 5 or
                                                               time.perf_counter() - start < budget_s):
            t, c = time.perf_counter(), time.thread_time()
            results.append(search_one(queries[len(wall):len(wall) + 1]))
            cpu.append(time.thread_time() - c)
            wall.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    return {"qps_cpu": len(cpu) / max(sum(cpu), 1e-9), "qps_wall": len(wall) / elapsed,
            "median_ms_wall": float(np.median(wall)) * 1e3, "n": len(wall)}, results


def measure_single(search_one, queries: np.ndarray, max_queries: int, budget_s: float, threads: int,
                   prefix: str = "single") -> tuple[dict, list]:
    """Single-query figures: q/s on one thread from CPU time, and wall-clock q/s on ``threads`` threads."""
    one, results = single_qps(search_one, queries, max_queries, budget_s, threads=1)
    many, _ = single_qps(search_one, queries, max_queries, budget_s, threads=threads)
    return {f"{prefix}_qps": _r(one["qps_cpu"], 1), f"{prefix}_queries_timed": one["n"],
            f"{prefix}_qps_wall": _r(many["qps_wall"], 1), f"{prefix}_median_ms_wall": _r(many["median_ms_wall"], 3),
            }, results


def batched_qps(search_all, queries: np.ndarray):
    start = time.perf_counter()
    out = search_all(queries)
    return len(queries) / (time.perf_counter() - start), out


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


# ----- synthetic ---------------------------------------------------------------------------------------------

def store_view(index: faiss.Index, manifest: dict, paths: list[str], tmp: Path) -> IndexStore:
    """An IndexStore over an already built faiss index, without SQLite or disk: only ``search`` is used."""
    n = len(paths)
    state = State(manifest=manifest, index=index, ids=np.arange(n, dtype=np.int64), paths=paths,
                       labels=[None] * n, sizes=np.zeros(n, np.int64), mtimes=np.zeros(n), deleted=np.zeros(n, bool),
                       skipped=[])
    return IndexStore(tmp / "bench-view", state)


def run_synthetic(args) -> dict:
    gen = ClusteredGaussian(dim=args.dim, seed=args.seed)
    log(f"synthetic: generating {args.n:,} x {args.dim} base + {args.queries} queries")
    t = time.perf_counter()
    base = gen.sample(args.n, gen.seed + 1)
    queries = gen.sample(args.queries, gen.seed + 2)
    gen_s = time.perf_counter() - t
    ids = np.arange(args.n, dtype=np.int64)
    paths = [f"v/{i}.png" for i in range(args.n)]
    auto_kind = target_kind("auto", args.n)
    rows: dict[str, dict] = {}
    sweeps: dict[str, list] = {}
    truth = None
    single_max, single_budget, sweep_budget = (100, 1.0, 0.5) if args.quick else (200, 3.0, 1.0)
    types = ["flat"] + [t for t in args.types if t != "flat"]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in types:
            plan = index_kinds.plan(kind, args.n, args.dim)
            manifest = {"dim": args.dim, "index_type": plan.kind, "params": plan.params}
            gc.collect()
            trim_heap()
            rss0 = rss_bytes()
            log(f"{kind}: building {plan.factory} {plan.params}")
            t, cpu = time.perf_counter(), time.process_time()
            index = index_kinds.build(plan, args.dim, base, ids)
            build_s, build_cpu = time.perf_counter() - t, time.process_time() - cpu
            gc.collect()
            trim_heap()
            rss_delta = rss_bytes() - rss0
            size = serialized_bytes(index)
            log(f"{kind}: built in {build_s:.1f}s, {size / 2**20:.0f} MiB serialized")
            params = search_parameters(manifest, K)  # what IndexStore.search passes (fetch = k, no tombstones)

            b_qps, (_, got) = batched_qps(lambda q: index.search(q, K, params=params), queries)
            if truth is None:
                truth = got  # flat: exact
            single, s_ids = measure_single(lambda q: index.search(q, K, params=params)[1][0], queries, single_max,
                                           single_budget, args.threads)
            store = store_view(index, manifest, paths, Path(tmp))
            st_single, st_hits = single_qps(lambda q: store.search(q, K)[0], queries, single_max, single_budget)
            # The store must hand back exactly the raw faiss top-k (as paths) for the same one-query calls.
            store_same = all([int(h.path[2:-4]) for h in hits] == [int(i) for i in ids if i >= 0]
                             for hits, ids in zip(st_hits, s_ids))
            row = {"factory": plan.factory, "params": plan.params, "note": plan.note, "build_s": _r(build_s, 2),
                   "build_cpu_s": _r(build_cpu, 2),
                   "serialized_bytes": size, "bytes_per_vector": _r(size / args.n, 1), "rss_delta_bytes": rss_delta,
                   **single, "store_single_qps": _r(st_single["qps_cpu"], 1), "store_matches_faiss": store_same,
                   "batched_qps": _r(b_qps, 1), "recall@10": _r(recall_at_k(got, truth))}
            rows[kind] = row
            log(f"{kind}: single {single['single_qps']:.1f} q/s (through the store {st_single['qps_cpu']:.1f}; "
                f"wall on {args.threads} threads {single['single_qps_wall']:.1f}), batched {b_qps:.1f} q/s, "
                f"recall@10 {row['recall@10']:.4f}")
            if kind in SWEEP and not args.no_sweep:
                name, values = SWEEP[kind]
                default = plan.params.get(name)
                limit = plan.params.get("nlist", 10**9)
                points = []
                for v in sorted({x for x in values if x <= limit} | {default}):
                    p = search_parameters({**manifest, "params": {**plan.params, name: v}}, K)
                    bq, (_, g) = batched_qps(lambda q: index.search(q, K, params=p), queries)
                    sq, _ = single_qps(lambda q: index.search(q, K, params=p)[1], queries, 100, sweep_budget)
                    points.append({name: v, "default": v == default, "recall@10": _r(recall_at_k(g, truth)),
                                   "single_qps": _r(sq["qps_cpu"], 1), "batched_qps": _r(bq, 1)})
                sweeps[kind] = points
                log(f"{kind}: sweep of {name} " + ", ".join(f"{p[name]}:{p['recall@10']:.3f}/{p['single_qps']:.0f}"
                                                           for p in points))
            del index, store
            gc.collect()
    flat = rows["flat"]
    for kind, row in rows.items():
        row["speedup_single"] = _r(row["single_qps"] / flat["single_qps"], 2)
        row["speedup_single_wall"] = _r(row["single_qps_wall"] / flat["single_qps_wall"], 2)
        row["speedup_batched"] = _r(row["batched_qps"] / flat["batched_qps"], 2)
        row["meets_goal"] = bool(row["speedup_single"] >= GOAL_SPEEDUP and row["recall@10"] >= GOAL_RECALL)
    for kind, points in sweeps.items():
        for p in points:
            p["speedup_single"] = _r(p["single_qps"] / flat["single_qps"], 2)
            p["speedup_batched"] = _r(p["batched_qps"] / flat["batched_qps"], 2)
    goal = {"rule": f"auto's type: single-query q/s >= {GOAL_SPEEDUP:g}x flat at recall@10 >= {GOAL_RECALL}",
            "n": args.n, "auto_type": auto_kind, "auto_type_at_1M": target_kind("auto", 1_000_000),
            "measured": auto_kind in rows and auto_kind != "flat",
            "met": bool(auto_kind in rows and auto_kind != "flat" and rows[auto_kind]["meets_goal"]),
            "speedup_single": rows.get(auto_kind, {}).get("speedup_single"),
            "speedup_single_wall": rows.get(auto_kind, {}).get("speedup_single_wall"),
            "recall@10": rows.get(auto_kind, {}).get("recall@10"),
            "types_meeting_it": [k for k, r in rows.items() if k != "flat" and r["meets_goal"]]}
    return {"n": args.n, "dim": args.dim, "queries": args.queries, "k": K, "distribution": gen.describe(),
            "generate_s": _r(gen_s, 2), "rows": rows, "sweeps": sweeps, "goal": goal}


# ----- demo collection ---------------------------------------------------------------------------------------

def run_demo(spec: str, args) -> dict:
    import torch

    from retrieval.collection import scan
    from retrieval.embed import embed_collection
    from retrieval.encoders import load_encoder

    torch.set_num_threads(args.threads)
    enc = load_encoder(spec)
    base_col, query_col = scan(DEMO_BASE), scan(DEMO_QUERIES)
    t = time.perf_counter()
    b = embed_collection(enc, base_col, progress=False)
    q = embed_collection(enc, query_col, progress=False)
    embed_s = time.perf_counter() - t
    log(f"demo {spec}: embedded {len(b.paths)} + {len(q.paths)} images in {embed_s:.1f}s")
    by_path = {it.path: it for it in base_col.items}
    items = [by_path[p] for p in b.paths]
    queries = q.vectors
    rows: dict[str, dict] = {}
    truth = None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ["flat"] + [t for t in args.types if t != "flat"] + ["auto"]:
            t = time.perf_counter()
            store = IndexStore.create(tmp, f"demo-{kind}", enc.identity, enc.dim, base_col.root, index_type=kind,
                                          items=items, vectors=b.vectors)
            create_s = time.perf_counter() - t
            m = store.manifest
            b_qps, hits = batched_qps(lambda x: store.search(x, K), queries)
            got = [[h.path for h in row] for row in hits]
            if truth is None:
                truth = got
            single, _ = measure_single(lambda x: store.search(x, K), queries, 300, 1.0 if args.quick else 1.5,
                                       args.threads)
            rec = float(np.mean([len(set(g) & set(tr)) / K for g, tr in zip(got, truth)]))
            rows[kind] = {"index_type": m["index_type"], "factory": m["factory"], "params": m["params"],
                          "note": m["note"], "create_s": _r(create_s, 3),
                          "serialized_bytes": (store.path / store.manifest["files"]["index"]).stat().st_size,
                          "disk_bytes": store.info()["size_bytes"], **single,
                          "batched_qps": _r(b_qps, 1), "recall@10": _r(rec)}
            store.delete()
    for row in rows.values():
        row["speedup_single"] = _r(row["single_qps"] / rows["flat"]["single_qps"], 2)
        row["speedup_single_wall"] = _r(row["single_qps_wall"] / rows["flat"]["single_qps_wall"], 2)
        row["speedup_batched"] = _r(row["batched_qps"] / rows["flat"]["batched_qps"], 2)
    # How often the same emoji (same file name, other vendor) is among the exact top-10: context, not a goal.
    same = float(np.mean([p in set(tr) for p, tr in zip(q.paths, truth)]))
    log(f"demo {spec}: " + ", ".join(f"{k} {r['single_qps']:.0f} q/s r@10 {r['recall@10']:.3f}"
                                     for k, r in rows.items()))
    return {"encoder": spec, "dim": enc.dim, "n_base": len(b.paths), "n_queries": len(q.paths),
            "embed_s": _r(embed_s, 1), "same_emoji_in_exact_top10": _r(same), "rows": rows,
            "caveat": f"{len(b.paths)} vectors only: exact search is already fast at this size, ivfpq needs "
                      f"{KINDS['ivfpq'].min_train} vectors to train (falls back to flat); speed-ups here say little "
                      f"about large collections"}


# ----- output ------------------------------------------------------------------------------------------------

def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def markdown(fig: dict) -> str:
    out = []
    syn = fig.get("synthetic")
    if syn:
        d = syn["distribution"]
        out.append(f"### Synthetic: {syn['n']:,} x {syn['dim']} ({d['clusters']} Gaussian clusters in a "
                   f"{d['latent_dim']}-d subspace + noise), {syn['queries']} queries, k={syn['k']}\n")
        out.append("| type | factory | search params | build s | build CPU s | index MiB | RSS Δ MiB | single q/s "
                   "| single q/s wall | store single q/s | batched q/s | recall@10 | × flat single "
                   "| × flat batched |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind, r in syn["rows"].items():
            sp = {k: v for k, v in r["params"].items() if k in ("efSearch", "nprobe", "nlist", "m")}
            out.append(f"| {kind} | {r['factory']} | {json.dumps(sp) if sp else '-'} | {r['build_s']:.1f} | "
                       f"{r['build_cpu_s']:.1f} | {_mib(r['serialized_bytes'])} | {_mib(r['rss_delta_bytes'])} | "
                       f"{r['single_qps']:,.1f} | {r['single_qps_wall']:,.1f} | {r['store_single_qps']:,.1f} | "
                       f"{r['batched_qps']:,.1f} | {r['recall@10']:.4f} | "
                       f"{r['speedup_single']:.1f} | {r['speedup_batched']:.1f} |")
        for kind, points in syn["sweeps"].items():
            name = SWEEP[kind][0]
            out.append(f"\n{kind} sweep of {name} (default marked *): " + "; ".join(
                f"{p[name]}{'*' if p['default'] else ''}: r@10 {p['recall@10']:.3f}, {p['single_qps']:,.0f} q/s "
                f"({p['speedup_single']:.0f}× flat)" for p in points))
        g = syn["goal"]
        verdict = "MET" if g["met"] else ("NOT MET" if g["measured"] else "not measured")
        out.append(f"\nGoal ({g['rule']}): auto picks **{g['auto_type']}** at {g['n']:,} "
                   f"({g['auto_type_at_1M']} at 1M): **{verdict}**"
                   + (f" ({g['speedup_single']:.0f}× flat on one thread, {g['speedup_single_wall']:.0f}× by the wall "
                      f"clock on {fig.get('threads', 2)} threads, recall@10 {g['recall@10']:.3f})"
                      if g["measured"] else "")
                   + f"; types meeting it: {', '.join(g['types_meeting_it']) or 'none'}")
    for demo in fig.get("demo", []):
        if "error" in demo:
            out.append(f"\n### Demo {demo['encoder']}: ERROR {demo['error']}")
            continue
        out.append(f"\n### Demo collection, {demo['encoder']} ({demo['dim']}-d): {demo['n_base']} twitter emoji, "
                   f"{demo['n_queries']} google queries (through IndexStore.create/search)\n")
        out.append("| requested | built | factory | create s | index KiB | single q/s | batched q/s | recall@10 "
                   "| × flat single | × flat batched |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for kind, r in demo["rows"].items():
            out.append(f"| {kind} | {r['index_type']} | {r['factory']} | {r['create_s']:.2f} | "
                       f"{r['serialized_bytes'] / 1024:,.0f} | {r['single_qps']:,.0f} | {r['batched_qps']:,.0f} | "
                       f"{r['recall@10']:.4f} | {r['speedup_single']:.1f} | {r['speedup_batched']:.1f} |")
        out.append(f"\n{demo['caveat']}.")
    return "\n".join(out)


def plot(fig: dict, path: Path) -> Path | None:
    try:
        plt = pyplot()
        import matplotlib.ticker
    except ImportError:
        return None
    syn, demos = fig.get("synthetic"), [d for d in fig.get("demo", []) if "rows" in d]
    panels = [p for p in (syn, demos[0] if demos else None) if p]
    if not panels:
        return None
    f, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    colours = {"flat": "black", "hnsw": "tab:blue", "ivf": "tab:orange", "ivfpq": "tab:green", "auto": "tab:red"}
    if syn:
        ax = axes[0][0]
        flat = syn["rows"]["flat"]
        for kind, r in syn["rows"].items():
            points = syn["sweeps"].get(kind)
            if points:
                name = SWEEP[kind][0]
                ax.plot([p["single_qps"] for p in points], [p["recall@10"] for p in points], "-o", ms=3,
                        color=colours[kind], label=f"{kind} ({name} sweep)")
                for p in points:
                    ax.annotate(str(p[name]), (p["single_qps"], p["recall@10"]), fontsize=6,
                                textcoords="offset points", xytext=(2, -8))
            ax.plot([r["single_qps"]], [r["recall@10"]], "*", ms=12, color=colours[kind],
                    label=f"{kind} default" if kind != "flat" else "flat (exact)")
        ax.axvline(GOAL_SPEEDUP * flat["single_qps"], color="grey", ls="--", lw=0.8)
        ax.axhline(GOAL_RECALL, color="grey", ls="--", lw=0.8)
        ax.text(GOAL_SPEEDUP * flat["single_qps"], 0.6, f" {GOAL_SPEEDUP:g}× flat", fontsize=7, color="grey",
                transform=ax.get_xaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("single-query queries/s on one thread, from CPU time (log)")
        ax.set_ylabel("recall@10 vs flat")
        ax.set_title(f"synthetic {syn['n']:,} × {syn['dim']}, {fig['settings_threads']} threads", fontsize=10)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
    if demos:
        ax = axes[0][len(panels) - 1]
        markers = "osD^"
        for i, demo in enumerate(demos):
            for kind, r in demo["rows"].items():
                ax.plot([r["single_qps"]], [r["recall@10"]], markers[i % 4], color=colours[kind],
                        label=f"{kind}→{r['index_type']} ({demo['encoder']})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("single-query q/s through IndexStore.search, one thread, CPU time (log)")
        ax.set_ylabel("recall@10 vs flat")
        ax.set_title(f"demo emoji, {demos[0]['n_base']} vectors (small)", fontsize=10)
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(alpha=0.3)
    f.tight_layout()
    return save_figure(f, path)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="100k synthetic vectors, one demo encoder (< 5 min)", threads=False)
    ap.add_argument("--n", type=int, default=None, help="synthetic base vectors (default 1,000,000; quick 100,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="synthetic queries (batched call; default 1000)")
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated index types (flat always runs)")
    ap.add_argument("--encoders", default=None,
                    help=f"demo encoders, comma-separated (default {','.join(FULL_ENCODERS)}; quick "
                         f"{','.join(QUICK_ENCODERS)}); 'none' skips the demo")
    ap.add_argument("--threads", type=int, default=2, help="faiss / torch threads (default 2)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the efSearch / nprobe sweeps")
    ap.add_argument("--no-synthetic", action="store_true")
    started = time.perf_counter()
    args = ap.parse_args(argv)
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]
    bad = [t for t in args.types if t not in TYPES]
    if bad:
        ap.error(f"unknown index types {bad}; choose from {', '.join(TYPES)}")
    encoders = args.encoders if args.encoders is not None else ",".join(QUICK_ENCODERS if args.quick else FULL_ENCODERS)
    encoders = [] if encoders.strip() == "none" else [e.strip() for e in encoders.split(",") if e.strip()]
    faiss.omp_set_num_threads(args.threads)

    figures: dict = {}
    if not args.no_synthetic:
        figures["synthetic"] = run_synthetic(args)
    figures["demo"] = []
    for spec in encoders:
        if not DEMO_BASE.is_dir() or not DEMO_QUERIES.is_dir():
            figures["demo"].append({"encoder": spec, "error": f"demo data missing under {DEMO_BASE.parent}; "
                                                                f"run the demo once to prepare it"})
            continue
        figures["demo"].append(run_demo(spec, args))
    wall = time.perf_counter() - started
    settings = {"quick": args.quick, "n": args.n, "dim": args.dim, "queries": args.queries, "k": K,
                "types": args.types, "encoders": encoders, "threads": args.threads, "seed": args.seed,
                "sweep": not args.no_sweep, "wall_s": round(wall, 1), "cpu_s": round(time.process_time(), 1),
                "command": "python -m bench.index_bench " + " ".join(sys.argv[1:] if argv is None else argv),
                "note": "single_qps: one query per call, faiss on 1 thread, from that thread's CPU time "
                        "(contention-robust); single_qps_wall: same loop on `threads` threads, wall-clock; "
                        "batched_qps and build_s: wall-clock on a possibly shared machine; speed-ups are ratios "
                        "within this run"}
    name = quick_name(NAME, args.quick)
    path = save_result(name, figures, plot=lambda f, png: plot({**f, "settings_threads": args.threads}, png),
                       **settings)
    log(f"wrote {path} in {wall:.0f}s")
    report(path, args, markdown({**figures, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
