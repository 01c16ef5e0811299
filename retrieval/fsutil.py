"""Atomic file writes and timestamps: the one implementation every writer of the project uses.

An atomic write puts the data in full into a temporary file beside the target (``.NAME.tmp-PID``, plus the thread's
id when written from a thread other than the main one), flushes it to disk, moves it over the target with
``os.replace`` and flushes the folder, so a reader or a crash sees the old content or the new one, never a mix.
Writers that must publish several files back to back (a training checkpoint) use :func:`write_temp` for each and
then :func:`publish` them in the order they choose. Leftover temporaries of a killed writer are recognised by
:func:`is_temp` and are never read. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

__all__ = ["sha256_file", "atomic_write_bytes", "atomic_write_json", "now_iso", "temp_path", "is_temp",
           "write_temp", "publish", "fsync_path", "json_bytes"]

_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-\d+(-\d+)?\Z")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now_iso() -> str:
    """The current time in UTC to the second, ISO 8601 (``2026-12-01T21:50:50+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`write_temp` uses for ``path`` in this process (and thread)."""
    path = Path(path)
    thread = "" if threading.current_thread() is threading.main_thread() else f"-{threading.get_native_id()}"
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{thread}")


def is_temp(name: str, of: str | None = None) -> bool:
    """Whether the file name ``name`` is a temporary of an atomic write (of the file named ``of``, if given)."""
    match = _TEMP.match(name)
    return match is not None and (of is None or match.group("name") == of)


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a file (or a folder's list of entries) to disk; folders cannot be opened for this on Windows."""
    if directory and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` in full to the temporary beside ``path`` and flush it to disk; returns the temporary."""
    tmp = temp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a flushed temporary over ``path`` (atomic) and flush the folder so the rename survives a crash."""
    os.replace(tmp, path)
    fsync_path(Path(path).parent, directory=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes,
                       before_replace: Callable[[], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new one, never a mix.

    ``before_replace`` runs once the temporary is on disk, just before it replaces ``path`` (a test hook)."""
    tmp = write_temp(path, data)
    try:
        if before_replace is not None:
            before_replace()
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_bytes(obj: Any, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> bytes:
    """``obj`` as the project writes JSON files: indented by 2, one trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n").encode("utf-8")


def read_json_dict(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``, or ``{}`` where the file is missing, unreadable or holds no object: for caches
    and markers that are rewritten whole (atomically) and may simply be absent."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None,
                      before_replace: Callable[[], None] | None = None) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as JSON (see :func:`json_bytes`)."""
    atomic_write_bytes(path, json_bytes(obj, sort_keys=sort_keys, default=default), before_replace=before_replace)
