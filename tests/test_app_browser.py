"""The explorer in a real browser: ``nas app`` on a free local port, Debian's headless Chromium takes a screenshot,
and the picture must show the charts (the Pareto front's red markers, many colours), not a blank or error page.

Chromium missing: a failure when ``TINYNAS_REQUIRE_BROWSER=1`` (CI sets it, after ``apt-get install chromium``),
else a skip with the reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas.app import screenshot
from tests.test_app import shared_run

REQUIRE = os.environ.get("TINYNAS_REQUIRE_BROWSER") == "1"


def _chromium() -> str:
    path = screenshot.find_chromium()
    if path:
        return path
    why = ("no Chromium on this machine (looked for $TINYNAS_CHROMIUM, " + ", ".join(screenshot.CHROMIUM_NAMES)
           + "): install Debian's with `apt-get install -y chromium`")
    if REQUIRE:
        pytest.fail(f"TINYNAS_REQUIRE_BROWSER=1 but {why}", pytrace=False)
    pytest.skip(f"{why}; set TINYNAS_REQUIRE_BROWSER=1 to make this a failure")


def test_explorer_renders_in_headless_chromium(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    chromium = _chromium()
    run = shared_run(tmp_path_factory)
    out = tmp_path / "explorer.png"
    with screenshot.serve(str(run), log=tmp_path / "app.log") as url:
        pic = screenshot.capture(url, out, chromium=chromium, size=(1400, 1500), deadline_s=150, settle=0)
    assert pic.charts_drawn, pic
    assert pic.front_pixels >= 150, f"the Pareto front's red markers are missing from the picture: {pic}"
    assert pic.colours >= 500, f"too few colours for a page with charts: {pic}"
    log = (tmp_path / "app.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_whole_page_and_a_click_through_devtools(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The same page driven through Chromium's DevTools protocol, waiting in real time: all six charts drawn (the
    trial page's spec stack and layer memory too), no error element; then a click on a point of the
    memory-vs-metric chart opens that trial below (Plotly click -> Streamlit selection -> trial picker)."""
    chromium = _chromium()
    run = shared_run(tmp_path_factory)
    out = tmp_path / "explorer-full.png"
    with screenshot.serve(str(run), log=tmp_path / "app.log") as url:
        with screenshot.DevTools(chromium, (1400, 2600)) as dt:
            dt.navigate(url)
            state = dt.wait_ready(6, timeout_s=150)
            dt.screenshot(out)
            number, picked = screenshot.click_a_point(dt)
    assert state["n"] >= 6 and state["errors"] == 0, state
    pic = screenshot.inspect(out)
    assert pic.charts_drawn, pic
    assert picked.startswith(f"trial {number} "), picked


def test_picture_check_tells_a_blank_page(tmp_path: Path) -> None:
    """The check itself: a blank white picture and a picture with a little red are not 'charts drawn'."""
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (800, 600), "white").save(blank)
    assert not screenshot.inspect(blank).charts_drawn
    dots = tmp_path / "dots.png"
    im = Image.new("RGB", (800, 600), "white")
    for x in range(0, 50):
        im.putpixel((x, 10), screenshot.FRONT_RGB)
    im.save(dots)
    pic = screenshot.inspect(dots)
    assert pic.front_pixels == 50 and not pic.charts_drawn
