"""The search pipeline around the pretrained encoder, stage by stage, on each benchmark's own data and protocol.

Encoder variants (one embedding pass each, cached under ``--cache``): ``timm:tf_efficientnet_lite0`` with
``pool=avg`` (today's default), ``gem``, ``grid``, and ``gem`` at three scales (``scales=1,0.707,1.414``). On each
variant's vectors, every post-processing row: whitening learned on the benchmark's database (off, to the encoder's
dimensions less one, to 256; :func:`retrieval.pipeline.fit_whitening`), then αQE / DBA re-ranking of a shortlist
(:func:`retrieval.pipeline.rerank`, the code of ``IndexStore.search``), and for copy detection SSCD-style score
normalisation against a background set (the database's Fashion-MNIST distractors, never a true match).

Benchmarks (each the protocol of its own script; the data made by its public helpers):

* ``tuxpaint`` (bench/tuxpaint_retrieval.py): leave-one-out mAP@10 on white and on textures;
* ``copy`` (bench/copy_detection.py, ``--quick`` sized: 300 Fashion-MNIST distractors): micro-AP and recall@1, and
  the calibrated "same photo" threshold (:func:`retrieval.pipeline.calibrate_threshold` at precision 0.9, fitted
  on half of the queries) checked on the other half;
* ``fmnist`` (bench/fashion_mnist.py, reduced: ``--fmnist-db`` training images against ``--fmnist-test`` test
  images): weighted kNN accuracy (k=200, T=0.1);
* ``emoji`` (bench/quality.py): recall@1 of Google's drawings against Twitter's, when the demo data is there.

``--cost`` also times a whitening fit per 100k vectors and the milliseconds αQE / DBA add to a search of a flat
index of 100k random vectors (1,280-d and whitened to 256-d), with index sizes.

Rerun:  PYTHONPATH=. python -m bench.pipeline --quick --cost      # writes bench/results/pipeline_quick.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import logger, save_result
from retrieval.metrics import knn_accuracy, map_at_k, micro_average_precision, relevance_from_labels, top_k
from retrieval.pipeline import SHORTLIST, background_normalise, calibrate_threshold, fit_whitening, rerank

ENCODER = "timm:tf_efficientnet_lite0"
ENCODERS = {"avg": "", "gem": "?pool=gem", "grid": "?pool=grid", "gem-ms": "?pool=gem&scales=1,0.707,1.414"}
WHITEN = {"raw": None, "white": "full", "white256": 256}
EXPANSION = {"": (0, 0), "+qe2": (2, 0), "+dba2": (0, 2), "+qe2+dba2": (2, 2)}
BENCHMARKS = ("tuxpaint", "copy", "fmnist", "emoji")


_log = logger("pipeline")


# ----- the pipeline applied to a benchmark's vectors -----------------------------------------------------------

def whitened(db: np.ndarray, queries: np.ndarray | None, how) -> tuple[np.ndarray, np.ndarray | None]:
    """Whitening learned on ``db`` (as an index learns it on its collection), applied to both."""
    if how is None:
        return db, queries
    w = fit_whitening(db, dim=db.shape[1] - 1 if how == "full" else how)
    return w.apply(db), None if queries is None else w.apply(queries)


def ranked(queries: np.ndarray, db: np.ndarray, k: int, qe: int, dba: int,
           exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), indices (Q, k)): exact top-k, then the shortlist re-ranked as IndexStore.search does."""
    if not qe and not dba:
        return top_k(queries, db, k, exclude_self=exclude_self)
    m = max(SHORTLIST, 4 * k)
    s, idx = top_k(queries, db, m, exclude_self=exclude_self)
    out_s, out_i = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    for i, q in enumerate(queries):
        order, scores = rerank(q, db[idx[i]], qe=qe, dba=dba)
        out_i[i], out_s[i] = idx[i][order[:k]], scores[:k]
    return out_s, out_i


def knn_from_ranked(scores, idx, query_labels, db_labels, temperature: float = 0.1) -> float:
    """retrieval.metrics.knn_accuracy's vote over given (scores, indices)."""
    classes, codes = np.unique(np.asarray(db_labels).astype(str), return_inverse=True)
    votes = np.zeros((len(idx), len(classes)))
    np.add.at(votes, (np.arange(len(idx))[:, None], codes[idx]), np.exp((scores.astype(np.float64) - 1) / temperature))
    return float((classes[votes.argmax(1)] == np.asarray(query_labels).astype(str)).mean())


