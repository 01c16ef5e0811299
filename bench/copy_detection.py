"""Copy detection on real photographs: edited copies of Tux Paint photos searched among the originals and distractors.

Every Tux Paint photo (``bench.datasets``, all categories: 430 photos with the Debian package of 2026) is
composited on a generated texture (seeded). A seeded permutation splits them: half are the **references**, a
quarter are **distractors** in the database, a quarter are never indexed. The database is the references, those
distractors, and Fashion-MNIST images (upscaled to 112 px RGB; 300 with ``--quick``, 2,000 otherwise) when
``dataset-fashion-mnist`` is installed. Queries are edited copies (:data:`EDITS`, :func:`edit`: a crop keeping
30–70% of the area, a rotation by 10–40°, a colour shift (hue, saturation, brightness, contrast), JPEG at quality
25–35, an overlaid shape and word drawn with PIL (no demo data needed), a mirror flip, a Gaussian blur, or two of
these then JPEG): of every reference (a **positive** query, whose one true match is that reference) and of every
never-indexed photo (a **negative** query: no copy in the database, as most DISC21 queries). Query i gets edit
``EDITS[i % 8]``, its parameters drawn from a generator seeded by (``--seed``, i): the whole benchmark is the same
on every run. With the 2026 package: 215 positive and 108 negative queries, 215 + 107 + 2,000 database images.

Columns: recall@1 -- the positive queries whose first result is their reference; micro-AP -- DISC21's
micro-average precision over the top 10 of every query, positive and negative
(``retrieval.metrics.micro_average_precision``); ``r1/<edit>`` -- recall@1 per edit. Trained rows train on the
database folder (no labels, transductive). Rows, budget and result files: :mod:`bench.photos`.

Rerun:  python -m bench.copy_detection --quick --groups baselines   # untrained rows
        python -m bench.copy_detection --minutes 3 --runs-dir runs/bench-copy-detection
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import photos
from bench.common import logger
from bench.datasets import COPY_EDITS as EDITS
from bench.datasets import COPY_FMNIST as FMNIST
from bench.datasets import COPY_FMNIST_SIZE as FMNIST_SIZE
from bench.datasets import COPY_SIZE as SIZE
from bench.datasets import build_copy_detection as build
from bench.datasets import check_installed

NAME = "copy_detection"
log = logger(NAME)
TOP_K = 10
HEADLINE = ("micro_ap", "recall@1")  # what "beats" means in the goals
COLUMNS = ("recall@1", "micro_ap", "r1/crop", "r1/rotate", "r1/overlay", "r1/combo")


def score(encoder, root: Path, truth: dict[str, str | None]) -> dict:
    from retrieval.collection import scan
    from retrieval.embed import embed_collection
    from retrieval.metrics import micro_average_precision, top_k

    t0 = time.perf_counter()
    db = embed_collection(encoder, scan(root / "db"), progress=False)
    qs = embed_collection(encoder, scan(root / "queries"), progress=False)
    seconds = time.perf_counter() - t0
    where = {p: i for i, p in enumerate(db.paths)}
    target = np.array([where.get(truth[q], -2) if truth[q] else -1 for q in qs.paths])  # -1: no copy indexed
    scores, idx = top_k(qs.vectors, db.vectors, TOP_K)
    rel = idx == target[:, None]
    pos = target != -1
    kinds = np.array([q.rsplit("_", 1)[1].removesuffix(".png") for q in qs.paths])
    out = {"recall@1": float(rel[pos, 0].mean()),
           "micro_ap": micro_average_precision(scores, rel, int(pos.sum())),
           **{f"r1/{k}": float(rel[pos & (kinds == k), 0].mean()) for k in EDITS if (pos & (kinds == k)).any()}}
    return {**out, "database": len(db.paths), "queries": len(qs.paths),
            "unreadable": len(db.skipped) + len(qs.skipped), "embedded": len(db.paths) + len(qs.paths),
            "embed_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = photos.photo_parser(__doc__).parse_args(argv)
    check_installed()
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as tmp:
        root = Path(tmp)
        facts = build(root, args.seed, FMNIST["quick" if args.quick else "full"])
        truth = facts.pop("truth")
        return photos.run_benchmark(
            NAME, args, lambda enc: score(enc, root, truth), lambda: root / "db", COLUMNS, HEADLINE,
            f"Copy detection: {facts['positive_queries']} + {facts['negative_queries']} (no copy indexed) edited "
            f"photos against {facts['references']} originals + {facts['tux_distractors']} + "
            f"{facts['fmnist_distractors']} distractors",
            data={**facts, "size": SIZE, "edits": list(EDITS), "top_k": TOP_K,
                  "backgrounds": "generated textures (bench.datasets.texture), seeded",
                  "fmnist_size": FMNIST_SIZE, "micro_ap": "DISC21: all top-k pairs ranked by score, one list"})


if __name__ == "__main__":
    sys.exit(main())
