"""Make the README's screenshots from the real demo: docs/search.png, compare.png, train.png and explore.png.

    lookalike demo --no-train &            # the demo collection and its indexes, the UI on port 7860
    python docs/screenshots.py [--url http://127.0.0.1:7860] [--query PATH]

Needs Chromium (Debian ``chromium``) and playwright (the ``dev`` extra). Each picture is quantised to 256 colours
when that keeps it under :data:`MAX_BYTES`.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
MAX_BYTES = 300_000
QUERY = "data/demo/emoji/google/animal-mammal/fox_face.png"  # a Google drawing; the index holds Twitter's


def save(png: bytes, name: str) -> Path:
    """``png`` as docs/NAME, quantised when that makes it small enough."""
    out = DOCS / name
    image = Image.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    if buf.tell() > MAX_BYTES:
        buf = io.BytesIO()
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    out.write_bytes(buf.getvalue())
    print(f"{out}: {buf.tell() // 1000} kB")
    return out


def shoot(page, url: str, query: Path) -> None:
    page.goto(url)
    page.locator("#search-query input[type=file]").set_input_files(str(query))  # its change event searches
    page.wait_for_function("document.querySelectorAll('#search-results img').length >= 10 && "
                           "[...document.querySelectorAll('#search-results img')].every(i => i.complete)")
    save(page.screenshot(), "search.png")

    page.get_by_role("tab", name="Compare").click()  # the query follows
    page.locator("#compare-query img").wait_for()
    page.locator("#compare-button").click()
    page.wait_for_function("document.querySelectorAll('.compare-gallery').length >= 3 && "
                           "[...document.querySelectorAll('.compare-gallery img')].every(i => i.complete) && "
                           "document.querySelectorAll('.compare-gallery img').length >= 15")
    save(page.screenshot(), "compare.png")

    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("document.querySelector('#train-plan').innerText.includes('Will train')", timeout=120_000)
    save(page.screenshot(), "train.png")

    page.get_by_role("tab", name="Explore").click()
    page.get_by_label("t-SNE").check()
    page.get_by_role("button", name="Show map").click()
    page.wait_for_function("document.querySelector('#explore-map').innerText.includes('t-SNE embedding')",
                           timeout=300_000)
    # the plot redraws after its caption changes: wait for t-SNE's axes (tens, where PCA's are below 1)
    page.wait_for_function("[...document.querySelectorAll('#explore-map .role-axis-label text')]"
                           ".some(t => Math.abs(parseFloat(t.textContent)) >= 5)")
    points = page.locator("#explore-map g.mark-symbol.role-mark path")
    points.nth(points.count() // 3).hover(force=True)
    page.wait_for_function("() => { const i = document.querySelector('#vg-tooltip-element img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    save(page.screenshot(), "explore.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--query", type=Path, default=Path(QUERY))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(60_000)
            shoot(page, args.url, args.query)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
