"""``lookalike`` command line. Each sub-command is one call into retrieval/ or training/; errors are one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from retrieval.allocator import tune_allocator
from retrieval.encoder_kinds import specs_help
from retrieval.errors import LookalikeError
from retrieval.identity import describe_identity
from retrieval.index_kinds import DEFAULT_INDEX_TYPE, INDEX_TYPES, types_help
from retrieval.workspace import FALLBACK_ENCODER
from training.settings import DEFAULT_DEVICE
from training.settings import add_arguments as add_train_arguments

# Start-up: this module and what it imports at the top stay free of torch, numpy and FAISS, so that help, argument
# errors, 'index list' and 'index info' answer at once; each command imports what it needs (tests/test_startup.py).


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _workspace(args):
    from retrieval.workspace import Workspace

    return Workspace(args.indexes, device=getattr(args, "device", DEFAULT_DEVICE))


def _report_skipped(skipped, limit: int = 20) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} file(s):", file=sys.stderr)
    for s in skipped[:limit]:
        print(f"  {s.path}: {s.reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  … and {len(skipped) - limit} more (see 'lookalike index info NAME --json')", file=sys.stderr)


def _print_report(report, args, verb: str) -> None:
    if args.json:
        _print_json(report.to_json())
        return
    _report_skipped(report.skipped)
    print(f"{verb} index {report.name!r}: {report.count} images, dim {report.dim}, "
          f"encoder {describe_identity(report.encoder)}"
          + (f" (+{report.added} -{report.removed})" if verb != "built" else ""))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)


# ----- index -------------------------------------------------------------------------------------------------
def cmd_index_build(args) -> int:
    from retrieval.distributed import Ranks
    from retrieval.workspace import Workspace

    with Ranks.join(args.device) as ranks:  # one process, or this rank of a torchrun job
        ws = Workspace(args.indexes, device=ranks.device)
        encoder, name = _build_defaults(ws, args, say=ranks.main and not args.json)
        report = ws.build(args.dir, encoder, name, index_type=args.type, overwrite=args.overwrite,
                          batch_size=args.batch_size, workers=args.workers, progress=not args.json, ranks=ranks,
                          whiten=args.whiten or args.whiten_dim is not None, whiten_dim=args.whiten_dim,
                          calibrate=not args.no_calibrate)
    if report is not None:  # rank 0 wrote the index and reports it; the other ranks print nothing
        if args.set_default:
            ws.set_default_index(report.name)
        _print_report(report, args, "built")
    return 0


def _build_defaults(ws, args, say: bool) -> tuple[str, str]:
    """(encoder spec, index name) of 'index build': those given, else the best encoder installed and a name after
    the folder; says which were chosen (on stderr, so --json output stays clean)."""
    from retrieval.workspace import default_encoder

    encoder, name = args.encoder, args.name or ws.name_for(args.dir)
    if encoder is None:
        encoder, why = default_encoder()
        if say:
            print(f"encoder: {encoder} ({why}; choose another with --encoder)", file=sys.stderr)
    if args.name is None and say:
        print(f"index name: {name} (choose another with --name)", file=sys.stderr)
    return encoder, name


def cmd_index_add(args) -> int:
    _print_report(_workspace(args).add(args.name, args.paths, progress=not args.json), args, "updated")
    return 0


def cmd_index_remove(args) -> int:
    _print_report(_workspace(args).remove(args.name, args.paths), args, "updated")
    return 0


def cmd_index_refresh(args) -> int:
    _print_report(_workspace(args).refresh(args.name, progress=not args.json), args, "refreshed")
    return 0


def cmd_index_list(args) -> int:
    rows = _workspace(args).list()
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no indexes under {args.indexes} (build one with "
              "'lookalike index build DIR --encoder SPEC --name NAME')")
    for m in rows:
        print(f"{m['name']:<24} {m.get('count', '?'):>8} images  {m.get('index_type', '?'):<6} "
              f"{describe_identity(m['encoder'])}  {m.get('root', '')}")
    return 0


def _index_scorecard(ws, args) -> dict | None:
    """The index's label-free scorecard: computed with ``--scorecard`` (a model), else the cached one if fresh."""
    if not args.scorecard:
        return ws.cached_scorecard(args.name)
    bar = _StageBar(enabled=not args.json)
    try:
        return ws.scorecard(args.name, progress=bar)
    finally:
        bar.close()


