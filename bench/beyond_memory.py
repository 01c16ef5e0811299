"""When a collection outgrows one machine's memory: bytes per vector of each index kind, and FAISS on-disk lists.

Two measurements, on the synthetic vectors of ``bench.index_bench`` (``bench.datasets.ClusteredGaussian``, 512-d,
L2-normalised; 200,000 by default, ``--n``; 20,000 with ``--quick``), with the indexes built by the store's own code
(``retrieval.index_kinds.plan`` / ``build``, the factory strings and parameters ``IndexStore.create`` picks):

1. **Memory per vector** of flat, hnsw and ivfpq (``--type`` of ``index build``): the serialized size
   (what ``index.<g>.faiss`` takes on disk and, read back, in memory) and the process RSS growth while building,
   each divided by N; recall@10 of the default search parameters against exact search on 200 queries.
2. **On-disk inverted lists** (``faiss.OnDiskInvertedLists``) with our IVF-PQ index: the lists of a built index
   are moved into a file, the index is written and read back with ``IO_FLAG_MMAP`` (the lists stay in the
   page cache, not in the process heap), and then checked: same top-10 as the in-memory index, RSS after
   loading, and whether the operations the store needs still work on it — ``reconstruct`` (the store's
   ``vectors()``, used by the Explore map), ``add_with_ids`` and ``remove_ids`` (every refresh).

Rerun:  python -m bench.beyond_memory            # 200k x 512 (about 2 minutes on 2 cores)
        python -m bench.beyond_memory --quick    # 20k: a check that it runs
Writes ``bench/results/beyond_memory[_quick].json``.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.common import (logger, parser, quick_name, recall_at_k, report, rss_bytes, save_result, serialized_bytes,
                          trim_heap)
from bench.datasets import ClusteredGaussian
from retrieval.index_kinds import build, plan, search_parameters

NAME = "beyond_memory"
K = 10
QUERIES = 200
log = logger(NAME)


def per_kind(base: np.ndarray, queries: np.ndarray, kinds: list[str]) -> tuple[dict, dict]:
    """Memory and recall of each kind; also returns the built ivfpq index for the on-disk experiment."""
    n, dim = base.shape
    ids = np.arange(n, dtype=np.int64)
    rows, built, truth = {}, {}, None
    for kind in kinds:
        p = plan(kind, n, dim)
        gc.collect()
        trim_heap()
        rss0 = rss_bytes()
        t = time.perf_counter()
        index = build(p, dim, base, ids)
        build_s = time.perf_counter() - t
        gc.collect()
        trim_heap()
        rss = rss_bytes() - rss0
        got = index.search(queries, K, params=search_parameters({"index_type": p.kind, "params": p.params}, K))[1]
        truth = got if truth is None else truth
        size = serialized_bytes(index)
        rows[kind] = {"factory": p.factory, "params": p.params, "build_s": round(build_s, 1),
                      "serialized_bytes_per_vector": round(size / n, 1), "rss_bytes_per_vector": round(rss / n, 1),
                      "recall@10": round(recall_at_k(got, truth), 4)}
        log(f"{kind}: {rows[kind]}")
        built[kind] = index
    return rows, built


def on_disk(index: faiss.Index, queries: np.ndarray, extra: np.ndarray, work: Path) -> dict:
    """Move ``index``'s inverted lists to a file, read it back memory-mapped, and see what still works."""
    ivf = faiss.extract_index_ivf(index)
    params = faiss.SearchParametersIVF(nprobe=ivf.nprobe if ivf.nprobe > 1 else 16)
    want = index.search(queries, K, params=params)[1]
    lists_file, index_file = work / "lists.ivfdata", work / "index.faiss"
    t = time.perf_counter()
    disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_file))
    source = faiss.InvertedListsPtrVector()
    source.push_back(ivf.invlists)
    disk.merge_from_multiple(source.data(), source.size())
    ivf.replace_invlists(disk, True)
    disk.this.disown()  # the index owns the lists now
    faiss.write_index(index, str(index_file))
    move_s = time.perf_counter() - t
    del index, ivf, disk
    gc.collect()
    trim_heap()
    before = rss_kinds()
    # The lists file is memory-mapped by OnDiskInvertedLists itself; IO_FLAG_MMAP (map the whole index file)
    # crashes on such an index (faiss 1.x segfaults at the first search), so it is read without it.
    loaded = faiss.read_index(str(index_file), faiss.IO_FLAG_ONDISK_SAME_DIR)
    anon_load = rss_kinds()["RssAnon"] - before["RssAnon"]
    got = loaded.search(queries, K, params=params)[1]
    after = rss_kinds()
    out = {"move_s": round(move_s, 2), "index_file_bytes": index_file.stat().st_size,
           "lists_file_bytes": lists_file.stat().st_size, "heap_growth_loading_bytes": anon_load,
           "heap_growth_loading_bytes_per_vector": round(anon_load / loaded.ntotal, 1),
           "mapped_file_pages_after_search_bytes": after["RssFile"] - before["RssFile"],
           "same_top10_as_in_memory": bool(np.array_equal(got, want)), "type": type(loaded).__name__}
    for op, call in (("reconstruct", lambda: loaded.reconstruct(int(want[0, 0]))),
                     ("add_with_ids", lambda: loaded.add_with_ids(extra, np.arange(len(extra)) + 10**9)),
                     ("remove_ids", lambda: loaded.remove_ids(np.asarray([int(want[0, 0])], np.int64)))):
        try:
            call()
            out[op] = "works"
        except Exception as exc:  # the experiment's point: which operations the store could keep
            out[op] = f"fails: {str(exc).strip().splitlines()[-1][:160]}"
    return out


def rss_kinds() -> dict[str, int]:
    """Resident memory by kind (bytes): RssAnon is the heap, RssFile the mapped files' pages in the page cache,
    which the kernel can drop and reread."""
    out = {"RssAnon": 0, "RssFile": 0}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in out:
            out[key] = int(line.split()[1]) * 1024
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="20,000 vectors", threads=False, seed=None)
    ap.add_argument("--n", type=int, default=None, help="vectors (default 200,000; --quick: 20,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    args.n = args.n or (20_000 if args.quick else 200_000)
    faiss.omp_set_num_threads(args.threads)
    gen = ClusteredGaussian(dim=args.dim)
    base, queries = gen.sample(args.n, gen.seed + 1), gen.sample(QUERIES, gen.seed + 2)
    kinds = [k for k in args.kinds.split(",") if k]
    rows, built = per_kind(base, queries, kinds)
    figures = {"n": args.n, "dim": args.dim, "kinds": rows, "float32_bytes_per_vector": 4 * args.dim}
    if "ivfpq" in built:
        with tempfile.TemporaryDirectory() as tmp:
            index = built.pop("ivfpq")
            built.clear()
            figures["ivfpq_on_disk_lists"] = on_disk(index, queries, gen.sample(100, gen.seed + 3), Path(tmp))
        log(f"on disk: {figures['ivfpq_on_disk_lists']}")
    path = save_result(quick_name(NAME, args.quick), figures, n=args.n, dim=args.dim, threads=args.threads,
                       distribution=gen.describe(), command="python -m bench.beyond_memory "
                       + " ".join(sys.argv[1:] if argv is None else argv))
    report(path, args, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
