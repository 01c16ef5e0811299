"""``lookalike`` command line. Each sub-command is one call into retrieval/ or training/; errors are one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from retrieval.errors import LookalikeError
from retrieval.identity import describe_identity
from retrieval.index_kinds import DEFAULT_INDEX_TYPE, INDEX_TYPES, types_help
from training.settings import add_arguments as add_train_arguments

# Start-up: this module and what it imports at the top stay free of torch, numpy and FAISS, so that help, argument
# errors, 'index list' and 'index info' answer at once; each command imports what it needs (tests/test_startup.py).


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _workspace(args):
    from retrieval.workspace import Workspace

    return Workspace(args.indexes, device=getattr(args, "device", "cpu"))


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
        report = ws.build(args.dir, args.encoder, args.name, index_type=args.type, overwrite=args.overwrite,
                          batch_size=args.batch_size, workers=args.workers, progress=not args.json, ranks=ranks,
                          whiten=args.whiten or args.whiten_dim is not None, whiten_dim=args.whiten_dim,
                          calibrate=not args.no_calibrate)
    if report is not None:  # rank 0 wrote the index and reports it; the other ranks print nothing
        _print_report(report, args, "built")
    return 0


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
        print(f"no indexes under {args.indexes} (build one with 'lookalike index build DIR --encoder SPEC --name NAME')")
    for m in rows:
        print(f"{m['name']:<24} {m.get('count', '?'):>8} images  {m.get('index_type', '?'):<6} "
              f"{describe_identity(m['encoder'])}  {m.get('root', '')}")
    return 0


def cmd_index_info(args) -> int:
    info = _workspace(args).info(args.name)
    if args.json:
        _print_json(info)
        return 0
    for key in ("name", "root", "count", "dim", "index_type", "factory", "created", "updated", "size_bytes"):
        if key in info:
            print(f"{key:<11} {info[key]}")
    print(f"{'encoder':<11} {describe_identity(info['encoder'])}  [{info['encoder'].get('spec')}]")
    skipped = info.get("skipped", [])
    print(f"{'skipped':<11} {len(skipped) if isinstance(skipped, list) else skipped}")
    return 0


# ----- search / compare / eval ---------------------------------------------------------------------------------
def cmd_search(args) -> int:
    results = _workspace(args).search(args.name, args.image, k=args.k, qe=args.qe, dba=args.dba)
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


def cmd_eval(args) -> int:
    from retrieval.encoders import load_encoder
    from retrieval.workspace import evaluate_folder

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


# ----- train / app / demo ----------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from training.settings import config_from_args
    from training.trainer import train

    run_dir = train(config_from_args(args), progress=True)
    print(f"encoder saved to {run_dir} — index with: lookalike index build {args.dir} --encoder {run_dir} "
          f"--name {Path(run_dir).name}")
    return 0


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
def _common(sp, json_flag: bool = True, indexes: bool = True) -> None:
    """The options most sub-commands share."""
    if indexes:
        sp.add_argument("--indexes", default=os.environ.get("LOOKALIKE_INDEXES", "indexes"),
                        metavar="ROOT", help="where indexes live (default ./indexes)")
    if json_flag:
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")


def _add_index_commands(sub) -> None:
    idx = sub.add_parser("index", help="build and maintain indexes").add_subparsers(dest="index_cmd", required=True,
                                                                                 metavar="ACTION")
    b = idx.add_parser("build", help="embed every image of DIR into a new index")
    b.add_argument("dir")
    b.add_argument("--encoder", required=True, metavar="SPEC",
                   help="pixels | random:NAME | timm:NAME | runs/RUN (a trained encoder)")
    b.add_argument("--name", required=True)
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
    inf = idx.add_parser("info", help="manifest, counts and skipped files of an index")
    inf.add_argument("name")
    _common(inf)
    inf.set_defaults(func=cmd_index_info)


def _add_query_commands(sub) -> None:
    s = sub.add_parser("search", help="most similar images to IMAGE in index NAME")
    s.add_argument("name")
    s.add_argument("image")
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

    e = sub.add_parser("eval", help="retrieval metrics on a folder with one sub-folder per label")
    e.add_argument("dir")
    e.add_argument("--encoder", action="append", required=True, metavar="SPEC", help="repeat to compare")
    e.add_argument("--batch-size", type=int, default=64)
    _common(e, indexes=False)
    e.set_defaults(func=cmd_eval)


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
    a.add_argument("--indexes", default=os.environ.get("LOOKALIKE_INDEXES", "indexes"), metavar="ROOT")
    _access_flags(a)
    a.set_defaults(func=cmd_app)

    d = sub.add_parser("demo", help="prepare the demo collection, build its indexes, train, open the UI")
    d.add_argument("--indexes", default="indexes", metavar="ROOT")
    d.add_argument("--data", default="data/demo", help="where the demo collection goes")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--minutes", type=float, default=None, help="training budget per method")
    d.add_argument("--no-train", action="store_true", help="skip background training")
    d.add_argument("--no-app", action="store_true", help="prepare everything, then exit without opening the UI")
    _access_flags(d)
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike", description="Image similarity search on your own photos, with "
                                "encoders trained on them without labels.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_index_commands(sub)
    _add_query_commands(sub)

    t = sub.add_parser("train", help="train an encoder on DIR without labels")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
    _add_app_commands(sub)
    return p


# the commands that answer without a model (and without torch): tests/test_startup.py
NO_MODEL = {("index", "list"), ("index", "info"), ("index", "remove")}


def _runs_a_model(args) -> bool:
    return (args.command, getattr(args, "index_cmd", None)) not in NO_MODEL


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and _runs_a_model(args):  # the command line itself, about to run a model
        from retrieval.allocator import reexec_with_tcmalloc

        # returns only where tcmalloc is not installed (or not wanted); glibc is then tuned by retrieval.encoders
        # on import, before any model is built
        reexec_with_tcmalloc()
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
