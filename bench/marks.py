"""A few labels on Tux Paint: held-out mAP@10 before and after the linear map learnt from marks (retrieval/marks.py).

The photos of every Tux Paint category with at least 8 of them (``bench/tuxpaint.py``) on white and on textures,
embedded with the pretrained ``timm:tf_efficientnet_lite0``. Per set and per seed:

* ``labels 10%`` / ``labels 1%``: that share of the photos, stratified by category (at least one photo for 1%:
  three in all), keeps its label; the map is fitted from the labelled photos' same/different pairs;
* ``twenty marked queries``: 20 random photos are queried, each of their top-10 results marked right or wrong by
  its true category, as the Search tab's buttons would; the map is fitted from those marks.

Held-out queries are the photos that took no part (not labelled, not a marked query or result); each searches the
whole set (itself left out), relevant = same category, mAP@10 normalised by min(10, others of the category).
``before`` is the raw vectors on the same held-out queries, ``after`` the vectors through the map. Mean of
``--seeds`` seeds. Writes bench/results/marks.json.

Rerun:  python -m bench.marks            # ~3 min on 2 busy cores, most of it embedding 554 images
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import save_result
from bench.datasets import check_installed, make_folder
from retrieval.marks import DEFAULT_BOOST, DEFAULT_SHRINK, apply_map, fit_map, label_pairs
from retrieval.metrics import map_at_k, relevance_from_labels, top_k

ENCODER = "timm:tf_efficientnet_lite0"
SETS = ("white", "texture")
K = 10
MARKED_QUERIES = 20


def embed_sets(encoder_spec: str, cache: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(vectors, labels) per set, read from / written to ``cache`` (an .npz) when given."""
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return {s: (f[f"{s}_v"], f[f"{s}_l"]) for s in SETS}
    from retrieval.collection import scan
    from retrieval.embed import embed_collection
    from retrieval.encoders import load_encoder

    encoder = load_encoder(encoder_spec)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-marks-") as tmp:
        for s in SETS:
            make_folder(Path(tmp) / s, 8, 256, background=s, seed=0)
            collection = scan(Path(tmp) / s, labels=True)
            label = {it.path: it.label for it in collection.items}
            emb = embed_collection(encoder, collection, progress=False)
            out[s] = (emb.vectors, np.array([label[p] for p in emb.paths]))
    if cache is not None:
        np.savez(cache, **{f"{s}_{k}": a for s, (v, lab) in out.items() for k, a in (("v", v), ("l", lab))})
    return out


def heldout_map(vectors: np.ndarray, labels: np.ndarray, held: np.ndarray) -> float:
    """mAP@10 of the ``held`` rows querying every row (themselves left out)."""
    _, idx = top_k(vectors[held], vectors, K + 1)
    idx = np.array([[j for j in row if j != q][:K] for row, q in zip(idx, held)])
    rel = relevance_from_labels(idx, labels[held], labels)
    per = {lab: int((labels == lab).sum()) for lab in set(labels)}
    return map_at_k(rel, K, n_relevant=np.array([per[lab] - 1 for lab in labels[held]]))


def stratified(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    chosen: list[int] = []
    for lab in sorted(set(labels)):
        rows = np.flatnonzero(labels == lab)
        rng.shuffle(rows)
        chosen += list(rows[:int(round(share * len(rows)))])
    if not chosen:  # 1% of a few hundred photos rounds to nothing per category: take that share of the whole set
        chosen = list(rng.choice(len(labels), max(1, int(round(share * len(labels)))), replace=False))
    return np.array(sorted(chosen), dtype=np.int64)


def from_labels(vectors, labels, share, rng):
    """(same, diff, rows used) of ``share`` of the labels."""
    used = stratified(labels, share, rng)
    known: list[str | None] = [None] * len(labels)
    for i in used:
        known[i] = str(labels[i])
    same, diff = label_pairs(known)
    return same, diff, used


def from_marked_queries(vectors, labels, _share, rng):
    """(same, diff, rows used) of 20 queries whose top-10 results are marked by their true category."""
    queries = rng.choice(len(labels), MARKED_QUERIES, replace=False)
    _, idx = top_k(vectors[queries], vectors, K + 1)
    same, diff, used = [], [], set(queries.tolist())
    for q, row in zip(queries, idx):
        for r in [j for j in row if j != q][:K]:
            (same if labels[r] == labels[q] else diff).append((q, r))
            used.add(int(r))
    pairs = [np.array(p, np.int64).reshape(-1, 2) for p in (same, diff)]
    return pairs[0], pairs[1], np.array(sorted(used), dtype=np.int64)


SCENARIOS = {"labels 10%": (from_labels, 0.10), "labels 1%": (from_labels, 0.01),
             "twenty marked queries": (from_marked_queries, None)}


def run_scenario(vectors, labels, make_pairs, share, seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        same, diff, used = make_pairs(vectors, labels, share, rng)
        held = np.setdiff1d(np.arange(len(labels)), used)
        before = heldout_map(vectors, labels, held)
        after = before
        if len(same) or len(diff):
            mean, matrix = fit_map(vectors, same, diff)
            after = heldout_map(apply_map(mean, matrix, vectors), labels, held)
        rows.append((before, after, len(used), len(same), len(diff)))
    r = np.array(rows, dtype=np.float64)
    return {"before": round(r[:, 0].mean(), 4), "after": round(r[:, 1].mean(), 4),
            "gain": round((r[:, 1] - r[:, 0]).mean(), 4), "gain_min": round((r[:, 1] - r[:, 0]).min(), 4),
            "images_used": float(r[:, 2].mean()), "same_pairs": float(r[:, 3].mean()),
            "different_pairs": float(r[:, 4].mean()), "held_out": int(len(labels) - r[:, 2].mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default=ENCODER)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cache", type=Path, help="an .npz of the embedded sets to read (or write), to rerun fast")
    args = ap.parse_args(argv)
    check_installed()
    sets = embed_sets(args.encoder, args.cache)
    figures = {}
    for s, (vectors, labels) in sets.items():
        for scenario, (make_pairs, share) in SCENARIOS.items():
            figures[f"{s}/{scenario}"] = out = run_scenario(vectors, labels, make_pairs, share, args.seeds)
            print(f"{s:8s} {scenario:22s} held-out mAP@10 {out['before']:.3f} -> {out['after']:.3f} "
                  f"({out['gain']:+.3f}, worst seed {out['gain_min']:+.3f})", flush=True)
    path = save_result("marks", figures, encoder=args.encoder, seeds=args.seeds, k=K, shrink=DEFAULT_SHRINK,
                       boost=DEFAULT_BOOST, photos={s: int(len(v[1])) for s, v in sets.items()},
                       categories=int(len(set(sets["white"][1]))))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
