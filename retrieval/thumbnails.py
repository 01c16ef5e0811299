"""Small pictures of indexed images for the web UI: made once, cached on disk, dropped with their items.

A :class:`ThumbnailCache` holds JPEGs of at most :data:`THUMB_SIZE` pixels on their longest side, in one folder
(the UI uses ``INDEXES/.thumbnails``, which no index lists). Each is named after the content identity of its
source — absolute path, size and ``st_mtime_ns`` — so an edited file gets a new one and two indexes of one folder
share theirs. A thumbnail is written atomically (:func:`retrieval.fsutil.atomic_write_bytes`): a crash leaves it
whole or absent. :meth:`ThumbnailCache.sweep` deletes those whose source is no longer a live item of any index.

The cache makes a thumbnail for whatever path it is given: callers hand it only items of an index, already checked
(:meth:`retrieval.workspace.Workspace.resolve`). Torch-free.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Iterable

from .fsutil import atomic_write_bytes, is_temp
from .imageio import load_image

THUMB_SIZE = 256  # longest side, in pixels
QUALITY = 82  # JPEG quality: about 10-20 KB for a 256-px photo
SUFFIX = ".jpg"
CACHE_DIR = ".thumbnails"  # the UI's cache folder inside the indexes root (hidden: never taken for an index)
GRACE_S = 60.0  # a sweep keeps thumbnails younger than this (one just made for a search still being answered)


def thumbnail_dir(indexes_root: str | os.PathLike) -> Path:
    """Where the UI keeps the thumbnails of the indexes under ``indexes_root``."""
    return Path(indexes_root) / CACHE_DIR


def identity(path: str | os.PathLike) -> str:
    """The cache key of a file as it is now: absolute path + size + mtime in ns (raises OSError if it is gone)."""
    path = Path(path).resolve()
    st = path.stat()
    return hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]


def make_thumbnail(source: str | os.PathLike | bytes, size: int = THUMB_SIZE) -> bytes:
    """JPEG bytes of ``source`` (upright RGB, longest side at most ``size``), or :class:`BadImageError`."""
    im = load_image(source, reduce_to=size)  # JPEGs decode at 1/2..1/8 scale: a 12-MP photo costs tens of ms
    im.thumbnail((size, size), resample=3, reducing_gap=2.0)  # 3 = bicubic
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


class ThumbnailCache:
    """Thumbnails under ``directory``, in 256 sub-folders by the first two hex digits of their key."""

    def __init__(self, directory: str | os.PathLike, size: int = THUMB_SIZE):
        self.directory = Path(directory)
        self.size = size

    def path_of(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def get(self, source: str | os.PathLike) -> Path:
        """The thumbnail of ``source`` (made now if missing); :class:`BadImageError` if it does not decode."""
        target = self.path_of(identity(source))
        if target.is_file():
            return target
        data = make_thumbnail(source, self.size)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return target

    def sweep(self, live: Iterable[str | os.PathLike], grace_s: float = GRACE_S) -> int:
        """Delete the thumbnails (and leftover temporaries) of files not in ``live``; returns how many went.

        ``live`` is every file the cache may still be asked for (the items of every index); one missing or
        changed since its thumbnail was made no longer matches it. Files younger than ``grace_s`` are kept.
        """
        keep = set()
        for path in live:
            try:
                keep.add(identity(path))
            except OSError:
                continue
        if not self.directory.is_dir():
            return 0
        cutoff, removed = time.time() - grace_s, 0
        for shard in self.directory.iterdir():
            if not shard.is_dir():
                continue
            for f in shard.iterdir():
                stem = f.name[:-len(SUFFIX)] if f.name.endswith(SUFFIX) else None
                if stem in keep or not (stem or is_temp(f.name)):
                    continue
                try:
                    if f.stat().st_mtime < cutoff:
                        f.unlink()
                        removed += 1
                except OSError:
                    continue
        return removed
