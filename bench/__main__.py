"""``python -m bench [--quick] [NAME ...]``: run benchmarks of :mod:`bench.registry` one after another.

Each runs in its own process (``python -m bench.NAME``), so one that fails or lacks what it needs does not stop the
others; at the end a line per benchmark says ok, failed (exit status) or skipped (and how to get what it needs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from bench.common import ROOT
from bench.registry import BENCHMARKS, module


def run(names: list[str], quick: bool) -> dict[str, str]:
    """Run each benchmark of ``names``; its outcome by name."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    outcome = {}
    for name in names:
        bench = BENCHMARKS[name]
        missing = bench.missing()
        if missing:
            outcome[name] = "skipped, needs " + "; ".join(missing)
            continue
        print(f"== {name}: {bench.description} (--quick ~{bench.quick_minutes:g} min)", flush=True)
        rc = subprocess.call([sys.executable, "-m", module(name), *(["--quick"] if quick else [])], cwd=ROOT, env=env)
        outcome[name] = "ok" if rc == 0 else f"failed (exit status {rc})"
    return outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(BENCHMARKS)})")
    ap.add_argument("--quick", action="store_true", help="each benchmark's --quick (results in *_quick.json)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and what --quick costs, run nothing")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmarks {' '.join(unknown)}: choose from {' '.join(BENCHMARKS)}")
    if args.list:
        for name, b in BENCHMARKS.items():
            needs = f" [needs {', '.join(b.needs)}]" if b.needs else ""
            print(f"{name:<20} ~{b.quick_minutes:>4g} min quick  {b.description}{needs}")
        return 0
    outcome = run(args.names or list(BENCHMARKS), args.quick)
    print("\n" + "\n".join(f"{name:<20} {what}" for name, what in outcome.items()))
    return 1 if any(what.startswith("failed") for what in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
