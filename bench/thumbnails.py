"""What a gallery of 50 phone-sized results costs the browser: originals (before) vs thumbnails (after).

A folder of 12-MP JPEGs (4000x3000, the synthetic photos of ``bench.datasets.make_jpegs``) is indexed with
``pixels``; the app runs in this process on loopback and one of the photos is searched with ``k=50`` through the
public ``/search`` endpoint (``gradio_client``), then every gallery image is fetched over HTTP, 6 at a time like a
browser. "Time to a filled gallery" is the search call plus those fetches.

* **before** — the old page sent every result as its original file. It is measured as that: the same search, then
  the 50 originals fetched from the app's file route (``/gradio_api/file=PATH``). The old server also hashed (and
  the first time copied) each original into Gradio's cache while answering; that is timed apart
  (``before_server_copy``) and not added, so "before" is a lower bound.
* **after, cold** — the thumbnail cache emptied first: the search makes the 50 thumbnails, then they are fetched.
* **after, warm** — the same search again: thumbnails come from the cache.

Bytes are what the browser receives for the gallery (bodies of the image responses). Loopback has no network, so
the time the bytes would take on a 50 Mbit/s link is given beside.

Rerun:  python -m bench.thumbnails            # 50 photos, 3 repeats (~3 min on 2 cores)
        python -m bench.thumbnails --quick    # 12 photos, 1 repeat
Writes ``bench/results/thumbnails.json`` (machine and date included).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import free_port, parser, quick_name, report, save_result
from bench.datasets import make_jpegs

PHOTO = (4000, 3000)
QUALITY = 85
LINK_MBIT = 50  # a good home connection, for the "over a network" column
PARALLEL = 6  # connections a browser opens to one host


def fetch_all(http, urls: list[str]) -> int:
    """GET every URL, ``PARALLEL`` at a time; total body bytes."""
    def one(url: str) -> int:
        resp = http.get(url)
        resp.raise_for_status()
        return len(resp.content)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return sum(pool.map(one, urls))


def old_server_copy(originals: list[Path], cache: Path) -> dict:
    """What the old server also did per search and "before" leaves out: Gradio hashing each original result into
    its cache (and copying it there the first time)."""
    from gradio.processing_utils import save_file_to_cache

    times = []
    for _ in range(2):
        start = time.perf_counter()
        for path in originals:
            save_file_to_cache(path, str(cache))
        times.append(round(time.perf_counter() - start, 3))
    return {"first_search_s": times[0], "later_searches_s": times[1]}


def run(photos: int, repeats: int) -> dict:
    import httpx
    from gradio_client import Client, handle_file

    from app.serving import file_url
    from app.ui import launch
    from retrieval.workspace import Workspace

    work = Path(tempfile.mkdtemp(prefix="lookalike-thumbs-"))
    try:
        collection = work / "photos"
        made = make_jpegs(collection, photos, size=PHOTO, quality=QUALITY, seed=7)
        ws = Workspace(work / "indexes")
        ws.build(collection, "pixels", "photos", progress=False)
        demo = launch(workspace=ws, port=free_port(), block=False)
        try:
            client = Client(demo.local_url, download_files=False, verbose=False)
            query = handle_file(str(sorted(collection.rglob("*.jpg"))[0]))
            thumbs = demo.lookalike.ctx.thumbs.directory
            with httpx.Client(timeout=120, trust_env=False) as http:
                # "before" last: its search then finds the thumbnails made, as the old page made none
                rows = {"after_cold": [], "after_warm": [], "before": []}
                for _ in range(repeats):
                    for case in rows:
                        if case == "after_cold":
                            shutil.rmtree(thumbs, ignore_errors=True)
                        start = time.perf_counter()
                        gallery, results = client.predict(query, "photos", photos, api_name="/search")
                        searched = time.perf_counter() - start
                        if case == "before":
                            urls = [demo.local_url + file_url(collection / r["path"]) for r in results]
                        else:
                            urls = [item["image"]["url"] for item in gallery]
                        sent = fetch_all(http, urls)
                        rows[case].append({"search_s": searched, "filled_s": time.perf_counter() - start,
                                           "bytes": sent, "images": len(urls)})
            cache_bytes = sum(p.stat().st_size for p in thumbs.rglob("*.jpg"))
        finally:
            demo.close()
        old_copy = old_server_copy([collection / r["path"] for r in results], work / "gradio-cache")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {"photos": made, "thumbnail_cache_bytes": cache_bytes, "before_server_copy": old_copy}
    for case, runs in rows.items():
        sent = runs[-1]["bytes"]
        figures[case] = {"images": runs[-1]["images"], "bytes": sent, "mb": round(sent / 1e6, 2),
                         "search_s": round(statistics.median(r["search_s"] for r in runs), 3),
                         "time_to_filled_gallery_s": round(statistics.median(r["filled_s"] for r in runs), 3),
                         f"transfer_at_{LINK_MBIT}_mbit_s": round(sent * 8 / (LINK_MBIT * 1e6), 2),
                         "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                                  for r in runs]}
    figures["bytes_ratio"] = round(figures["before"]["bytes"] / max(figures["after_warm"]["bytes"], 1), 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, quick="12 photos, one repeat", threads=False, seed=None).parse_args(argv)
    photos, repeats = (12, 1) if args.quick else (50, 3)
    figures = run(photos, repeats)
    path = save_result(quick_name("thumbnails", args.quick), figures, photos=photos, repeats=repeats,
                       photo_size=list(PHOTO), jpeg_quality=QUALITY, parallel_fetches=PARALLEL,
                       mode="quick" if args.quick else "full")
    lines = [f"{case:<11} {f['images']} images  {f['mb']:>8.2f} MB  search {f['search_s']:.2f} s  "
             f"filled gallery {f['time_to_filled_gallery_s']:.2f} s  "
             f"(+{f[f'transfer_at_{LINK_MBIT}_mbit_s']:.1f} s at {LINK_MBIT} Mbit/s)"
             for case, f in ((c, figures[c]) for c in ("before", "after_cold", "after_warm"))]
    report(path, args, "\n".join(lines) + f"\nbytes: {figures['bytes_ratio']}x fewer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
