"""``lookalike index refresh`` of an unchanged folder of N files: the whole command, in a fresh process.

The folder holds N hard links to 16 small PNGs under their own names in 16 sub-folders (N files to walk and
``stat``, no disk to speak of); the index is written straight through ``IndexStore.create`` with those items' sizes
and modification times and random unit vectors for ``random:resnet10t?size=64``, as a build would leave it. The
refresh is then run ``--runs`` times as a user runs it (``python -m app.cli index refresh``); each must report
``+0 -0``. With nothing changed it opens neither FAISS nor the encoder (``Workspace.refresh``).

Rerun:  python -m bench.refresh_unchanged --quick    # 10,000 files
        python -m bench.refresh_unchanged            # 100,000 files
Writes ``bench/results/refresh_unchanged.json`` (``refresh_unchanged_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import quick_name, save_result

ENCODER = "random:resnet10t?size=64"
NAME = "unchanged"


def make_folder(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    files = []
    for d in range(16):  # one source per sub-folder: a file system caps the links to one file (ext4: 65,000)
        sub = folder / f"d{d:02d}"
        sub.mkdir(parents=True)
        Image.new("RGB", (32, 32), (120, 30, 10 * d)).save(sub / "source.png")
    for i in range(n):
        files.append(folder / f"d{i % 16:02d}" / f"{i:06d}.png")
        os.link(files[-1].parent / "source.png", files[-1])
    for d in range(16):
        (folder / f"d{d:02d}" / "source.png").unlink()
    return files


def make_index(root: Path, folder: Path, files: list[Path]) -> None:
    from retrieval.collection import Item
    from retrieval.encoders import load_encoder
    from retrieval.index_store import IndexStore

    encoder = load_encoder(ENCODER)
    stats = [f.stat() for f in files]
    items = [Item(f.relative_to(folder).as_posix(), st.st_size, st.st_mtime) for f, st in zip(files, stats)]
    vectors = np.random.default_rng(0).standard_normal((len(items), encoder.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    IndexStore.create(root, NAME, encoder.identity, encoder.dim, folder, index_type="flat", items=items,
                      vectors=vectors)


def refresh(root: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "app.cli", "index", "refresh", NAME, "--indexes", str(root),
                          "--json"], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t, json.loads(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 files")
    parser.add_argument("--n", type=int, help="files (default 100,000; 10,000 with --quick)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        folder, root = Path(tmp) / "photos", Path(tmp) / "indexes"
        make_index(root, folder, make_folder(folder, n))
        walls = []
        for _ in range(args.runs):
            wall, report = refresh(root)
            if (report["added"], report["removed"], report["count"]) != (0, 0, n):
                raise SystemExit(f"the refresh changed the index: {report}")
            walls.append(wall)
    figures = {"refresh_wall_s": {"median": round(statistics.median(walls), 3), "min": round(min(walls), 3),
                                  "max": round(max(walls), 3), "runs": [round(w, 3) for w in walls]}}
    path = save_result(quick_name("refresh_unchanged", args.quick), figures, n=n, encoder=ENCODER,
                       index_type="flat")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
