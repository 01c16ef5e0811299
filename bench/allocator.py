"""Which C allocator a model-running command should start with: tcmalloc (preloaded) or glibc tuned in-process.

Each round builds the same index of a generated folder once per allocator, as a user runs it (``lookalike index
build``, a fresh process, start-up and imports included), the allocators' order rotating from round to round so a
drift in the machine's speed falls on all of them alike. Per allocator: the median, min and max of the rounds' wall
seconds and of their CPU seconds (user + system, the child's own accounting), and the median of the pairwise ratios
to tuned glibc. ``system`` (glibc as it comes) is the reference both remedies are for.

    PYTHONPATH=. .venv/bin/python -m bench.allocator            # 5 rounds -> bench/results/allocator.json
    PYTHONPATH=. .venv/bin/python -m bench.allocator --rounds 7 --images 240
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import save_result
from retrieval.allocator import ENV
from retrieval.synthetic import make_collection

ENCODER = "random:tf_efficientnet_lite0"  # the pretrained encoder's network and input size (224 px), no weights needed
TCMALLOC = "libtcmalloc_minimal.so.4"  # Debian's libtcmalloc-minimal4


def tcmalloc_path() -> str | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if os.path.isfile(os.path.join(folder, TCMALLOC)):
            return os.path.join(folder, TCMALLOC)
    return None


def _environments() -> dict[str, dict[str, str]]:
    """Each allocator as the environment of a command that starts with it."""
    base = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    envs = {"glibc_tuned": dict(base), "system": {**base, ENV: "system"}}
    path = tcmalloc_path()
    if path is None:
        raise SystemExit("libtcmalloc-minimal4 is not installed (Debian: apt-get install libtcmalloc-minimal4)")
    envs["tcmalloc"] = {**base, ENV: "system", "LD_PRELOAD": path}  # preloaded: nothing of ours tunes glibc
    return envs


def _run_once(folder: Path, indexes: Path, env: dict[str, str], threads: int) -> dict:
    cmd = [sys.executable, "-m", "app.cli", "index", "build", str(folder), "--encoder", ENCODER, "--name", "a",
           "--overwrite", "--indexes", str(indexes), "--device", "cpu", "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"index build failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "system_s": round(after.ru_stime - before.ru_stime, 3), "count": json.loads(proc.stdout)["count"]}


def _summary(runs: list[dict], base: list[dict]) -> dict:
    out = {}
    for key in ("wall_s", "cpu_s", "system_s"):
        values = [r[key] for r in runs]
        out[key] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}
    out["wall_ratio_to_glibc_tuned"] = round(statistics.median(r["wall_s"] / b["wall_s"] for r, b in zip(runs, base)),
                                             3)
    return out


def measure(rounds: int, images: int, threads: int) -> dict:
    envs = _environments()
    names = list(envs)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_collection(folder, n_classes=8, per_class=-(-images // 8), size=256, seed=0)
        for name in names:  # warm-up (page cache, .pyc files), not counted
            _run_once(folder, Path(tmp) / "idx", envs[name], threads)
        for i in range(rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                runs[name].append(_run_once(folder, Path(tmp) / "idx", envs[name], threads))
                print(f"round {i + 1} {name:<12} {runs[name][-1]}", file=sys.stderr)
    return {"summary": {n: _summary(runs[n], runs["glibc_tuned"]) for n in names}, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each build (OMP_NUM_THREADS)")
    args = p.parse_args()
    figures = measure(args.rounds, args.images, args.threads)
    path = save_result("allocator", figures, rounds=args.rounds, images=args.images, threads=args.threads,
                       encoder=ENCODER, command="lookalike index build DIR --encoder ENCODER --device cpu")
    print(json.dumps(figures["summary"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
