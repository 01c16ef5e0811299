"""Category retrieval on real photographs: the Tux Paint photo cut-outs, composited on white and on textures.

The photos of every Tux Paint category with at least 8 of them (``bench.datasets.make_folder``: 277 photos in 18
categories with the Debian package of 2026) are written twice into a temp folder: on white (centred, 5% margin) and
on generated photo-like textures (seeded by ``--seed`` and each stamp's path: a smooth colour field, value noise,
sometimes stripes, blur and grain; the object 55–85% of the side at a random place). Each composite is scored
leave-one-out within its own set: every photo queries the others, a result is relevant when it is of the same
category. Columns, for each set (``white/…``, ``texture/…``):

* recall@1 -- the first result is of the query's category;
* mAP@10 -- mean average precision at 10, normalised by min(10, the other photos of the category);
* kNN acc -- category predicted by a weighted vote of the 200 nearest (``retrieval.metrics.knn_accuracy``: k=200,
  T=0.1; with ~15 photos per category most of the 200 are other categories, so the vote rests on how peaked the
  similarities are), and ``knn@20``, the same vote among the 20 nearest.

Trained rows train on both sets together (554 images, no labels): the collection a user would index, transductive.
Rows, budget and result files: :mod:`bench.photos`. The stamps are GPL-2: nothing derived from them is kept.

Rerun:  python -m bench.tuxpaint_retrieval --quick --groups baselines   # untrained rows, ~3 min
        python -m bench.tuxpaint_retrieval --minutes 3 --runs-dir runs/bench-tuxpaint
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench import photos
from bench.common import timed
from bench.datasets import check_installed, make_folder

NAME = "tuxpaint_retrieval"
SETS = ("white", "texture")
MIN_PER_CATEGORY = 8
SIZE = 256
KNN_SMALL_K = 20
HEADLINE = ("white/map@10", "texture/map@10")  # what "beats" means in the goals
COLUMNS = tuple(f"{s}/{m}" for s in SETS for m in ("recall@1", "map@10", "knn_acc"))


def score_folder(encoder, folder: Path) -> dict:
    """Leave-one-out category retrieval of the labelled ``folder`` with ``encoder``."""
    from retrieval.collection import scan
    from retrieval.embed import embed_collection
    from retrieval.metrics import evaluate_labelled, knn_accuracy

    collection = scan(folder, labels=True)
    label = {it.path: it.label or "" for it in collection.items}
    seconds, emb = timed(embed_collection, encoder, collection, progress=False)
    labels = [label[p] for p in emb.paths]
    out = evaluate_labelled(emb.vectors, labels)
    out["knn@20"] = knn_accuracy(emb.vectors, labels, emb.vectors, labels, k=KNN_SMALL_K, exclude_self=True)
    return {**out, "images": len(emb.paths), "unreadable": len(emb.skipped), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = photos.photo_parser(__doc__).parse_args(argv)
    check_installed()
    with tempfile.TemporaryDirectory(prefix="bench-tuxpaint-") as tmp:
        root = Path(tmp) / "photos"
        counts = {s: make_folder(root / s, MIN_PER_CATEGORY, SIZE, background=s, seed=args.seed) for s in SETS}

        def evaluate(encoder) -> dict:
            per_set = {s: score_folder(encoder, root / s) for s in SETS}
            out = {f"{s}/{k}": v for s, r in per_set.items() for k, v in r.items() if k not in ("seconds",)}
            out["embedded"] = sum(r["images"] for r in per_set.values())
            out["embed_seconds"] = sum(r["seconds"] for r in per_set.values())
            return out

        n = sum(counts["white"].values())
        return photos.run_benchmark(
            NAME, args, evaluate, lambda: root, COLUMNS, HEADLINE,
            f"Tux Paint category retrieval: {n} photos in {len(counts['white'])} categories, on white and on "
            f"textures", data={"photos": n, "categories": counts["white"], "sets": list(SETS), "size": SIZE,
                               "min_per_category": MIN_PER_CATEGORY, "train_folder": "both sets (no labels)",
                               "knn": "k=200, T=0.1 (knn@20: k=20)"})


if __name__ == "__main__":
    sys.exit(main())
