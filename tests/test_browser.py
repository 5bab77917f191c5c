"""The explorer used the way a person uses it: in headless Chromium, in JupyterLab and as
a Voila page, with the keyboard, the mouse and a click; screenshots are kept as artefacts.

Skips when no Chromium or Playwright is found, except where DUAT_REQUIRE_BROWSER=1 (CI),
where that is a failure. Servers listen on 127.0.0.1 only and every other request of the
page is aborted.
"""
import os
import re
from pathlib import Path

import pytest

from browser_harness import chromium_page, drag_slider, find_chromium, lab_run_all, notebook_server

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "09_explorer.ipynb"
ARTIFACTS = Path(os.environ.get("DUAT_ARTIFACTS", ROOT / "test-artifacts"))
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium():
    required = os.environ.get("DUAT_REQUIRE_BROWSER") == "1"
    reasons = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reasons.append("the playwright package is not installed (pip install -e '.[test]')")
    exe = find_chromium()
    if exe is None:
        reasons.append("no Chromium found (Debian: apt-get install chromium; or set DUAT_CHROMIUM)")
    if reasons:
        (pytest.fail if required else pytest.skip)("; ".join(reasons))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return exe


def _drive_explorer(page, name: str) -> None:
    from playwright.sync_api import expect

    table = page.locator(".duat-table").first
    message = page.locator(".widget-html:has-text('Para-Former')").first
    width = page.locator(".widget-slider:has-text('width n')").first
    depth = page.locator(".widget-slider:has-text('depth m')").first
    expect(table).to_contain_text("Para-Former-1-4", timeout=60_000)
    before = table.inner_text()

    # keyboard: focus the width handle and press the right arrow twice (4 -> 6)
    width.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(table).to_contain_text("Para-Former-1-6", timeout=30_000)
    expect(table).to_contain_text("ViT-6 (serial)")

    # mouse: drag the depth handle about halfway along its track (1..6)
    drag_slider(page, depth, 0.5)
    expect(table).not_to_contain_text("Para-Former-1-6", timeout=30_000)
    m = int(re.search(r"Para-Former-(\d)-6", table.inner_text()).group(1))
    assert 2 <= m <= 5, f"dragging to the middle should give a depth in 2..5, got {m}"

    # click Measure: the new pair is timed and its latency appears in message and table
    page.locator("button:has-text('Measure')").first.click()
    expect(message).to_contain_text(re.compile(rf"Para-Former-{m}-6: [0-9.]+ ms"), timeout=120_000)
    after = table.inner_text()
    assert after != before
    assert re.search(rf"Para-Former-{m}-6\s+{6 * m}\s", after), after
    page.screenshot(path=str(ARTIFACTS / f"explorer-{name}.png"), full_page=True)


def test_explorer_in_jupyterlab(chromium, tmp_path):
    from playwright.sync_api import expect

    with notebook_server("lab", NOTEBOOK, tmp_path) as (url, _), chromium_page(chromium) as page:
        page.goto(url)
        lab_run_all(page)
        expect(page.locator(".jp-OutputArea-output:has-text('training: finished')")).to_be_visible(
            timeout=300_000)
        _drive_explorer(page, "jupyterlab")


def test_explorer_as_voila_page(chromium, tmp_path):
    with notebook_server("voila", NOTEBOOK, tmp_path) as (url, _), chromium_page(chromium) as page:
        page.goto(url, timeout=300_000)
        page.wait_for_selector(".widget-slider", timeout=300_000)
        assert page.locator("text=import sys").count() == 0   # a page of results, not code
        _drive_explorer(page, "voila")
