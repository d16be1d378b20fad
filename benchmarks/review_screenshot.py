"""Regenerate docs/review.png: the review page (``nwb-extract review``) on the demo result, in headless Chromium.

    python benchmarks/review_screenshot.py [DEMO_RESULT.nwb] [--out docs/review.png]

Without a result file it runs ``nwb-extract demo`` into a temporary folder first. The page reviews a copy of the
result file, so the file itself is not changed. Needs Chromium (``apt-get install chromium``) and
Playwright (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

from nwb_extract.review.server import open_review


def screenshot(result: Path, out: Path) -> Path:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    copy = Path(tempfile.mkdtemp()) / result.name  # the review is saved into a copy
    shutil.copy(result, copy)
    server = open_review(str(copy), curator="demo", label=f"nwb-extract-demo/{result.name}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(server.url)
            page.wait_for_function("window.reviewTimings.firstPaint !== null")

            def switched(action) -> None:
                before = page.evaluate("window.reviewTimings.switches.length")
                action()
                page.wait_for_function(f"window.reviewTimings.switches.length > {before}")

            switched(lambda: page.click("#table-rows .row[data-i='0']"))
            for key in "aaraa":
                switched(lambda key=key: page.keyboard.press(key))
            page.fill("#filter", "SNR < 13.5")
            page.click("#bulk-reject")
            page.click("#table-head div:nth-child(3)")  # sort by T_maxval (SNR)
            switched(lambda: page.click("#table-rows .row >> nth=2"))
            time.sleep(0.3)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    Image.open(out).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", nargs="?", help="a demo result file (default: run the demo)")
    parser.add_argument("--out", default="docs/review.png")
    args = parser.parse_args()
    if args.result is None:
        from nwb_extract.demo import run_demo

        folder = Path(tempfile.mkdtemp())
        run_demo(out_dir=folder, seed=0, backend="numpy")
        result = folder / "demo_movie_extract.nwb"
    else:
        result = Path(args.result)
    print(screenshot(result, Path(args.out)))


if __name__ == "__main__":
    main()
