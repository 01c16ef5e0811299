"""The default index of an indexes folder: the one the app opens on when nothing else is asked for.

Stored as one small file in the indexes folder, :data:`DEFAULT_MARKER`, holding the index's name (written
atomically). ``lookalike sweep`` marks its winner this way. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LookalikeError
from .fsutil import atomic_write_json

__all__ = ["DEFAULT_MARKER", "default_index", "set_default_index"]

DEFAULT_MARKER = ".default-index.json"  # a dot name: list_indexes skips it


def default_index(root: str | Path) -> str | None:
    """The name marked as default under ``root``, or None (no marker, an unreadable one, or a removed index)."""
    try:
        name = json.loads((Path(root) / DEFAULT_MARKER).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and (Path(root) / name).is_dir() else None


def set_default_index(root: str | Path, name: str, why: str = "") -> None:
    """Mark index ``name`` under ``root`` as the default one (``why``: a note kept beside it)."""
    if not (Path(root) / name).is_dir():
        raise LookalikeError(f"no index {name!r} under {root} to make the default")
    atomic_write_json(Path(root) / DEFAULT_MARKER, {"name": name, "why": why})
