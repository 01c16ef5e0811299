"""Who may use the page and which folders it may index or train on, once it listens beyond this machine.

* :func:`is_loopback` tells whether a bind address only reaches this machine (127.x, ``localhost``, ``::1``).
* :func:`login` reads the credentials (``--auth USER:PASSWORD``, ``--auth @FILE`` with one ``USER:PASSWORD`` a
  line, or the ``LOOKALIKE_AUTH`` environment variable, same forms); :func:`require_login` refuses to serve beyond
  loopback (or with a share link) without them. They go to Gradio's own ``auth=``.
* :class:`FolderRoots` is what the Indexes and Train tabs may read: folders under the roots given at launch
  (``--allow-dir``, defaulting to the collections of the existing indexes). A path is judged after ``..`` and every
  symbolic link are resolved, so neither can lead out of a root. An app on loopback with no ``--allow-dir`` keeps
  accepting any folder (its user is the server's user); anywhere else the roots hold.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Iterable, Sequence

from retrieval.errors import LookalikeError

AUTH_ENV = "LOOKALIKE_AUTH"
Credentials = list[tuple[str, str]]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a bind address) only accepts connections from this machine."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (every interface): assume it is reachable from elsewhere


def exposed(host: str | None, share: bool) -> bool:
    """Whether the page can be reached from beyond this machine (a non-loopback address or a share link)."""
    return bool(share) or not is_loopback(host)


def parse_credentials(text: str, where: str) -> Credentials:
    """``USER:PASSWORD`` pairs, one a line (blank lines and ``#`` comments skipped); a clear error otherwise."""
    pairs = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise LookalikeError(f"{where}, line {n}: expected USER:PASSWORD (a non-empty name and password)")
        pairs.append((user.strip(), password))
    if not pairs:
        raise LookalikeError(f"{where}: no USER:PASSWORD given")
    return pairs


def login(auth: str | None = None, environ: dict | None = None) -> Credentials | None:
    """The credentials from ``auth`` (``USER:PASSWORD`` or ``@FILE``), else from ``LOOKALIKE_AUTH``; None if neither."""
    environ = os.environ if environ is None else environ
    where = "--auth"
    if not auth:
        auth, where = environ.get(AUTH_ENV) or None, AUTH_ENV
    if not auth:
        return None
    if auth.startswith("@"):
        path = Path(auth[1:]).expanduser()
        try:
            return parse_credentials(path.read_text(encoding="utf-8"), f"{where} file {path}")
        except OSError as exc:
            raise LookalikeError(f"{where}: cannot read the credentials file {path}: "
                                 f"{(exc.strerror or str(exc)).lower()}") from None
    return parse_credentials(auth, where)


def require_login(host: str | None, share: bool, credentials: Credentials | None) -> None:
    """Refuse to serve the page beyond this machine without a login."""
    if credentials or not exposed(host, share):
        return
    where = "with a share link" if share else f"on {host or 'every interface'}"
    raise LookalikeError(f"refusing to serve the page {where} without a login: anyone who reaches it could search "
                         f"and index the server's images. Give --auth USER:PASSWORD (or --auth @FILE, or set "
                         f"{AUTH_ENV}), or listen on 127.0.0.1 only")


class FolderRoots:
    """The folders the page may index or train on: anything when ``roots`` is None, else only under them."""

    def __init__(self, roots: Iterable[str | os.PathLike] | None):
        self.roots: list[Path] | None = (None if roots is None else
                                         list(dict.fromkeys(Path(r).expanduser().resolve() for r in roots)))

    @classmethod
    def at_launch(cls, allow_dirs: Sequence[str | os.PathLike] | None, defaults: Sequence[str | os.PathLike],
                  exposed: bool) -> "FolderRoots":
        """``--allow-dir`` roots if given; else ``defaults`` (the indexed collections) beyond loopback; else any."""
        if allow_dirs:
            missing = [str(d) for d in allow_dirs if not Path(d).expanduser().is_dir()]
            if missing:
                raise LookalikeError(f"--allow-dir: not a folder: {', '.join(missing)}")
            return cls(allow_dirs)
        return cls(defaults) if exposed else cls(None)

    def check(self, folder: str | os.PathLike, what: str = "index") -> Path:
        """The real path of ``folder`` if the page may ``what`` it; a :class:`LookalikeError` saying why not."""
        text = os.fspath(folder).strip() if isinstance(folder, (str, os.PathLike)) else ""
        if not text:
            raise LookalikeError(f"Give the path of a folder of images to {what}.")
        try:
            real = Path(text).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            raise LookalikeError(f"Folder {text!r} cannot be read; give the path of a folder of images.") from None
        if self.roots is not None and not any(real.is_relative_to(root) for root in self.roots):
            lead = f" (it leads to {real})" if str(real) != os.path.abspath(os.path.expanduser(text)) else ""
            allowed = ", ".join(map(str, self.roots)) or "none (no --allow-dir was given and no index exists)"
            raise LookalikeError(f"Folder {text!r} is outside the folders this app may {what}{lead}. Allowed: "
                                 f"{allowed}. Start the app with --allow-dir DIR to allow another.")
        if not real.is_dir():
            raise LookalikeError(f"Folder {text!r} does not exist; give the path of a folder of images on the "
                                 "server.")
        return real

    def offered(self, folders: Iterable[str]) -> list[str]:
        """``folders`` the page may use (for its folder pickers), then the roots themselves."""
        keep = []
        for f in folders:
            try:
                keep.append(str(self.check(f)))
            except LookalikeError:
                continue
        return list(dict.fromkeys(keep + [str(r) for r in self.roots or []]))
