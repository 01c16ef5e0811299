"""The UI in a real (headless) Chromium: upload a query, see results (thumbnails), click one (its original one link
away), take the query to Compare, compare indexes.

Screenshots go to a temporary folder (the README's pictures are of the real demo: ``docs/screenshots.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.system import debian

from .app_server import start_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless browser test needs Chromium at {CHROMIUM} "
                                                     f"({debian('chromium')})"),
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
    # What the page loads for the results are the JPEG thumbnails (named by content identity), not the PNGs.
    sources = page.eval_on_selector_all("#search-results img", "imgs => imgs.map(i => i.currentSrc || i.src)")
    assert len(sources) >= 10 and all(re.search(r"/[0-9a-f]{32}\.jpg$", src) for src in sources), sources
    page.screenshot(path=str(shots / "search.png"), full_page=True)

    # Clicking a result makes it the query: it comes back first.
    clicked = captions[1].split(" · ", 1)[1]
    page.locator("#search-results .thumbnail-item").nth(1).click()
    page.wait_for_function(
        "(want) => { const c = document.querySelector('#search-results .caption-label');"
        " return c && c.innerText.trim() === want; }", arg=f"1.000 · {clicked}")
    # ... and the line under the results names it, with a link that opens the full picture.
    picked = page.locator("#search-picked")
    assert clicked in picked.inner_text()
    link = picked.get_by_role("link", name="open the full picture")
    full = page.request.get(page.url.rstrip("/") + "/" + link.get_attribute("href"))
    assert full.ok and full.body() == (shown_app.collection / clicked).read_bytes()

    # The query follows the user to Compare.
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-query img").wait_for()

    # Compare: one column per index, each headed by its encoder and its scores.
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


def test_the_explore_map_shows_the_picture_under_the_pointer(page, shown_app):
    page.goto(shown_app.url)
    page.get_by_role("tab", name="Explore").click()
    page.get_by_role("button", name="Show map").click()
    points = page.locator("#explore-map g.mark-symbol.role-mark path")
    points.first.wait_for()
    assert points.count() == len(shown_app.images)
    points.first.hover(force=True)
    picture = page.locator("#vg-tooltip-element img")
    picture.wait_for()
    page.wait_for_function("() => { const i = document.querySelector('#vg-tooltip-element img');"
                           " return i && i.complete && i.naturalWidth > 0; }")  # loaded, not a broken link
    assert re.search(r"/\.thumbnails/[0-9a-f]{2}/[0-9a-f]{32}\.jpg$", picture.get_attribute("src"))
    assert "path" in page.locator("#vg-tooltip-element").inner_text()
