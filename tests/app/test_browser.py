"""The UI in a real (headless) Chromium: upload a query, see results, click one, compare indexes.

Screenshots go to a temporary folder; with ``LOOKALIKE_SCREENSHOTS=docs`` they replace ``docs/search.png`` and
``docs/compare.png`` (how the README's pictures are made).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .app_server import start_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless browser test needs Chromium at {CHROMIUM} "
                                                     "(Debian: apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def shown_app(tmp_path_factory):
    """6 classes × 6 images of 64 px: big enough to look like something in the screenshots."""
    app = start_app(tmp_path_factory.mktemp("browser"), n_classes=6, per_class=6, size=64)
    yield app
    app.demo.close()


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(20_000)
            yield pg
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    if os.environ.get("LOOKALIKE_SCREENSHOTS") == "docs":
        out = REPO / "docs"
        out.mkdir(exist_ok=True)
        return out
    return tmp_path


def _captions(page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(f"{selector} .caption-label").all_inner_texts()]


def test_search_compare_and_click_to_search(page, shown_app, shots):
    query = shown_app.images[7]
    rel = query.relative_to(shown_app.collection).as_posix()
    page.goto(shown_app.url)

    # Search: upload into the image input; its change event searches (the button does the same).
    page.locator("#search-query input[type=file]").set_input_files(str(query))
    page.locator("#search-query img").wait_for()
    page.locator("#search-button").click()
    page.wait_for_function("document.querySelectorAll('#search-results img').length >= 10")
    page.wait_for_function(f"document.querySelector('#search-results').innerText.includes({rel!r})")
    captions = _captions(page, "#search-results")
    assert captions[0] == f"1.000 · {rel}"
    assert all(re.fullmatch(r"-?\d\.\d{3} · \S+", c) for c in captions)
    page.screenshot(path=str(shots / "search.png"), full_page=True)

    # Clicking a result makes it the query: it comes back first.
    clicked = captions[1].split(" · ", 1)[1]
    page.locator("#search-results .thumbnail-item").nth(1).click()
    page.wait_for_function(
        "(want) => { const c = document.querySelector('#search-results .caption-label');"
        " return c && c.innerText.trim() === want; }", arg=f"1.000 · {clicked}")

    # Compare: one column per index, each headed by its encoder and its scores.
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-query input[type=file]").set_input_files(str(query))
    page.locator("#compare-query img").wait_for()
    page.locator("#compare-button").click()
    page.wait_for_function("document.querySelectorAll('.compare-gallery').length === 2 && "
                           "document.querySelectorAll('.compare-gallery img').length >= 10")
    columns = page.locator("#compare-columns")
    text = columns.inner_text()
    assert "pixels 32x32" in text and "random resnet10t @64px" in text
    assert "recall@1" in text
    for gallery in page.locator(".compare-gallery").all():
        assert gallery.locator(".caption-label").first.inner_text().strip() == f"1.000 · {rel}"
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