def rows_for(score, db: np.ndarray, queries: np.ndarray | None) -> dict:
    """``score(db, queries, qe, dba)`` for every whitening × expansion row."""
    out = {}
    for wname, how in WHITEN.items():
        t0 = time.perf_counter()
        d, q = whitened(db, queries, how)
        fit_s = time.perf_counter() - t0
        for ename, (qe, dba) in EXPANSION.items():
            out[wname + ename] = {**score(d, q, qe, dba), "dim": int(d.shape[1]), "whiten_fit_s": round(fit_s, 3)}
    return out


# ----- benchmarks: data, embedding (cached), protocol ------------------------------------------------------------

class Tuxpaint:
    def __init__(self, tmp: Path, seed: int):
        from bench.datasets import BACKGROUNDS as SETS
        from bench.datasets import check_installed, make_folder
        from retrieval.collection import scan

        check_installed()
        self.sets = SETS
        self.collections = {}
        for s in SETS:
            make_folder(tmp / s, background=s, seed=seed)  # 8 per category, 256 px: the photo benchmarks' folders
            self.collections[s] = scan(tmp / s, labels=True, progress=False)

    def embed(self, encoder) -> dict:
        from retrieval.embed import embed_collection

        out = {}
        for s, col in self.collections.items():
            label = {it.path: it.label or "" for it in col.items}
            emb = embed_collection(encoder, col, progress=False)
            out[s] = (emb.vectors, np.array([label[p] for p in emb.paths]))
        return out

    def score(self, data: dict) -> dict:
        rows: dict = {}
        for s, (vecs, labels) in data.items():
            per_label = dict(zip(*np.unique(labels, return_counts=True)))
            n_rel = np.array([per_label[lab] - 1 for lab in labels])

            def one(d, _q, qe, dba, labels=labels, n_rel=n_rel):
                _, idx = ranked(d, d, 10, qe, dba, exclude_self=True)
                return {"map@10": map_at_k(relevance_from_labels(idx, labels, labels), 10, n_relevant=n_rel)}
            for row, r in rows_for(one, vecs, None).items():
                rows.setdefault(row, {})[f"{s}/map@10"] = round(r["map@10"], 4)
                rows[row]["dim"] = r["dim"]
        return rows


class Copy:
    def __init__(self, tmp: Path, seed: int):
        from bench.datasets import COPY_FMNIST as FMNIST
        from bench.datasets import build_copy_detection as build
        from bench.datasets import check_installed
        from retrieval.collection import scan

        check_installed()
        facts = build(tmp, seed, FMNIST["quick"])
        self.truth = facts["truth"]
        self.db, self.queries = scan(tmp / "db", progress=False), scan(tmp / "queries", progress=False)

    def embed(self, encoder) -> dict:
        from retrieval.embed import embed_collection

        db = embed_collection(encoder, self.db, progress=False)
        qs = embed_collection(encoder, self.queries, progress=False)
        where = {p: i for i, p in enumerate(db.paths)}
        target = np.array([where.get(self.truth[q], -2) if self.truth[q] else -1 for q in qs.paths])
        background = np.array(["fmnist" in p for p in db.paths])
        return {"db": db.vectors, "queries": qs.vectors, "target": target, "background": background}

    def score(self, data: dict) -> dict:
        target, pos = data["target"], data["target"] != -1
        half = np.arange(len(target)) % 2 == 0  # calibrate on even queries, check on odd ones

        def one(d, q, qe, dba):
            scores, idx = ranked(q, d, 10, qe, dba)
            rel = idx == target[:, None]
            out = {"micro_ap": micro_average_precision(scores, rel, int(pos.sum())),
                   "recall@1": float(rel[pos, 0].mean())}
            norm = background_normalise(scores, q, d[data["background"]])
            out["micro_ap_norm"] = micro_average_precision(norm, rel, int(pos.sum()))
            t, _, _ = calibrate_threshold(scores[half][rel[half]], scores[half][~rel[half]])
            kept = scores[~half] >= t
            out["dup_threshold"] = t
            out["dup_precision_heldout"] = float(rel[~half][kept].sum() / max(kept.sum(), 1))
            out["dup_recall_heldout"] = float(rel[~half][kept].sum() / max(rel[~half].sum(), 1))
            return {k: round(float(v), 4) for k, v in out.items()}
        return rows_for(one, data["db"], data["queries"])

    def calibration(self, variant: str, data: dict, cache: Path) -> dict:
        """The index's own calibration (retrieval.duplicates: "same photo" copies of 100 database images) checked
        on this benchmark: the precision of the top-10 query pairs at or above that threshold."""
        from retrieval.duplicates import CALIBRATION_SAMPLE, NEGATIVES_PER_COPY, same_photo_copy
        from retrieval.encoders import load_encoder
        from retrieval.imageio import load_image

        path = cache / f"copy-calibration-{variant}.npy"
        if not path.is_file():
            rng = np.random.default_rng(0)
            chosen = np.sort(rng.choice(len(self.db.items), CALIBRATION_SAMPLE, replace=False))
            copies = [same_photo_copy(load_image(Path(self.db.root) / self.db.items[i].path), rng) for i in chosen]
            vecs = load_encoder(ENCODER + ENCODERS[variant]).embed_images(copies)
            np.save(path, np.concatenate([chosen[:, None].astype(np.float32), vecs], axis=1))
        saved = np.load(path)
        chosen, vecs = saved[:, 0].astype(int), saved[:, 1:]
        scores, idx = top_k(vecs, data["db"], NEGATIVES_PER_COPY + 1)
        same = idx == chosen[:, None]  # db rows are in scan order, as self.db.items
        t, reached, recall = calibrate_threshold(scores[same], scores[~same])
        q_scores, q_idx = top_k(data["queries"], data["db"], 10)
        rel = q_idx == data["target"][:, None]
        kept = q_scores >= t
        return {"threshold": round(t, 4), "precision_on_copies": round(reached, 4),
                "recall_on_copies": round(recall, 4),
                "benchmark_precision": round(float(rel[kept].sum() / max(kept.sum(), 1)), 4),
                "benchmark_recall": round(float(rel[kept].sum() / max(rel.sum(), 1)), 4)}


