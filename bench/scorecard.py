"""Does the label-free scorecard rank encoders as labels would? Spearman correlation on the labelled benchmarks.

Each benchmark is a labelled folder; each row an encoder. For every (benchmark, row) the collection is embedded once
and scored twice from the same vectors: by the benchmark's labelled headline metric, and by the scorecard
(``retrieval.scorecard.score_embedded``: seed 0, its default sample; the folder's labels unused). Per benchmark the
script reports Spearman's rho between the scorecard and the headline over the rows (and the same for each part of
the scorecard), and whether the scorecard's top row is within 0.01 of the labelled best.

Benchmarks:

* ``emoji`` -- bench/quality.py's data: Twitter's 1,911 drawings are the collection, Google's drawings the queries;
  headline recall@1 (the other vendor's drawing of the same emoji first), also mAP@10;
* ``tuxpaint-white`` and ``tuxpaint-texture`` -- bench/tuxpaint_retrieval.py's sets (Tux Paint photo cut-outs on
  white and on textures, 18 categories); headline leave-one-out mAP@10 by category.

Rows (``ROWS``): encoders that need no training -- pixels, random resnet10t, the pretrained EfficientNet-Lite0/1/2
with avg and grid pooling at two sizes -- plus any run directory given with ``--row``. These are quick runs; the
issue's full goal (every trained row of every benchmark) is not what this measures.

Rerun:  python -m bench.scorecard                                  # every benchmark, the untrained rows
        python -m bench.scorecard --benchmarks emoji --row runs/x   # add a trained encoder as a row
Writes ``bench/results/scorecard.json`` (rows, correlations, machine, date); ``--out NAME`` names another file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, logger, save_result

NAME = "scorecard"
ROWS = ("pixels", "random:resnet10t?size=64", "random:resnet10t?size=64&pool=grid",
        "timm:tf_efficientnet_lite0?size=128", "timm:tf_efficientnet_lite0?size=128&pool=grid",
        "timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite0?pool=grid",
        "timm:tf_efficientnet_lite1?size=128&pool=grid", "timm:tf_efficientnet_lite2?size=128")
BENCHMARKS = ("emoji", "tuxpaint-white", "tuxpaint-texture")
HEADLINE = {"emoji": "recall@1", "tuxpaint-white": "map@10", "tuxpaint-texture": "map@10"}
NEAR_BEST = 0.01


_log = logger("scorecard")


def spearman(x, y) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None with fewer than 3 rows or a constant side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


# ------------------------------------------------------------------------------------------------------------
# benchmarks: each embeds its collection once and returns (labelled figures, paths, vectors)
# ------------------------------------------------------------------------------------------------------------
class Emoji:
    """Google's drawing finds Twitter's (bench/quality.py's data and ground truth)."""

    def __init__(self, data: Path):
        from app.demo_data import prepare_demo_data
        from bench.datasets import EmojiPairs

        demo = prepare_demo_data(data, log=_log)
        if demo.source != "emoji":
            raise RuntimeError("the emoji could not be fetched (npm): no emoji benchmark")
        self.ev = EmojiPairs(demo.collection, demo.queries, demo.meta)

    def __call__(self, encoder) -> tuple[dict, list[str], np.ndarray]:
        from retrieval.embed import embed_collection
        from retrieval.metrics import map_at_k, recall_at_k, top_k

        ev = self.ev
        db = embed_collection(encoder, ev.collection, progress=False)
        qs = embed_collection(encoder, ev.queries, paths=ev.query_paths, progress=False)
        where = {p: i for i, p in enumerate(db.paths)}
        truth = np.array([where.get(ev.collection.items[ev.truth[p]].path, -2) for p in qs.paths])
        _, idx = top_k(qs.vectors, db.vectors, 10)
        rel = idx == truth[:, None]
        figures = {"recall@1": recall_at_k(rel, 1), "map@10": map_at_k(rel, 10, n_relevant=np.ones(len(rel)))}
        return figures, [str(ev.collection.abspath(p)) for p in db.paths], db.vectors


class Tuxpaint:
    """Leave-one-out category retrieval of one of bench/tuxpaint_retrieval.py's sets."""

    def __init__(self, folder: Path, background: str, seed: int = 0):
        from bench.datasets import make_folder
        from retrieval.collection import scan

        make_folder(folder, background=background, seed=seed)  # the photo benchmarks' defaults: 8 per category, 256 px
        self.collection = scan(folder, labels=True)

    def __call__(self, encoder) -> tuple[dict, list[str], np.ndarray]:
        from retrieval.embed import embed_collection
        from retrieval.metrics import evaluate_labelled

        emb = embed_collection(encoder, self.collection, progress=False)
        label = {it.path: it.label or "" for it in self.collection.items}
        out = evaluate_labelled(emb.vectors, [label[p] for p in emb.paths])
        figures = {"recall@1": out["recall@1"], "map@10": out["map@10"]}
        return figures, [str(self.collection.abspath(p)) for p in emb.paths], emb.vectors


def make_benchmark(name: str, tmp: Path, data: Path):
    if name == "emoji":
        return Emoji(data)
    if name.startswith("tuxpaint-"):
        return Tuxpaint(tmp / name, name.split("-", 1)[1])
    raise SystemExit(f"unknown benchmark {name!r}: use {', '.join(BENCHMARKS)}")


# ------------------------------------------------------------------------------------------------------------
# scoring and correlation
# ------------------------------------------------------------------------------------------------------------
def score_row(bench, spec: str, seed: int) -> dict:
    from retrieval.encoders import load_encoder
    from retrieval.scorecard import score_embedded

    encoder = load_encoder(spec)
    t0 = time.perf_counter()
    figures, paths, vectors = bench(encoder)
    embed_s = time.perf_counter() - t0
    card = score_embedded(encoder, paths, vectors, seed=seed)
    return {"labelled": figures, "scorecard": card.to_json(), "embed_seconds": round(embed_s, 1),
            "scorecard_seconds": card.seconds}


def correlations(rows: dict[str, dict], headline: str) -> dict:
    """Spearman of the score and of every part with the headline; the top pick against the labelled best."""
    names = [n for n, r in rows.items() if "error" not in r]
    truth = [rows[n]["labelled"][headline] for n in names]
    score = [rows[n]["scorecard"]["score"] for n in names]
    parts = sorted({p for n in names for p in rows[n]["scorecard"]["parts"]})
    out = {"rows": len(names), "headline": headline, "spearman": spearman(score, truth),
           "parts": {p: spearman([rows[n]["scorecard"]["parts"].get(p, np.nan) for n in names], truth)
                     for p in parts}}
    if names:
        best = max(truth)
        pick = names[int(np.argmax(score))]
        out.update(top_pick=pick, top_pick_labelled=rows[pick]["labelled"][headline], labelled_best=best,
                   labelled_best_row=names[int(np.argmax(truth))],
                   top_within_0_01=bool(best - rows[pick]["labelled"][headline] <= NEAR_BEST))
    return out


def table(rows: dict[str, dict], headline: str) -> str:
    lines = [f"| row | {headline} | scorecard [95% CI] | content_recall@1 | stability@10 | copy_recall@1 | rankme |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | | | |")
            continue
        c, p = r["scorecard"], r["scorecard"]["parts"]
        lines.append(f"| {name} | {r['labelled'][headline]:.3f} | {c['score']:.3f} [{c['ci'][0]:.3f}, "
                     f"{c['ci'][1]:.3f}] | {p['content_recall@1']:.3f} | {p['stability@10']:.3f} | "
                     f"{p['copy_recall@1']:.3f} | {p['rankme']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), help="encoder specs (default: the untrained rows)")
    ap.add_argument("--row", action="append", default=[], help="an extra row (e.g. a trained run directory)")
    ap.add_argument("--data", type=Path, default=Path("data/demo"), help="where the emoji go (prepared once)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=NAME, help="result file name under bench/results (default scorecard)")
    args = ap.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-scorecard-") as tmp:
        for bname in args.benchmarks:
            bench = make_benchmark(bname, Path(tmp), args.data)
            rows: dict[str, dict] = {}
            for spec in [*args.rows, *args.row]:
                _log(f"{bname}: {spec}")
                try:
                    rows[spec] = score_row(bench, spec, args.seed)
                except Exception as exc:  # noqa: BLE001 - a row that cannot run (weights missing) is reported
                    rows[spec] = {"error": f"{type(exc).__name__}: {exc}"}
                results[bname] = {"rows": rows, "correlation": correlations(rows, HEADLINE[bname])}
                save_result(args.out, results, seed=args.seed, rows=[*args.rows, *args.row],
                            benchmarks=args.benchmarks)
            print(f"\n## {bname}\n\n{table(rows, HEADLINE[bname])}\n")
            corr = results[bname]["correlation"]
            print(f"Spearman(scorecard, {corr['headline']}) = {corr['spearman']}; top pick {corr.get('top_pick')} "
                  f"within {NEAR_BEST}: {corr.get('top_within_0_01')}")
    _log(f"wrote {RESULTS / (args.out + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