def cmd_index_info(args) -> int:
    ws = _workspace(args)
    info = ws.info(args.name)
    card = _index_scorecard(ws, args)
    if args.json:
        _print_json({**info, "scorecard": card})
        return 0
    for key in ("name", "root", "count", "dim", "index_type", "factory", "created", "updated", "size_bytes"):
        if key in info:
            print(f"{key:<11} {info[key]}")
    print(f"{'encoder':<11} {describe_identity(info['encoder'])}  [{info['encoder'].get('spec')}]")
    skipped = info.get("skipped", [])
    print(f"{'skipped':<11} {len(skipped) if isinstance(skipped, list) else skipped}")
    if card is None:
        print(f"{'scorecard':<11} not computed for this generation (lookalike index info {args.name} --scorecard)")
    else:  # formatted here: retrieval.scorecard brings numpy, and 'index info' answers without it
        lo, hi = card["ci"]
        parts = "  ".join(f"{k} {card['parts'][k]:.3f}" for k in ("content_recall@1", "stability@10", "rankme"))
        print(f"{'scorecard':<11} {card['score']:.3f} [{lo:.3f}, {hi:.3f}]  {parts}  ({card['n_images']} images, "
              f"{card['n_queries']} queries, seed {card['seed']}, generation {card.get('generation')})")
    return 0


# ----- search / compare / eval ---------------------------------------------------------------------------------
def cmd_search(args) -> int:
    ws = _workspace(args)
    name = ws.pick_index(args.name)
    results = ws.search(name, args.image, k=args.k, qe=args.qe, dba=args.dba)
    if args.set_default:
        ws.set_default_index(name)
    if args.json:
        _print_json([r.to_json() for r in results])
        return 0
    for r in results:
        print(f"{r.rank:>3}  {r.score:+.4f}  {r.path}")
    return 0


def cmd_compare(args) -> int:
    ws = _workspace(args)
    names = args.index or [m["name"] for m in ws.list()]
    if not names:
        raise LookalikeError(f"no indexes under {args.indexes} to compare")
    columns = {name: ws.search(name, args.image, k=args.k) for name in names}
    if args.json:
        _print_json({name: [r.to_json() for r in rs] for name, rs in columns.items()})
        return 0
    width = max(28, *(len(n) for n in names))
    print("  ".join(f"{n:<{width}}" for n in names))
    for i in range(args.k):
        cells = []
        for rs in columns.values():
            cells.append(f"{rs[i].score:+.3f} {rs[i].path}"[:width].ljust(width) if i < len(rs) else " " * width)
        print("  ".join(cells))
    return 0


