"""The demo collection: the same emoji drawn by two vendors, from the npm registry's emoji-datasource packages.

One vendor's drawings (Twitter's) are the collection, filed under their Unicode subcategory (99 labels); the
other vendor's (Google's) drawings of the same emoji are the queries. Ground truth for retrieval is therefore
real: the same emoji code point drawn by someone else (instance level) and the same subcategory (class level).
Without npm, a generated collection of shapes stands in, and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import LookalikeError
from retrieval.synthetic import make_collection

EMOJI_VERSION = "16.0.0"
COLLECTION_VENDOR = "twitter"
QUERY_VENDOR = "google"


@dataclass
class DemoData:
    collection: Path  # labelled sub-folders of images to index and train on
    queries: Path  # the same things drawn differently: example queries
    source: str  # "emoji" or "generated"
    meta: Path | None = None  # emoji.json rows of the images used (emoji only)

    def example_queries(self, n: int = 8) -> list[str]:
        files = sorted(p for p in self.queries.rglob("*.png"))
        if not files:
            return []
        step = max(1, len(files) // n)
        return [str(p) for p in files[::step][:n]]


def _npm_pack(package: str, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise LookalikeError("npm is not installed")
    proc = subprocess.run([npm, "pack", package, "--pack-destination", str(dest), "--silent"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise LookalikeError(f"npm pack {package} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    name = proc.stdout.strip().splitlines()[-1]
    return dest / name


def file_name(row: dict) -> str:
    return row["short_name"].replace("/", "_") + ".png"


def prepare_emoji(dest: str | Path, cache: str | Path | None = None, log=print) -> DemoData:
    """Download (npm pack) both vendors' packages once and lay the images out under ``dest``. Reused when present."""
    dest = Path(dest)
    done = dest / ".ready"
    data = DemoData(dest / COLLECTION_VENDOR, dest / QUERY_VENDOR, "emoji", dest / "emoji.json")
    if done.exists() and done.read_text().strip() == EMOJI_VERSION:
        return data
    cache = Path(cache) if cache else dest.parent / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".emoji-", dir=dest.parent if dest.parent.exists() else None))
    try:
        rows = None
        for vendor in (COLLECTION_VENDOR, QUERY_VENDOR):
            tgz = cache / f"emoji-datasource-{vendor}-{EMOJI_VERSION}.tgz"
            if not tgz.exists():
                log(f"fetching emoji-datasource-{vendor}@{EMOJI_VERSION} from the npm registry …")
                tgz = _npm_pack(f"emoji-datasource-{vendor}@{EMOJI_VERSION}", cache)
            with tarfile.open(tgz) as tar:
                if rows is None:
                    rows = json.load(tar.extractfile("package/emoji.json"))
                    rows = [r for r in rows
                            if r.get(f"has_img_{COLLECTION_VENDOR}") and r.get(f"has_img_{QUERY_VENDOR}")]
                members = {m.name: m for m in tar.getmembers()}
                for r in rows:
                    member = members.get(f"package/img/{vendor}/64/{r['image']}")
                    if member is None:
                        continue
                    out = staging / vendor / r["subcategory"] / file_name(r)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())
        (staging / "emoji.json").write_text(json.dumps(
            [{k: r[k] for k in ("name", "short_name", "unified", "image", "category", "subcategory")} for r in rows],
            indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
        done.write_text(EMOJI_VERSION)
        log(f"demo collection: {sum(1 for _ in data.collection.rglob('*.png'))} {COLLECTION_VENDOR} emoji in "
            f"{data.collection}, {QUERY_VENDOR}'s drawings as queries")
        return data
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_generated(dest: str | Path) -> DemoData:
    """Stand-in collection of generated shapes (24 classes × 16 images at 64 px; queries from another seed)."""
    dest = Path(dest)
    data = DemoData(dest / "collection", dest / "queries", "generated")
    if not (dest / ".ready").exists():
        make_collection(data.collection, n_classes=24, per_class=16, size=64, seed=0)
        make_collection(data.queries, n_classes=24, per_class=1, size=64, seed=0, draw_seed=99)
        (dest / ".ready").write_text("generated")
    return data


def prepare_demo_data(root: str | Path = "data/demo", log=print) -> DemoData:
    """The emoji collection, or the generated one when npm or the registry can't be reached (with a message)."""
    root = Path(root)
    try:
        return prepare_emoji(root / "emoji", cache=root / "cache", log=log)
    except (LookalikeError, OSError, subprocess.SubprocessError, KeyError, json.JSONDecodeError,
            tarfile.TarError) as exc:
        print(f"note: the emoji demo collection is unavailable ({exc}); using a generated collection of shapes "
              "instead. Install npm and re-run to get the real images.", file=sys.stderr)
        return prepare_generated(root / "generated")
