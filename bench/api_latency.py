"""Latency of the app's plain JSON endpoint, ``POST /api/search``, against ``Workspace.search`` in the same process.

An index of N random unit vectors (``flat``, the kind ``auto`` picks below its HNSW threshold only for small N, so
the kind is named) is written straight through ``IndexStore.create`` with made-up item paths, for the encoder
``random:resnet10t?size=64`` (the demo encoders' architecture and input); the app is started in-process as
``tests/app/app_server.py`` starts it, and one 64x64 JPEG query is sent ``--queries`` times over HTTP (httpx, a
kept-alive connection, as a script would), alternating with the same search called in-process, so both see the
same machine load. The difference between the two is what HTTP, the form and the JSON cost; the rest is the
forward pass of the query and FAISS.

Rerun:  python -m bench.api_latency --quick      # 10,000 vectors, 40 queries
        python -m bench.api_latency              # 100,000 vectors, 200 queries
Writes ``bench/results/api_latency.json`` (``api_latency_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import quick_name, save_result

ENCODER = "random:resnet10t?size=64"
NAME = "bench"


def make_index(root: Path, n: int, seed: int = 0):
    """A flat index of ``n`` random unit vectors for :data:`ENCODER`, its items named ``dNN/NNNNNN.jpg``."""
    from retrieval.collection import Item
    from retrieval.index_store import IndexStore
    from retrieval.workspace import Workspace

    ws = Workspace(root / "indexes")
    encoder = ws.encoder(ENCODER)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, encoder.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [Item(f"d{i % 16:02d}/{i:06d}.jpg", 1000, 0.0) for i in range(n)]
    IndexStore.create(ws.root, NAME, encoder.identity, encoder.dim, root / "photos", index_type="flat",
                      items=items, vectors=vectors)
    return ws


def query_jpeg(size: int = 64) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=20, method="inclusive")
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p95_ms": round(q[18], 2),
            "max_ms": round(max(ms), 2)}


def measure(ws, url: str, image: bytes, queries: int, k: int) -> dict:
    import httpx

    http_ms, direct_ms = [], []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        def over_http():
            resp = http.post("api/search", files={"image": ("q.jpg", image, "image/jpeg")},
                             data={"index": NAME, "k": str(k)})
            resp.raise_for_status()
            return resp.json()

        assert over_http() == [r.to_json() for r in ws.search(NAME, image, k=k)]  # warm-up, and the same answer
        for _ in range(queries):
            for fn, out in ((over_http, http_ms), (lambda: ws.search(NAME, image, k=k), direct_ms)):
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000)
    return {"api_search_http": summary(http_ms), "workspace_search_in_process": summary(direct_ms),
            "http_overhead_p50_ms": round(statistics.median(http_ms) - statistics.median(direct_ms), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 vectors and 40 queries")
    parser.add_argument("--n", type=int, help="vectors in the index (default 100,000; 10,000 with --quick)")
    parser.add_argument("--queries", type=int, help="queries timed (default 200; 40 with --quick)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    queries = args.queries or (40 if args.quick else 200)
    from app.ui import launch

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ws = make_index(Path(tmp), n)
        made_s = time.perf_counter() - t
        demo = launch(workspace=ws, port=None, block=False, runs_dir=Path(tmp) / "runs")
        try:
            figures = measure(ws, demo.local_url, query_jpeg(), queries, args.k)
        finally:
            demo.close()
    figures["index_made_s"] = round(made_s, 2)
    path = save_result(quick_name("api_latency", args.quick), figures, n=n, queries=queries, k=args.k,
                       encoder=ENCODER, index_type="flat")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