class Fmnist:
    def __init__(self, tmp: Path, seed: int, db: int, test: int):
        from bench.datasets import load_split, subsample

        tx, ty = load_split("train")
        keep = subsample(len(tx), db, seed, 0)
        self.db = (tx[keep], ty[keep])
        sx, sy = load_split("test")
        keep = subsample(len(sx), test, seed, 1)
        self.test = (sx[keep], sy[keep])

    def embed(self, encoder) -> dict:
        from bench.datasets import embed_grey

        return {"db": embed_grey(encoder, self.db[0])[0], "queries": embed_grey(encoder, self.test[0])[0],
                "db_y": self.db[1], "q_y": self.test[1]}

    def score(self, data: dict) -> dict:
        def one(d, q, qe, dba):
            if not qe and not dba:
                return {"knn_acc": round(knn_accuracy(q, data["q_y"], d, data["db_y"]), 4)}
            s, idx = ranked(q, d, 200, qe, dba)
            return {"knn_acc": round(knn_from_ranked(s, idx, data["q_y"], data["db_y"]), 4)}
        return rows_for(one, data["db"], data["queries"])


class Emoji:
    def __init__(self, tmp: Path, seed: int, data_dir: Path):
        from app.demo_data import prepare_demo_data
        from bench.datasets import EmojiPairs

        data = prepare_demo_data(data_dir, log=_log)  # reuses what is there; npm pack otherwise
        if data.source != "emoji":
            raise FileNotFoundError("the emoji demo data is unavailable (npm or the registry)")
        self.ev = EmojiPairs(data.collection, data.queries, data.meta)

    def embed(self, encoder) -> dict:
        from retrieval.embed import embed_collection

        db = embed_collection(encoder, self.ev.collection, progress=False)
        qs = embed_collection(encoder, self.ev.queries, paths=self.ev.query_paths, progress=False)
        where = {p: i for i, p in enumerate(db.paths)}
        full = [it.path for it in self.ev.collection.items]
        target = np.array([where.get(full[self.ev.truth[p]], -1) for p in qs.paths])
        return {"db": db.vectors, "queries": qs.vectors, "target": target}

    def score(self, data: dict) -> dict:
        def one(d, q, qe, dba):
            _, idx = ranked(q, d, 1, qe, dba)
            return {"recall@1": round(float((idx[:, 0] == data["target"]).mean()), 4)}
        return rows_for(one, data["db"], data["queries"])


