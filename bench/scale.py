"""End to end at 100,000 images: scan, build, refresh, app search under load, near duplicates, the map, disk sizes.

Two collections, each indexed with ``random:resnet10t?size=64`` (the demo encoders' architecture and input):

* **photos** — N photo-sized JPEGs (1024x768, quality 90, about 190 kB each; ``bench.embed_throughput.make_jpegs``:
  gradients, soft shapes and sensor-like noise, seeded). ``D`` distinct images are drawn (N/20 in the full run,
  N/10 in ``--quick``) and the folder holds N hard links cycling over them under their own names in 16
  sub-folders: 100,000 files cost ~1 GB of disk instead of 19 GB. Every file is scanned, decoded and embedded
  for itself, so scan, build, refresh, search and memory figures are those of N distinct files; only what depends
  on the content (the near-duplicate pairs found: each image has N/D identical copies) is not, and the pass's
  cost (one k-NN search per item) does not depend on it.
* **fashion** — Debian's ``dataset-fashion-mnist`` (70,000 real 28x28 product photos; ``--quick``: the first
  N of them), written as PNGs in one sub-folder per class (``bench.datasets.load_split``).

Per collection: **scan** (``retrieval.collection.scan``, headers only); **build** (``lookalike index build`` in a
fresh process: wall seconds, images/s, peak RSS of the process and of its largest decode worker); **refresh**
after 1% of the files are added, 1% changed and 1% deleted (``lookalike index refresh`` in a fresh process; its
cost as a fraction of the build — goal <= 5%); **search** through the running app (``/search`` over HTTP with
gradio_client, k=10, thumbnails included as the page gets them; as ``tests/app/app_server.py`` starts it): p50/p95
latency idle (also over plain HTTP with the query uploaded once, and ``Workspace.search`` alone, to show where the
time goes), while that index refreshes, and — photos only — while the fashion index is being built (goal p95 <=
100 ms); **near duplicates** (``retrieval.neighbours.near_duplicate_pairs``, as the Explore tab calls it: batched
k-NN, never an N x N matrix; goal <= 2 min at 100k) and the **map** (``IndexStore.vectors`` + ``pca_2d`` on the
3,000-point sample the Explore tab draws, and on all N), time and peak memory above the process's baseline;
**disk**: index size, and the thumbnail cache the searches filled (with its mean per thumbnail, times N for a
cache of every item).

Rerun:  python -m bench.scale --quick   # 5,000 images per collection (a few minutes)
        python -m bench.scale           # 100,000 photos + 70,000 Fashion-MNIST (see settings.wall_s)
Writes ``bench/results/scale.json`` (``scale_quick.json`` with ``--quick``). Needs ``apt-get install -y
dataset-fashion-mnist`` for the second collection (skipped with a note without it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (child_main, finish_child, free_port, logger, parser, quick_name, report, save_result,
                          start_child)

NAME = "scale"
SPEC = "random:resnet10t?size=64"
PHOTO_SIZE = (1024, 768)
MODES = {"quick": {"photos": 5_000, "distinct": 10, "fashion": 5_000, "queries": 40},
         "full": {"photos": 100_000, "distinct": 20, "fashion": 70_000, "queries": 200}}
CHANGED = 0.01  # of the files: this many added, as many changed, as many deleted before the refresh
PACE_S = 0.25  # between two searches while a build or a refresh runs (a person browsing, not a load test)
K = 10
GOALS = {"refresh_fraction_of_build": 0.05, "search_p95_ms": 100.0, "near_duplicates_s_at_100k": 120.0}
log = logger(NAME)


# ----- collections -----------------------------------------------------------------------------------------
def make_photos(folder: Path, work: Path, n: int, distinct: int) -> dict:
    from bench.datasets import jpeg_files, link_folder, make_jpegs

    t = time.perf_counter()
    made = make_jpegs(work / "distinct", distinct, size=PHOTO_SIZE)
    link_folder(jpeg_files(work / "distinct"), folder, n)
    return {**made, "files": n, "distinct": distinct, "generate_s": round(time.perf_counter() - t, 1)}


def make_fashion(folder: Path, n: int | None) -> dict:
    from PIL import Image

    from bench.datasets import load_split

    t = time.perf_counter()
    count = 0
    for split in ("train", "test"):
        images, labels = load_split(split)
        for i, (im, lab) in enumerate(zip(images, labels)):
            if n is not None and count >= n:
                break
            path = folder / f"class{int(lab)}" / f"{split}{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(path)
            count += 1
    return {"files": count, "width": 28, "height": 28, "generate_s": round(time.perf_counter() - t, 1)}


def change_files(folder: Path, work: Path, kind: str) -> dict:
    """Add, change and delete CHANGED of the files (evenly spread over the sorted list)."""
    from PIL import Image, ImageOps

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    m = max(1, round(CHANGED * len(files)))
    step = len(files) // (3 * m)
    changed, deleted, sources = (files[first:3 * m * step:3 * step] for first in (0, step, 2 * step))
    added = folder / "new"
    added.mkdir()
    if kind == "photos":  # new photos (not links): a changed file is a new inode under the old name
        from bench.datasets import jpeg_files, make_jpegs

        make_jpegs(work / "fresh", 2 * m, size=PHOTO_SIZE, seed=1)
        fresh = jpeg_files(work / "fresh")
        for path, new in zip(changed, fresh[:m]):
            os.replace(new, path)
        for i, new in enumerate(fresh[m:]):
            os.replace(new, added / f"added{i:05d}.jpg")
    else:
        for path in changed:
            ImageOps.mirror(Image.open(path)).save(path)
        for i, src in enumerate(sources):
            ImageOps.flip(Image.open(src)).save(added / f"added{i:05d}.png")
    for path in deleted:
        path.unlink()
    return {"added": m, "changed": len(changed), "deleted": len(deleted)}


# ----- measuring ---------------------------------------------------------------------------------------------
def run_cli(task: dict) -> dict:
    """In a fresh process (:func:`bench.common.start_child`): ``lookalike ARGS``, its wall time, peak memory
    (``VmHWM``; the largest worker's ``ru_maxrss``) and its JSON output."""
    from app.cli import main

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(task["args"])
    wall = time.perf_counter() - t
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    text = out.getvalue()
    return {"rc": rc, "wall_s": wall, "peak_rss_bytes": hwm * 1024, "worker_peak_rss_bytes": kids * 1024,
            "output": json.loads(text) if text.strip().startswith("{") else None}


def cli(*args: str, background: bool = False):
    """``lookalike ARGS`` in a fresh process: its figures (:func:`finish`), or the process with ``background``."""
    proc = start_child(__spec__.name, {"args": list(args)})
    return proc if background else finish(proc)


def finish(proc: subprocess.Popen) -> dict:
    figures = finish_child(proc)
    if figures["rc"] != 0:
        raise RuntimeError(f"command {' '.join(proc.args[-1:])} failed with status {figures['rc']}")
    return figures


def scan_time(folder: Path) -> dict:
    from retrieval.collection import scan

    t = time.perf_counter()
    col = scan(folder, labels=True)
    wall = time.perf_counter() - t
    return {"scan_s": round(wall, 2), "items": len(col.items), "files_per_s": round(len(col.items) / wall)}


def build(folder: Path, indexes: Path, name: str, background: bool = False):
    """``lookalike index build`` of ``folder`` (the process, with ``background``: see :func:`built`)."""
    proc = cli("index", "build", str(folder), "--encoder", SPEC, "--name", name, "--indexes", str(indexes), "--json",
               background=True)
    return proc if background else built(proc)


def built(proc: subprocess.Popen) -> dict:
    r = finish(proc)
    count = r["output"]["count"]
    return {"build_s": round(r["wall_s"], 1), "count": count, "images_per_s": round(count / r["wall_s"], 1),
            "peak_rss_bytes": r["peak_rss_bytes"], "worker_peak_rss_bytes": r["worker_peak_rss_bytes"]}


class Searcher:
    """``/search`` of the running app, timed one call at a time."""

    def __init__(self, url: str, queries: dict[str, list[Path]]):
        from gradio_client import Client

        self.client = Client(url, download_files=False, verbose=False)  # the page fetches pictures itself
        self.queries, self.turn, self.url = queries, 0, url
        self._http, self._uploaded = None, {}

    def once(self, name: str) -> float:
        from gradio_client import handle_file

        query = self.queries[name][self.turn % len(self.queries[name])]
        self.turn += 1
        t = time.perf_counter()
        _, results = self.client.predict(handle_file(str(query)), name, K, api_name="/search")
        ms = (time.perf_counter() - t) * 1e3
        if len(results) != K:
            raise RuntimeError(f"/search of {name} answered {len(results)} results")
        return ms

    def idle(self, name: str, n: int) -> dict:
        self.once(name)  # the first search loads the index and the encoder
        return latency([self.once(name) for _ in range(n)])

    def http(self, name: str, n: int) -> dict:
        """The same endpoint over plain HTTP, the query uploaded once, as the page sends it (it uploads a picture
        when it is dropped, then each search names the upload): the app's own time per search, without the
        client library's upload and event-stream handling (``gradio_api/call/search``, then its result)."""
        self.http_once(name)  # the upload, and the first search
        return latency([self.http_once(name) for _ in range(n)])

    def http_once(self, name: str) -> float:
        import httpx

        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=120, trust_env=False)
        h = self._http
        if name not in self._uploaded:
            with open(self.queries[name][0], "rb") as f:
                self._uploaded[name] = h.post("gradio_api/upload", files={"files": f}).json()[0]
        call = {"data": [{"path": self._uploaded[name], "meta": {"_type": "gradio.FileData"}}, name, K]}
        t = time.perf_counter()
        event = h.post("gradio_api/call/search", json=call).json()["event_id"]
        answer = h.get(f"gradio_api/call/search/{event}").text
        ms = (time.perf_counter() - t) * 1e3
        if "event: complete" not in answer:
            raise RuntimeError(f"/search over HTTP answered {answer[:200]!r}")
        return ms

    def engine(self, indexes: Path, name: str, n: int) -> dict:
        """The same searches without the app: ``Workspace.search`` in this process (where the app's time goes)."""
        from retrieval.workspace import Workspace

        ws = Workspace(indexes)
        ws.search(name, self.queries[name][0], k=K)
        times = []
        for i in range(n):
            t = time.perf_counter()
            ws.search(name, self.queries[name][i % len(self.queries[name])], k=K)
            times.append((time.perf_counter() - t) * 1e3)
        return latency(times)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def during(self, name: str, busy: subprocess.Popen) -> dict:
        """Paced searches until ``busy`` (a process) ends, through gradio_client and over plain HTTP in turn."""
        times: dict[str, list[float]] = {"gradio_client": [], "http": []}
        while busy.poll() is None:
            times["gradio_client"].append(self.once(name))
            time.sleep(PACE_S)
            if busy.poll() is None:
                times["http"].append(self.http_once(name))
                time.sleep(PACE_S)
        return {**latency(times["gradio_client"]), "http": latency(times["http"])}


