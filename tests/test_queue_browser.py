"""The work queue in real browsers: three Chromium sessions on one `streamlit run app.py` with one work slot. A
session that runs while another works is told its place, moves up when a session ahead of it closes its tab, and
gets its result once its turn comes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG = 240_000  # ms: a SPADE run on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("queue")
    with streamlit_server(folder / "server.log", env={"SPADE_WORK_SLOTS": "1", "SPADE_DATA_DIR": str(folder)}) as url:
        yield url


def _explore(browser, server: str, augmentations: int):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(server)
    page.get_by_text("Prediction:", exact=False).first.wait_for()
    count = page.get_by_role("spinbutton", name="Count")
    count.fill(str(augmentations))
    count.press("Tab")
    return context, page


def test_waiting_sessions_see_their_place_and_a_closed_tab_gives_it_up(server, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "waiting.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # the first session's statistics take long enough (many augmentations) for the others to queue
            (_, first), (leaving_context, leaving), (_, last) = (_explore(browser, server, n) for n in (384, 8, 8))
            first.get_by_role("button", name="Run SPADE").click()
            first.get_by_text("augment:", exact=False).first.wait_for()  # its run has the slot and works
            leaving.get_by_role("button", name="Run SPADE").click()
            leaving.get_by_text("Waiting: 1 run ahead of you", exact=False).first.wait_for()
            last.get_by_role("button", name="Run SPADE").click()
            last.get_by_text("Waiting: 2 runs ahead of you", exact=False).first.wait_for()
            last.get_by_text("in the order they were started", exact=False).first.wait_for()
            _screenshot(last, shot)
            leaving_context.close()  # a closed tab gives up its place
            last.get_by_text("Waiting: 1 run ahead of you", exact=False).first.wait_for()
            assert first.get_by_text("SPADE trace ready", exact=False).count() == 0  # moved up before the first ended
            for page in (first, last):
                page.get_by_text("Saliency maps ready", exact=False).first.wait_for(timeout=LONG)
                assert page.get_by_test_id("stException").count() == 0
                assert page.get_by_text("SPADE failed").count() == 0
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000


def _screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