def embedded(bench, name: str, variant: str, cache: Path) -> dict:
    """The benchmark's vectors for one encoder variant, from ``cache`` when a previous run left them."""
    from retrieval.encoders import load_encoder

    path = cache / f"{name}-{variant}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            flat = dict(f)
        return _unflatten(flat)
    t0 = time.perf_counter()
    data = bench.embed(load_encoder(ENCODER + ENCODERS[variant]))
    _log(f"{name} {variant}: embedded in {time.perf_counter() - t0:.0f} s")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **_flatten(data))
    return data


def _flatten(data: dict) -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, tuple):
            out.update({f"{k}.{i}": x for i, x in enumerate(v)})
        else:
            out[k] = v
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        if "." in k:
            name, i = k.rsplit(".", 1)
            out.setdefault(name, [None, None])[int(i)] = v
        else:
            out[k] = v
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


# ----- cost at 100k ----------------------------------------------------------------------------------------------

def cost(n: int = 100_000, dim: int = 1280, reduced: int = 256, queries: int = 50) -> dict:
    """Whitening fit seconds for ``n`` vectors, and search milliseconds (flat index, one query at a time) with and
    without αQE / DBA, at full and reduced width, with index bytes on disk."""
    from retrieval.collection import Item
    from retrieval.index_store import IndexStore

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32) * np.linspace(3, 0.1, dim, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0 = time.perf_counter()
    fit_whitening(x, dim=reduced)
    out: dict = {"vectors": n, "dim": dim, "whiten_fit_s": round(time.perf_counter() - t0, 3)}
    items = [Item(f"{i:06d}.png", 1, 0.0, None) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for label, whiten in (("raw", False), (f"white{reduced}", True)):
            store = IndexStore.create(tmp, label, {"spec": "random", "dim": dim}, dim, tmp, index_type="flat",
                                      items=items, vectors=x, whiten=whiten, whiten_dim=reduced if whiten else None)
            out[label] = {"dim": store.dim, "size_bytes": store.info()["size_bytes"]}
            for name, (qe, dba) in EXPANSION.items():
                store.search(x[:1], 10, qe=qe, dba=dba)  # warm
                t0 = time.perf_counter()
                for i in range(queries):
                    store.search(x[i + 1:i + 2], 10, qe=qe, dba=dba)
                out[label][f"search_ms{name or ''}"] = round(1000 * (time.perf_counter() - t0) / queries, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick-sized data (the only size run so far)")
    ap.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    ap.add_argument("--encoders", nargs="+", choices=tuple(ENCODERS), default=list(ENCODERS))
    ap.add_argument("--fmnist-db", type=int, default=1000)
    ap.add_argument("--fmnist-test", type=int, default=500)
    ap.add_argument("--emoji-data", default="data/demo")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lookalike-bench-pipeline"))
    ap.add_argument("--cost", action="store_true", help="also time whitening and QE/DBA at 100k vectors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        makers = {"tuxpaint": lambda d: Tuxpaint(d, args.seed), "copy": lambda d: Copy(d, args.seed),
                  "fmnist": lambda d: Fmnist(d, args.seed, args.fmnist_db, args.fmnist_test),
                  "emoji": lambda d: Emoji(d, args.seed, Path(args.emoji_data))}
        for name in args.benchmarks:
            try:
                bench = makers[name](Path(tmp) / name)
            except (FileNotFoundError, SystemExit) as exc:
                _log(f"{name} skipped: {exc}")
                figures[name] = {"skipped": str(exc)}
                continue
            figures[name] = {}
            for variant in args.encoders:
                rows = bench.score(embedded(bench, name, variant, cache))
                figures[name].update({f"{variant}/{row}": r for row, r in rows.items()})
                if name == "copy":
                    figures[name][f"{variant}/calibration"] = bench.calibration(variant, embedded(
                        bench, name, variant, cache), cache)
                _log(f"{name} {variant}: {rows['raw']}")
    if args.cost:
        figures["cost_100k"] = cost()
        _log(f"cost: {figures['cost_100k']}")
    path = save_result(f"pipeline_{'_'.join(args.benchmarks)}", figures, encoder=ENCODER, encoders=ENCODERS,
                       whiten=WHITEN, expansion=EXPANSION, fmnist={"db": args.fmnist_db, "test": args.fmnist_test},
                       note="quick runs on a busy shared 2-core machine")
    _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