def query_copies(collection: Path, pattern: str, folder: Path) -> list[Path]:
    """Copies of 20 of the collection's pictures (every 997th), outside it (as a user uploads one): the 1% of files
    a refresh step deletes or rewrites may include a query (a deleted one failed the search while the index
    refreshed)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(sorted(collection.rglob(pattern))[::997][:20]):
        out.append(folder / f"{i:02d}{src.suffix}")
        shutil.copyfile(src, out[-1])
    return out


def latency(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else [ms[0]] * 19
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(q[18], 1),
            "max_ms": round(max(ms), 1), "meets_goal": q[18] <= GOALS["search_p95_ms"]}


def peak_above_baseline(work):
    """(result, seconds, peak RSS above the RSS at the start) of ``work()`` (Linux: VmHWM reset first)."""
    def status(key: str) -> int:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = status("VmRSS")
    t = time.perf_counter()
    out = work()
    return out, round(time.perf_counter() - t, 2), status("VmHWM") - base


def explore(indexes: Path, name: str) -> dict:
    """The Explore tab's two computations on the whole index, as the tab calls them."""
    import numpy as np

    from app.tabs.explore import MAP_POINTS
    from retrieval.index_store import IndexStore
    from retrieval.neighbours import near_duplicate_pairs, pca_2d

    store = IndexStore.open(indexes, name)
    (paths, vectors), vec_s, vec_mem = peak_above_baseline(store.vectors)
    pairs, dup_s, dup_mem = peak_above_baseline(lambda: near_duplicate_pairs(paths, vectors, store.search, 0.95))
    sel = np.sort(np.random.default_rng(0).choice(len(paths), min(MAP_POINTS, len(paths)), replace=False))
    pca_2d(vectors[sel])  # warm-up: the first call pays the linear-algebra library's start-up (~2 s here)
    _, map_s, map_mem = peak_above_baseline(lambda: pca_2d(vectors[sel]))
    _, all_s, all_mem = peak_above_baseline(lambda: pca_2d(vectors))
    return {"vectors_s": vec_s, "vectors_peak_bytes": vec_mem, "near_duplicates_s": dup_s,
            "near_duplicates_peak_bytes": dup_mem, "near_duplicate_pairs": len(pairs),
            "map_sample_points": len(sel), "map_pca_s": map_s, "map_pca_peak_bytes": map_mem,
            "pca_all_s": all_s, "pca_all_peak_bytes": all_mem, "vector_bytes": int(vectors.nbytes),
            "index_type": store.manifest["index_type"]}