class _StageBar:
    """``progress(done, total, stage)`` of the scorecard as one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, done: int, total: int, stage: str) -> None:
        from tqdm import tqdm

        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, tqdm(total=total, desc=stage, unit="img", file=sys.stderr, leave=False)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def label_free_json(card) -> dict:
    """The ``label_free`` object of ``eval --label-free --json`` (a documented contract: score, ci, then the parts)."""
    out = {"score": card.score, "ci": [card.ci[0], card.ci[1]], **card.parts}
    out.update(n_images=card.n_images, n_queries=card.n_queries, seed=card.seed, sample=card.sample,
               skipped=len(card.skipped), seconds=card.seconds)
    return out


def cmd_eval_label_free(args) -> int:
    from retrieval.collection import Skipped
    from retrieval.encoders import load_encoder
    from retrieval.scorecard import folder_paths, score_encoder

    paths, scan_skipped = folder_paths(args.dir)
    rows = []
    for spec in args.encoder:
        print(f"scoring {spec} …", file=sys.stderr)
        bar = _StageBar()
        try:
            card = score_encoder(load_encoder(spec, device=args.device), paths, seed=args.seed, sample=args.sample,
                                 progress=bar)
        finally:
            bar.close()
        card.skipped = scan_skipped + card.skipped
        rows.append({"encoder": spec, "label_free": label_free_json(card)})
        if len(rows) == 1:  # the same files for every encoder
            _report_skipped([Skipped(**s) for s in card.skipped])
    if args.json:
        _print_json(rows)
        return 0
    keys = ["content_recall@1", "stability@10", "rankme", "health"]
    print(f"{'encoder':<40} {'score':>6} {'95% CI':>15} " + " ".join(f"{k:>16}" for k in keys))
    for row in rows:
        lf = row["label_free"]
        print(f"{row['encoder'][:40]:<40} {lf['score']:>6.3f} [{lf['ci'][0]:.3f}, {lf['ci'][1]:.3f}] "
              + " ".join(f"{lf[k]:>16.3f}" for k in keys))
    lf = rows[0]["label_free"]
    print(f"(label-free scorecard: {lf['n_images']} images searched, {lf['n_queries']} queries, seed {lf['seed']}; "
          "docs/scorecard.md)")
    return 0


def cmd_eval(args) -> int:
    from retrieval.encoders import load_encoder
    from retrieval.workspace import evaluate_folder

    if args.label_free:
        return cmd_eval_label_free(args)
    rows = []
    for spec in args.encoder:
        metrics = evaluate_folder(args.dir, load_encoder(spec, device=args.device), progress=not args.json,
                                  batch_size=args.batch_size)
        rows.append({"spec": spec, **metrics})
    if args.json:
        _print_json(rows if len(rows) > 1 else rows[0])
        return 0
    keys = ["recall@1", "recall@5", "recall@10", "map@10", "knn_acc"]
    print(f"{'encoder':<40} " + " ".join(f"{k:>9}" for k in keys))
    for row in rows:
        print(f"{row['spec'][:40]:<40} " + " ".join(f"{row[k]:>9.4f}" for k in keys))
    print(f"({rows[0]['count']} images, {rows[0]['classes']} labels)")
    return 0


def cmd_export(args) -> int:
    from retrieval.encoders import load_encoder
    from retrieval.export import export_onnx, sidecar

    encoder = load_encoder(args.encoder, device="cpu")
    out = export_onnx(encoder, args.onnx)
    if args.json:
        _print_json({"onnx": str(out), "identity": str(sidecar(out)), "encoder": encoder.identity})
    else:
        print(f"exported {encoder.name} to {out} (uint8 (B, 3, {encoder.image_size}, {encoder.image_size}) in, "
              f"(B, {encoder.dim}) unit vectors out; identity in {sidecar(out)})")
    return 0


# ----- train / app / demo ----------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from training.settings import config_from_args
    from training.trainer import train

    run_dir = train(config_from_args(args), progress=True)
    print(f"encoder saved to {run_dir} — index with: lookalike index build {args.dir} --encoder {run_dir} "
          f"--name {Path(run_dir).name}")
    return 0


def cmd_sweep(args) -> int:
    from training.sweep import format_table, plan_sweep, sweep

    plan = plan_sweep(args.dir, args.minutes, args.methods, name=args.name, runs=args.runs, indexes=args.indexes,
                      seed=args.seed, sample=args.sample, device=args.device)

    def progress(event: dict) -> None:
        if event["message"]:
            print(f"[{event['done']}/{event['total']}] {event['message']}", file=sys.stderr, flush=True)

    board = sweep(plan, progress=None if args.json else progress, show=not args.json)
    if args.json:
        _print_json(board)
        return 0
    print(format_table(board), end="")
    print(f"leaderboard in {plan.dir}" + (f" ({board['chart_note']})" if board.get("chart_note") else ""))
    return 0 if board["status"] == "done" else 130


def cmd_app(args) -> int:
    from app.ui import launch

    launch(indexes=args.indexes, host=args.host, port=args.port, share=args.share, auth=args.auth,
           allow_dirs=args.allow_dir)
    return 0


def cmd_demo(args) -> int:
    from app.demo import run_demo

    run_demo(indexes=args.indexes, data=args.data, host=args.host, port=args.port, minutes=args.minutes,
             train=not args.no_train, open_app=not args.no_app, auth=args.auth, allow_dirs=args.allow_dir)
    return 0


# ----- parser ----------------------------------------------------------------------------------------------
def _indexes_default() -> str:
    return os.environ.get("LOOKALIKE_INDEXES", "indexes")


def _common(sp, json_flag: bool = True, indexes: bool = True) -> None:
    """The options most sub-commands share."""
    if indexes:
        sp.add_argument("--indexes", default=_indexes_default(), metavar="ROOT",
                        help="where indexes live (default $LOOKALIKE_INDEXES, else ./indexes)")
    if json_flag:
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--device", default=DEFAULT_DEVICE, help=f"auto, cpu or cuda (default {DEFAULT_DEVICE}: a GPU "
                    "where there is one)")


_SET_DEFAULT_HELP = "make this the index 'lookalike search IMAGE' uses when given no name"


def _add_index_commands(sub) -> None:
    idx = sub.add_parser("index", help="build and maintain indexes").add_subparsers(dest="index_cmd", required=True,
                                                                                 metavar="ACTION")
    b = idx.add_parser("build", help="embed every image of DIR into a new index")
    b.add_argument("dir")
    b.add_argument("--encoder", default=None, metavar="SPEC",
                   help=f"{specs_help()} (a trained encoder); default: the pretrained encoder where installed, "
                        f"else {FALLBACK_ENCODER}")
    b.add_argument("--name", default=None, help="index name (default: the folder's name)")
    b.add_argument("--set-default", action="store_true", help=_SET_DEFAULT_HELP)
    b.add_argument("--type", default=DEFAULT_INDEX_TYPE, choices=INDEX_TYPES,
                   help=f"index kind (default {DEFAULT_INDEX_TYPE}) - {types_help()}")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index of that name")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--workers", type=int, default=None, help="decode processes (default: by collection size)")
    b.add_argument("--whiten", action="store_true", help="learn a PCA-whitening on the collection; queries are "
                   "whitened with it (docs/retrieval-tools.md)")
    b.add_argument("--whiten-dim", type=int, default=None, metavar="D",
                   help="whiten and keep D dimensions (implies --whiten; default: the encoder's less one)")
    b.add_argument("--no-calibrate", action="store_true",
                   help="skip calibrating the 'same photo' threshold on edited copies of the collection")
    _common(b)
    b.set_defaults(func=cmd_index_build)
    for verb, func, hlp in (("add", cmd_index_add, "embed and add files of the collection"),
                            ("remove", cmd_index_remove, "remove files from the index")):
        sp = idx.add_parser(verb, help=hlp)
        sp.add_argument("name")
        sp.add_argument("paths", nargs="+")
        _common(sp)
        sp.set_defaults(func=func)
    r = idx.add_parser("refresh", help="re-embed only new or changed files, drop deleted ones")
    r.add_argument("name")
    _common(r)
    r.set_defaults(func=cmd_index_refresh)
    ls = idx.add_parser("list", help="list indexes")
    _common(ls)
    ls.set_defaults(func=cmd_index_list)
    inf = idx.add_parser("info", help="manifest, counts, skipped files and label-free scorecard of an index")
    inf.add_argument("name")
    inf.add_argument("--scorecard", action="store_true",
                     help="compute the label-free scorecard if this generation has none cached (loads the encoder)")
    _common(inf)
    inf.set_defaults(func=cmd_index_info)


def _add_query_commands(sub) -> None:
    s = sub.add_parser("search", help="most similar images to IMAGE in index NAME")
    s.add_argument("name", nargs="?", default=None,
                   help="index to search (default: the default index, or the only one)")
    s.add_argument("image")
    s.add_argument("--set-default", action="store_true", help=_SET_DEFAULT_HELP)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--qe", type=int, default=None, metavar="N",
                   help="query expansion (alpha-QE) over the N best results (0: off, the default; 2 measured best)")
    s.add_argument("--dba", type=int, default=None, metavar="N",
                   help="database-side augmentation over N neighbours among the candidates (0: off; default: off)")
    _common(s)
    s.set_defaults(func=cmd_search)

    c = sub.add_parser("compare", help="the same query against several indexes, side by side")
    c.add_argument("image")
    c.add_argument("--index", action="append", metavar="NAME", help="repeat for each index (default: all)")
    c.add_argument("-k", type=int, default=5)
    _common(c)
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("eval", help="retrieval metrics on a folder with one sub-folder per label, or without labels "
                       "(--label-free)")
    e.add_argument("dir")
    e.add_argument("--encoder", action="append", required=True, metavar="SPEC", help="repeat to compare")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--label-free", action="store_true",
                   help="the label-free scorecard (edited copies of a seeded sample; sub-folders ignored); with "
                        "--json a list of {encoder, label_free: {score, ci, parts…}}")
    e.add_argument("--seed", type=int, default=0, help="sample seed of --label-free (same for every encoder)")
    e.add_argument("--sample", type=int, default=None, metavar="N",
                   help="images searched at most by --label-free (default 2000)")
    _common(e, indexes=False)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write an encoder as an ONNX model (uint8 images in, unit vectors out)")
    x.add_argument("encoder", metavar="RUN_OR_SPEC", help="runs/RUN, pixels, random:NAME or timm:NAME")
    x.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write (and OUT.json beside it)")
    x.add_argument("--json", action="store_true", help="machine-readable output")
    x.set_defaults(func=cmd_export)


def _access_flags(sp) -> None:
    """Login and folder roots of the web UI (required once it listens beyond this machine; see app/access.py)."""
    sp.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                    help="login for the page, or @FILE with one USER:PASSWORD a line (default: $LOOKALIKE_AUTH); "
                         "required with --share or a --host other than loopback")
    sp.add_argument("--allow-dir", action="append", default=None, metavar="DIR",
                    help="a folder the page may index or train on, with everything under it (repeat for more; "
                         "default beyond loopback: the collections of the existing indexes)")


def _add_app_commands(sub) -> None:
    a = sub.add_parser("app", help="open the web UI")
    a.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    a.add_argument("--port", type=int, default=7860)
    a.add_argument("--share", action="store_true", help="also open a public share link (off by default)")
    a.add_argument("--indexes", default=_indexes_default(), metavar="ROOT")
    _access_flags(a)
    a.set_defaults(func=cmd_app)

    d = sub.add_parser("demo", help="prepare the demo collection, build its indexes, train, open the UI")
    d.add_argument("--indexes", default=_indexes_default(), metavar="ROOT")
    d.add_argument("--data", default="data/demo", help="where the demo collection goes")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--minutes", type=float, default=None, help="training budget per method")
    d.add_argument("--no-train", action="store_true", help="skip background training")
    d.add_argument("--no-app", action="store_true", help="prepare everything, then exit without opening the UI")
    _access_flags(d)
    d.set_defaults(func=cmd_demo)


# ----- marks (retrieval/marks.py) -----------------------------------------------------------------------------
def cmd_mark(args) -> int:
    out = _workspace(args).mark(args.name, args.query, args.result, right=args.right)
    if args.json:
        _print_json(out)
    else:
        word = "right" if args.right else "wrong"
        was = out["replaced"]
        print(f"marked {args.result} {word} for {args.query}"
              + (f" (replaces the earlier '{'right' if was['right'] else 'wrong'}')" if was else ""))
    return 0


def cmd_marks(args) -> int:
    ws = _workspace(args)
    if args.learn:
        ws.learn_from_marks(args.name, use_labels=not args.no_labels)
    elif args.undo:
        ws.undo_learnt(args.name)
    out = ws.marks(args.name)
    if args.json:
        _print_json(out)
        return 0
    for m in out["marks"]:
        print(f"{'right' if m['right'] else 'wrong'}  {m['query_path']} -> {m['result']}"
              + ("  (stale: no longer in the index, ignored when learning)" if m["stale"] else ""))
    labels = out["labels_available"]
    learnt = out["learnt_map"]
    print(f"{out['right']} right, {out['wrong']} wrong, {out['stale']} stale; {len(labels)} sub-folder labels "
          f"available; learnt map: " + (f"on (fitted {learnt['fitted']})" if learnt else "off"))
    return 0


def _add_mark_commands(sub) -> None:
    m = sub.add_parser("mark", help="mark a search result right or wrong for a query (kept with the index)")
    m.add_argument("name", help="index name")
    m.add_argument("query", help="the query: an image of the index (path relative to its folder) or any image file")
    m.add_argument("result", help="the result, an image of the index (path relative to its folder)")
    way = m.add_mutually_exclusive_group(required=True)
    way.add_argument("--right", dest="right", action="store_true", help="the result is what the query meant")
    way.add_argument("--wrong", dest="right", action="store_false", help="it is not")
    _common(m)
    m.set_defaults(func=cmd_mark)
    ms = sub.add_parser("marks", help="list the marks of an index; learn a linear map from them, or undo it")
    ms.add_argument("name", help="index name")
    act = ms.add_mutually_exclusive_group()
    act.add_argument("--learn", action="store_true", help="fit the linear map on the marks (and sub-folder labels) "
                     "and search through it from now on")
    act.add_argument("--undo", action="store_true", help="search with the raw vectors again")
    ms.add_argument("--no-labels", action="store_true", help="with --learn: ignore sub-folder labels")
    _common(ms)
    ms.set_defaults(func=cmd_marks)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike", description="Image similarity search on your own photos, with "
                                "encoders trained on them without labels.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_index_commands(sub)
    _add_query_commands(sub)
    _add_mark_commands(sub)

    t = sub.add_parser("train", help="train an encoder on DIR without labels")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    _add_sweep_command(sub)
    _add_app_commands(sub)
    return p


def _add_sweep_command(sub) -> None:
    from training.sweep import RECOMMENDED

    w = sub.add_parser("sweep", help="which method for this folder? train each, index, score, rank")
    w.add_argument("dir", help="folder of images")
    w.add_argument("--minutes", type=float, required=True, help="training budget per method")
    w.add_argument("--methods", nargs="+", metavar="METHOD", default=None,
                   help=f"methods to try (default: {' '.join(RECOMMENDED)}, the ones that never hurt their start "
                        "on the photo benchmarks)")
    w.add_argument("--name", default=None, help="the sweep's name (default: the folder's); runs/sweep-NAME/")
    w.add_argument("--runs", default="runs", metavar="DIR", help="where the sweep's runs go (default ./runs)")
    w.add_argument("--seed", type=int, default=0, help="seed of the training and of the scorecard's sample")
    w.add_argument("--sample", type=int, default=None, help="images the scorecard searches at most")
    _common(w)
    w.set_defaults(func=cmd_sweep)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command line itself: before anything is allocated (retrieval.allocator)
        tune_allocator()
    try:
        return args.func(args)
    except LookalikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
