"""Exceptions whose message is meant for the person at the keyboard.

Every error raised on purpose by Lookalike derives from :class:`LookalikeError`; the CLI prints its message on one
line and exits non-zero, the web UI shows it as a ``gr.Error``. Messages say what went wrong *and* what to do.
"""


class LookalikeError(Exception):
    """Base class for errors with a user-facing, actionable message."""


class BadImageError(LookalikeError):
    """A file that cannot be used as an image. ``reason`` is a short phrase suitable for a skip report."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class EncoderMismatchError(LookalikeError):
    """An index was opened with an encoder other than the one it was built with."""


class IndexNotFoundError(LookalikeError):
    """No index of that name exists under the indexes root."""


class WeightsUnavailableError(LookalikeError):
    """Pretrained weights were asked for but are not available on this machine (and will not be downloaded)."""


class CheckpointError(LookalikeError):
    """A training run directory is missing, incomplete or inconsistent."""
