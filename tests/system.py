"""What a test needs from outside the Python packages, and the one true line on how to get it."""

from __future__ import annotations

import os

import pytest


def debian(package: str) -> str:
    """How to get Debian ``package`` (the packages are listed once, in .ci/system-deps)."""
    return (f"Debian package {package}: 'make test' installs it when run as root with apt-get (.ci/system-deps), "
            f"else 'sudo apt-get install {package}'")


def needs(present: bool, what: str, how: str) -> None:
    """Skip when ``what`` is missing on a developer's machine; fail under ``CI=true``, where it must be there.
    ``how`` says how to get it."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing, and in CI it must not be ({how})", pytrace=False)
    pytest.skip(f"{what} is not installed ({how})")
