"""The Debian packages the tests need are declared once (.ci/system-deps), and `make test` alone installs them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("chromium", "tuxpaint-stamps-default")


def test_make_test_and_ci_install_the_packages_from_one_list():
    script = (ROOT / ".ci" / "system-deps").read_text()
    assert all(f"need+=({p})" in script for p in PACKAGES)
    test_rule = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert test_rule.index(".ci/system-deps") < test_rule.index("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and not any(p in ci for p in PACKAGES) and "apt-get" not in ci
