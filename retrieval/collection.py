"""Scanning a folder of images into a :class:`Collection`: the files worth embedding, and why the rest are not.

A scan only reads headers (:func:`~retrieval.imageio.probe_image`), so it stays fast on large folders; the
full decode happens once, at embedding time. Every file the walk meets ends up either as an :class:`Item` or
as a :class:`Skipped` entry with a reason, except hidden files and folders (names starting with "."), which
are someone else's business (.git, .DS_Store, thumbnails caches) and are ignored silently.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import BadImageError, LookalikeError
from .imageio import IMAGE_EXTENSIONS, MAX_PIXELS, probe_image


@dataclass
class Item:
    """An image file of the collection. ``path`` is relative to the collection root, with "/" separators."""

    path: str
    size: int
    mtime: float
    label: str | None = None


@dataclass
class Skipped:
    """A file (or folder link) that was left out, and a short human reason why."""

    path: str
    reason: str


@dataclass
class Collection:
    """The result of :func:`scan`: ``items`` and ``skipped`` are both sorted by path."""

    root: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def labels(self) -> list[str] | None:
        """Sorted distinct labels, or None when no item has one (scanned without labels, or a flat folder)."""
        found = sorted({it.label for it in self.items if it.label is not None})
        return found or None

    def abspath(self, item_or_relpath: Item | str) -> Path:
        """Absolute path of an item. Refuses paths that would leave the root ("..", absolute paths)."""
        rel = item_or_relpath.path if isinstance(item_or_relpath, Item) else item_or_relpath
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or (os.sep == "\\" and "\\" in rel):
            raise LookalikeError(f"not a path inside the collection: {rel!r}")
        return Path(self.root, *parts)


def scan(root: str | os.PathLike, labels: bool = False, max_pixels: int = MAX_PIXELS,
         progress: bool = False, known: Mapping[str, tuple[int, float]] | None = None,
         confine: Sequence[str | os.PathLike] | None = None) -> Collection:
    """Walk ``root`` recursively (sorted, deterministic) and sort every file into items and skipped ones.

    Symbolic links to files are followed. Symbolic links to folders are followed after the real folders, and
    each folder is entered at most once (by device and inode), so a link loop or a second link to the same
    folder cannot repeat or hang the walk; content reachable by its real path keeps its real path.
    With ``labels=True`` each item's label is the name of its first-level sub-folder (None for files
    directly in ``root``), the layout evaluation datasets use.

    ``known`` (path → (size, mtime) of the items an index holds) spares a refresh the header reads: a file with
    the size and modification time it had when it was indexed passed the same checks then, so it is an item
    without being opened again (a refresh of 100,000 photos reads only the new and changed ones).

    ``confine`` (folders; the web app's allowed roots): a link, to a file or a folder, whose target lies outside
    all of them is skipped with that reason instead of followed, so a folder inside the roots cannot lead out.
    """
    root_path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not root_path.exists():
        raise LookalikeError(f"folder not found: {root_path} (check the path, or create it and add images)")
    if not root_path.is_dir():
        raise LookalikeError(f"not a folder: {root_path} (give the folder that holds the images)")

    roots = None if confine is None else [Path(os.path.realpath(os.path.expanduser(os.fspath(c)))) for c in confine]
    walker = _Walker(root_path, labels, max_pixels, progress, known or {}, roots)
    walker.run()
    walker.items.sort(key=lambda it: _sort_key(it.path))
    walker.skipped.sort(key=lambda sk: _sort_key(sk.path))
    return Collection(root_path, walker.items, walker.skipped)


def _sort_key(rel: str) -> list[str]:
    return rel.split("/")  # component-wise, so "a/b" sorts with "a", not after "a b"


class _Walker:
    """Iterative depth-first walk (no recursion limit on deep trees) with a visited set of folders."""

    def __init__(self, root: Path, labels: bool, max_pixels: int, progress: bool,
                 known: Mapping[str, tuple[int, float]], confine: list[Path] | None = None):
        self.root, self.labels, self.max_pixels, self.known = root, labels, max_pixels, known
        self.confine = confine
        self.items: list[Item] = []
        self.skipped: list[Skipped] = []
        self._visited: set[tuple[int, int]] = set()
        self._progress = progress
        self._tick: Callable[[], object] = lambda: None  # one step of the progress bar per file

    def run(self) -> None:
        from tqdm import tqdm

        with tqdm(desc="scanning", unit="file", disable=not self._progress, file=sys.stderr, leave=False) as bar:
            self._tick = lambda: bar.update(1)
            st = os.stat(self.root)
            self._visited.add((st.st_dev, st.st_ino))
            linked: list[tuple[str, os.stat_result]] = []  # folder links, entered after the real tree
            self._walk_tree("", linked)
            while linked:
                rel, st = linked.pop(0)
                key = (st.st_dev, st.st_ino)
                if key in self._visited:
                    self.skipped.append(Skipped(rel, "link to a folder already scanned"))
                    continue
                self._visited.add(key)
                self._walk_tree(rel, linked)

    def _walk_tree(self, top: str, linked: list[tuple[str, os.stat_result]]) -> None:
        stack = [top]
        while stack:
            rel_dir = stack.pop()
            subdirs = self._scan_dir(rel_dir, linked)
            stack.extend(reversed(subdirs))  # pop in sorted order

    def _scan_dir(self, rel_dir: str, linked: list[tuple[str, os.stat_result]]) -> list[str]:
        """Handle the files of one folder; return its real (non-link) sub-folders, sorted."""
        try:
            with os.scandir(self.root / rel_dir if rel_dir else self.root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel_dir:
                raise LookalikeError(f"cannot read folder {self.root}: {_os_error(exc)}") from exc
            self.skipped.append(Skipped(rel_dir, f"unreadable folder: {_os_error(exc)}"))
            return []
        subdirs: list[str] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if not _utf8_ok(rel):
                self.skipped.append(Skipped(_printable(rel), "file name is not valid UTF-8 (rename it)"))
                continue
            try:
                st = os.stat(entry.path)  # follows links
                is_link = entry.is_symlink()
            except OSError as exc:
                reason = "broken symbolic link" if entry.is_symlink() else f"unreadable: {_os_error(exc)}"
                self.skipped.append(Skipped(rel, reason))
                continue
            if is_link and self.confine is not None and not self._inside(entry.path):
                self.skipped.append(Skipped(rel, "link out of the allowed folders"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if is_link:
                    linked.append((rel, st))
                    continue
                key = (st.st_dev, st.st_ino)
                if key in self._visited:  # a bind mount looping back
                    self.skipped.append(Skipped(rel, "folder already scanned (a mount loop)"))
                    continue
                self._visited.add(key)
                subdirs.append(rel)
            elif stat.S_ISREG(st.st_mode):
                self._add_file(rel, entry.path, st)
            else:
                self.skipped.append(Skipped(rel, "not a regular file"))
        return subdirs

    def _inside(self, path: str) -> bool:
        real = Path(os.path.realpath(path))
        return any(real.is_relative_to(root) for root in self.confine or ())

    def _add_file(self, rel: str, path: str, st: os.stat_result) -> None:
        self._tick()
        ext = os.path.splitext(rel)[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            self.skipped.append(Skipped(rel, f"unsupported file type ({ext or 'no extension'})"))
            return
        if self.known.get(rel) != (st.st_size, st.st_mtime):
            try:
                probe_image(path, self.max_pixels)
            except BadImageError as exc:
                self.skipped.append(Skipped(rel, exc.reason))
                return
        label = rel.split("/", 1)[0] if self.labels and "/" in rel else None
        self.items.append(Item(rel, st.st_size, st.st_mtime, label))


def _utf8_ok(name: str) -> bool:
    """Names with undecodable bytes (surrogate escapes) would break SQLite, JSON and the web UI later."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _printable(name: str) -> str:
    return os.fsencode(name).decode("utf-8", "replace")


def _os_error(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
