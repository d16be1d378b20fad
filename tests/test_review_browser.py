"""The review page in a real headless browser: Debian's Chromium driven by Playwright (``executable_path``; no
browser download). The page is opened on result files written by our writer; the test clicks, types and saves like
a person, then reads the file back with pynwb and roiextractors. It also measures the page on 1000 cells x 100,000
frames: the first paint and the cell switches, as the page itself times them (``window.reviewTimings``).

A missing browser fails the tests when ``CI`` is set (``.ci/run`` installs it) and skips them otherwise.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from test_review import RATE, served, synthetic_result, write_review_file

FIRST_PAINT_MS = 2000
SWITCH_MS = 200


def _chromium() -> str | None:
    return os.environ.get("NWB_EXTRACT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = ("the playwright package (pip install -e '.[test]')" if sync_playwright is None else
               "Chromium (apt-get install chromium)" if _chromium() is None else None)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests need {missing}; .ci/run installs it")
        pytest.skip(f"the browser tests need {missing}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    yield page
    page.close()


def _open(page, server) -> float:
    """Load the page; returns its first paint in ms (navigation start to every contour drawn)."""
    page.goto(server.url)
    page.wait_for_function("window.reviewTimings.firstPaint !== null", timeout=30000)
    return page.evaluate("window.reviewTimings.firstPaint")


def _pixels(page, canvas: str, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    """Pixels of a canvas within ``tolerance`` of a colour."""
    return page.evaluate("""([id, rgb, tol]) => {
        const c = document.getElementById(id);
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - rgb[0]) <= tol && Math.abs(d[i+1] - rgb[1]) <= tol && Math.abs(d[i+2] - rgb[2]) <= tol) n++;
        return n; }""", [canvas, list(rgb), tolerance])


def _switches(page) -> int:
    return page.evaluate("window.reviewTimings.switches.length")


def _wait_switch(page, before: int) -> None:
    page.wait_for_function(f"window.reviewTimings.switches.length > {before}", timeout=30000)


def _status(page) -> list[int]:
    return page.evaluate("Array.from(window.reviewState.status)")


def _selected(page) -> dict:
    return page.evaluate("window.reviewState.selected")


def _click_cell(page, row: float, col: float) -> None:
    scale = page.evaluate("window.reviewState.scale")
    before = _switches(page)
    page.click("#overlay", position={"x": (col + 0.5) * scale, "y": (row + 0.5) * scale})
    _wait_switch(page, before)


def _key(page, key: str, *, switch: bool = True) -> None:
    before = _switches(page)
    page.keyboard.press(key)
    if switch:
        _wait_switch(page, before)


YELLOW, GREEN, RED, PURPLE, BLUE, GREY = (255, 210, 31), (46, 230, 107), (255, 64, 64), (176, 112, 255), \
    (78, 163, 255), (184, 184, 184)


def test_review_in_the_browser_click_keys_filter_save_and_read_back(page, tmp_path):
    from pynwb import NWBHDF5IO
    from roiextractors import NwbSegmentationExtractor

    path = write_review_file(tmp_path / "result.nwb")
    result = synthetic_result()
    centres = result.centroids()
    with served(path, curator="tester") as server:
        _open(page, server)
        assert page.evaluate("window.reviewTimings.contoursDrawn") == 12
        assert _pixels(page, "image", YELLOW, 20) > 12 * 8  # every contour drawn in the colour of "unreviewed"
        assert _pixels(page, "image", PURPLE, 20) == 0     # eliminated candidates hidden by default

        _click_cell(page, *centres[4])  # a click on a cell's contour selects it
        assert _selected(page) == {"elim": False, "i": 4}
        assert page.inner_text("#cell-head").startswith("cell 4")
        assert "T_maxval (SNR) 5" in page.inner_text("#cell-info")
        trace = page.evaluate("window.reviewState.trace")
        assert sorted(trace["kinds"]) == ["baseline_adjusted", "nonneg", "raw"]
        np.testing.assert_allclose(page.evaluate("window.reviewState.view"), [0, 599 / RATE])
        assert _pixels(page, "trace", BLUE, 25) > 200 and _pixels(page, "trace", GREY, 10) > 200
        page.uncheck('#kinds input[data-kind="raw"]')  # the kinds toggle
        assert _pixels(page, "trace", GREY, 10) < 20
        page.check('#kinds input[data-kind="raw"]')

        box = page.locator("#trace").bounding_box()  # zoom in with the wheel: a narrower window is fetched
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -600)
        page.wait_for_function("window.reviewState.trace.frames[1] - window.reviewState.trace.frames[0] < 400")
        t0, t1 = page.evaluate("window.reviewState.view")
        assert 0 < t0 < t1 < 599 / RATE

        _key(page, "a")  # accept 4, move on to 5
        _key(page, "r")  # reject 5, move on to 6
        assert _status(page)[4:7] == [1, 2, 0] and _selected(page)["i"] == 6
        _key(page, "u")  # undo the rejection: 5 is unreviewed and selected again
        assert _status(page)[5] == 0 and _selected(page)["i"] == 5
        _key(page, "r")
        _key(page, "k")  # back to 5
        assert _selected(page)["i"] == 5 and _status(page)[4:7] == [1, 2, 0]
        assert _pixels(page, "image", GREEN, 20) > 8 and _pixels(page, "image", RED, 20) > 8

        page.fill("#filter", "SNR < 4")  # T_maxval is 1..12: cells 0, 1, 2
        assert page.inner_text("#filter-state") == "3 of 12 cells match"
        page.click("#bulk-reject")
        assert _status(page)[:3] == [2, 2, 2]
        page.keyboard.press("Escape")
        _key(page, "u", switch=False)  # a bulk change is undone as one
        assert _status(page)[:3] == [0, 0, 0]
        page.click("#bulk-accept")
        page.fill("#filter", "S_area_1 > 1e9")
        assert page.inner_text("#filter-state") == "0 of 12 cells match"
        page.fill("#filter", "bogus < 3")
        assert "no metric" in page.inner_text("#filter-state")
        page.fill("#filter", "")

        page.check("#show-eliminated")
        assert page.evaluate("window.reviewTimings.contoursDrawn") == 15 and _pixels(page, "image", PURPLE, 20) > 0
        candidate = result.eliminated.footprints[1]
        _click_cell(page, *np.argwhere(candidate == candidate.max()).mean(axis=0))
        assert page.inner_text("#cell-head").startswith("eliminated candidate 1")
        assert "removed by rule S_corruption" in page.inner_text("#cell-info")

        page.keyboard.press("Control+s")
        page.wait_for_function("window.reviewTimings.saved !== undefined", timeout=60000)
        assert "saved to" in page.inner_text("#save-state")
        assert not page.errors, page.errors

    accepted = np.isin(np.arange(12), [0, 1, 2, 4])
    rejected = np.isin(np.arange(12), [5])
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        plane = nwbfile.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        np.testing.assert_array_equal(plane["Accepted"].data[:], accepted)
        np.testing.assert_array_equal(plane["Rejected"].data[:], rejected)
        assert nwbfile.processing["ophys"]["ExtractRunInfo"].curated_by == "tester"
    extractor = NwbSegmentationExtractor(path)
    np.testing.assert_array_equal(extractor.get_property("accepted", extractor.get_roi_ids()), accepted)
    np.testing.assert_array_equal(extractor.get_property("rejected", extractor.get_roi_ids()), rejected)
    del extractor


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """1000 cells x 100,000 frames (three trace kinds) on 256 x 256, written by our writer. The traces are
    sparse exponential events repeated every 2000 frames, so they compress well and the file is quick to write."""
    from scipy.signal import lfilter

    from nwb_extract.config import ExtractConfig
    from nwb_extract.io.nwb_write import write_result
    from nwb_extract.result import ExtractResult

    n_cells, n_frames, side, period = 1000, 100_000, 256, 2000
    rng = np.random.default_rng(7)
    offsets = np.arange(-6, 7)
    blob = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    blob[blob < 0.05] = 0
    footprints = np.zeros((n_cells, side, side), dtype=np.float32)
    for k, (row, col) in enumerate(rng.integers(6, side - 7, size=(n_cells, 2))):
        footprints[k, row - 6:row + 7, col - 6:col + 7] = blob
    events = (rng.random((period, n_cells)) < 0.001) * rng.uniform(0.5, 2.0, (period, n_cells))
    block = np.round(lfilter([1.0], [1.0, -0.8], events, axis=0) * 64).astype(np.float32) / 64
    base = np.tile(block, (n_frames // period, 1))
    image = rng.random((side, side))
    big = ExtractResult(footprints=footprints, primary_trace="baseline_adjusted",
                        traces={"baseline_adjusted": base, "nonneg": base * np.float32(0.5),
                                "raw": base - np.float32(0.1)},
                        summary_image=image, max_image=image, F_per_pixel=image,
                        config=ExtractConfig(backend="numpy").resolved(),
                        roi_metrics={"T_maxval": rng.uniform(1, 30, n_cells), "T_corruption": rng.random(n_cells)})
    path, _ = write_result(big, tmp_path_factory.mktemp("big") / "big.nwb", rate=30.0)
    return path


def test_1000_cells_of_100000_frames_first_paint_and_cell_switch(page, big_file):
    started = time.perf_counter()
    with served(big_file) as server:
        startup = time.perf_counter() - started
        first_paint = _open(page, server)
        assert page.evaluate("window.reviewTimings.contoursDrawn") == 1000
        for i in (3, 250, 500, 731, 998, 120):  # table rows far apart: nothing of them is cached yet
            page.evaluate(f"document.getElementById('table-scroll').scrollTop = {i} * 20")
            page.wait_for_selector(f"#table-rows .row[data-i='{i}']")
            before = _switches(page)
            page.click(f"#table-rows .row[data-i='{i}']")
            _wait_switch(page, before)
            assert _selected(page)["i"] == i and page.evaluate("window.reviewState.trace.frames") == [0, 100_000]
        for _ in range(3):  # the next cell, from the keyboard (read ahead while the previous one was shown)
            time.sleep(0.3)
            _key(page, "j")
        switches = page.evaluate("window.reviewTimings.switches")
        assert not page.errors, page.errors
    clicks, keys = switches[:6], switches[6:]
    print(f"\n1000 cells x 100000 frames: server start {startup:.2f} s, first paint {first_paint:.0f} ms, cell switch "
          f"by click {', '.join(f'{t:.0f}' for t in clicks)} ms, by key {', '.join(f'{t:.0f}' for t in keys)} ms")
    assert first_paint < FIRST_PAINT_MS
    assert np.median(clicks) < SWITCH_MS and max(keys) < SWITCH_MS
    assert max(clicks) < 2 * SWITCH_MS, clicks  # a loaded machine's worst case