def index_bytes(indexes: Path, name: str) -> int:
    return sum(p.stat().st_size for p in (indexes / name).rglob("*") if p.is_file())


def thumbnail_cache(indexes: Path, items: int) -> dict:
    """What the searches left in the app's thumbnail cache (shared by the indexes), and a cache of every item."""
    from retrieval.thumbnails import thumbnail_dir

    thumbs = [p.stat().st_size for p in thumbnail_dir(indexes).rglob("*") if p.is_file()]
    mean = sum(thumbs) / len(thumbs) if thumbs else 0
    return {"thumbnails": len(thumbs), "bytes": sum(thumbs), "mean_bytes": round(mean),
            "every_item_bytes_estimate": round(mean * items)}


# ----- the run ---------------------------------------------------------------------------------------------------
def run(args, work: Path) -> dict:
    from app.ui import launch
    from bench.datasets import FASHION_MNIST
    from retrieval.workspace import Workspace

    mode = MODES["quick" if args.quick else "full"]
    n_photos = args.photos or mode["photos"]
    indexes, folders = work / "indexes", {"photos": work / "photos", "fashion": work / "fashion"}
    figures: dict = {"photos": {}, "fashion": {}}
    figures["photos"]["collection"] = make_photos(folders["photos"], work, n_photos,
                                                  max(1, n_photos // mode["distinct"]))
    log(f"photos: {figures['photos']['collection']}")
    kinds = ["photos"] + (["fashion"] if FASHION_MNIST.is_dir() else [])
    if "fashion" not in kinds:
        figures["fashion"] = {"skipped": f"{FASHION_MNIST} missing: apt-get install -y dataset-fashion-mnist"}
    figures["photos"].update(scan_time(folders["photos"]))
    figures["photos"]["build"] = build(folders["photos"], indexes, "photos")
    log(f"photos: scan + build {figures['photos']}")
    demo = launch(workspace=Workspace(indexes), port=free_port(), block=False, examples=[])
    search = None
    try:
        queries = {"photos": query_copies(folders["photos"], "*.jpg", work / "q-photos")}
        search = Searcher(demo.local_url, queries)
        figures["photos"]["search_idle"] = search.idle("photos", mode["queries"])
        figures["photos"]["search_http_idle"] = search.http("photos", mode["queries"])
        figures["photos"]["search_engine_only"] = search.engine(indexes, "photos", mode["queries"])
        log(f"photos: idle search {figures['photos']['search_idle']}")
        if "fashion" in kinds:
            figures["fashion"]["collection"] = make_fashion(folders["fashion"], args.fashion or (
                mode["fashion"] if args.quick else None))
            figures["fashion"].update(scan_time(folders["fashion"]))
            queries["fashion"] = query_copies(folders["fashion"], "*.png", work / "q-fashion")
            proc = build(folders["fashion"], indexes, "fashion", background=True)
            figures["photos"]["search_while_another_index_builds"] = search.during("photos", proc)
            figures["fashion"]["build"] = {**built(proc), "note": "built while the app answered paced searches "
                                                                  "on photos"}
            figures["fashion"]["search_idle"] = search.idle("fashion", mode["queries"])
            figures["fashion"]["search_http_idle"] = search.http("fashion", mode["queries"])
            figures["fashion"]["search_engine_only"] = search.engine(indexes, "fashion", mode["queries"])
            log(f"fashion: {figures['fashion']}")
        for kind in kinds:
            figures[kind]["changes"] = change_files(folders[kind], work, kind)
            proc = cli("index", "refresh", kind, "--indexes", str(indexes), "--json", background=True)
            figures[kind]["search_while_refreshing"] = search.during(kind, proc)
            r = finish(proc)
            out = r["output"]
            figures[kind]["refresh"] = {"refresh_s": round(r["wall_s"], 1), "added": out["added"],
                                        "removed": out["removed"], "peak_rss_bytes": r["peak_rss_bytes"],
                                        "fraction_of_build": round(r["wall_s"] / figures[kind]["build"]["build_s"],
                                                                   4)}
            figures[kind]["refresh"]["meets_goal"] = (figures[kind]["refresh"]["fraction_of_build"]
                                                      <= GOALS["refresh_fraction_of_build"])
            log(f"{kind}: refresh {figures[kind]['refresh']}, searches {figures[kind]['search_while_refreshing']}")
            figures[kind]["search_after_refresh"] = search.idle(kind, mode["queries"] // 2)
    finally:
        if search is not None:
            search.close()
        demo.close()
    for kind in kinds:
        figures[kind]["explore"] = explore(indexes, kind)
        figures[kind]["index_bytes"] = index_bytes(indexes, kind)
        log(f"{kind}: explore {figures[kind]['explore']}, index {figures[kind]['index_bytes']} bytes")
    figures["thumbnail_cache"] = thumbnail_cache(indexes, sum(figures[k]["build"]["count"] for k in kinds))
    return figures


def main(argv: list[str] | None = None) -> int:
    if child_main(argv, run_cli):
        return 0
    started = time.perf_counter()
    ap = parser(__doc__, quick="5,000 images per collection (a few minutes)", threads=False, seed=None)
    ap.add_argument("--photos", type=int, default=None, help="photos in the generated folder (default 100,000)")
    ap.add_argument("--fashion", type=int, default=None, help="Fashion-MNIST images (default all 70,000)")
    ap.add_argument("--work", default=None, help="where the folders and indexes go (default: a temporary folder)")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lookalike-scale-"))
    try:
        figures = run(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    figures["goals"] = GOALS
    settings = {"mode": "quick" if args.quick else "full", "encoder": SPEC, "photo_size": PHOTO_SIZE, "k": K,
                "changed_fraction": CHANGED, "pace_s": PACE_S, "wall_s": round(time.perf_counter() - started, 1),
                "command": "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)}
    path = save_result(quick_name(NAME, args.quick), figures, **settings)
    report(path, args, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
