"""The app in a real browser: `streamlit run app.py` on a free loopback port, driven by Playwright with the
Debian chromium (never Playwright's own browser download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

CAT_CLASSES = ("tiger cat", "tabby", "Egyptian cat")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    yield pg
    context.close()


def _screenshot(pg, path: Path) -> Path:
    pg.screenshot(path=str(path), full_page=True)
    return path


def test_explore_shows_prediction(page, server, tmp_path):
    shot = tmp_path / "explore.png"
    page.goto(server)
    try:
        heading = page.get_by_role("heading", name="Explore")
        heading.wait_for()
        prediction = page.get_by_text("Prediction:", exact=False).first
        prediction.wait_for()
        text = prediction.inner_text()
        assert any(name in text for name in CAT_CLASSES), text
        assert page.get_by_text("SPADE Explorer").first.is_visible()
        assert "SPADE Explorer" in page.title() or "Explore" in page.title(), page.title()
        page.wait_for_timeout(1500)  # let the plotly chart draw before the screenshot
    finally:
        _screenshot(page, shot)
        print(f"screenshot: {shot}")  # shown with the failure report
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {shot}"
    assert len(data) > 20_000, f"suspiciously small screenshot ({len(data)} bytes): {shot}"


@pytest.mark.slow
def test_explore_runs_spade_and_shows_maps(page, server, tmp_path):
    shot = tmp_path / "explore_run.png"
    page.goto(server)
    try:
        page.get_by_text("Prediction:", exact=False).first.wait_for()
        count = page.get_by_role("spinbutton", name="Count")
        count.fill("8")
        count.press("Tab")
        page.get_by_role("button", name="Run SPADE").click()
        page.get_by_text("Trace prediction:", exact=False).first.wait_for(timeout=240_000)
        page.get_by_text("difference (SPADE − dense)").first.wait_for(timeout=240_000)
        page.get_by_role("button", name="Comparison (PNG)").wait_for()  # drawn after the last map row
        dense = page.locator("[data-testid='stMarkdownContainer']", has_text="Dense prediction:").first
        assert any(name in dense.inner_text() for name in CAT_CLASSES), dense.inner_text()
        # at least one row of image | dense | SPADE | difference, drawn as images
        for caption in ("dense", "SPADE"):
            assert page.get_by_text(caption, exact=True).count() >= 1, caption
        images = page.locator("[data-testid='stImage'] img")
        assert images.count() >= 4
        page.wait_for_timeout(1000)
    finally:
        _screenshot(page, shot)
        print(f"screenshot: {shot}")
    assert shot.stat().st_size > 50_000


@pytest.mark.parametrize("title", ["Neurons", "Trojan lab", "Human study", "How SPADE works", "Explore"])
def test_every_page_opens_from_the_navigation(page, server, tmp_path, title):
    shot = tmp_path / f"{title.replace(' ', '_')}.png"
    page.goto(server)
    try:
        page.get_by_text("Prediction:", exact=False).first.wait_for()
        page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
        page.get_by_role("heading", name=title).first.wait_for()
        # the sidebar choices are drawn on every page
        page.get_by_text("Presentation mode").first.wait_for(state="visible")
        page.wait_for_timeout(500)
        assert page.get_by_test_id("stException").count() == 0
    finally:
        _screenshot(page, shot)
        print(f"screenshot: {shot}")


@pytest.mark.slow
def test_trojan_lab_flips_prediction_and_shows_maps(page, server, tmp_path):
    shot = tmp_path / "trojan_lab_run.png"
    page.goto(server)
    try:
        page.get_by_text("Prediction:", exact=False).first.wait_for()
        page.get_by_test_id("stSidebarNav").get_by_text("Trojan lab", exact=True).click()
        page.get_by_role("heading", name="Trojan lab").first.wait_for()
        count = page.get_by_role("spinbutton", name="Augmentations")
        count.fill("8")
        count.press("Tab")
        page.get_by_role("button", name="Stamp and run SPADE").click()
        verdict = page.get_by_text("The trigger flipped the prediction", exact=False).first
        verdict.wait_for(timeout=240_000)
        assert "goose" in verdict.inner_text(), verdict.inner_text()
        page.get_by_text("Trace prediction:", exact=False).first.wait_for(timeout=240_000)
        page.get_by_text("and their mean", exact=False).first.wait_for(timeout=240_000)  # drawn after the last map row
        page.get_by_text("What the model sees", exact=False).first.wait_for()
        for caption in ("stamped image", "dense", "SPADE"):
            assert page.get_by_text(caption, exact=True).count() >= 1, caption
        # the model's view + per method: stamped image | dense | SPADE (two default methods)
        assert page.locator("[data-testid='stImage'] img").count() >= 7
        assert page.get_by_test_id("stException").count() == 0
        page.get_by_role("heading", name="Benchmark (shipped with the repo)").wait_for()
        page.wait_for_timeout(1000)
    finally:
        _screenshot(page, shot)
        print(f"screenshot: {shot}")
    assert shot.stat().st_size > 50_000


def test_presentation_mode_is_projector_ready_at_1280x720(browser, server, tmp_path):
    """Presentation mode at a projector's 1280x720: the sidebar collapses (and can be opened again), Run is shown
    without opening any settings (the other settings hidden until asked for), the text is enlarged."""
    from tools.browser.walk import COLLAPSED_JS, sidebar_collapsed

    shot = tmp_path / "presentation.png"
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(server)
    try:
        page.get_by_text("Prediction:", exact=False).first.wait_for()
        assert not sidebar_collapsed(page)
        paragraph = "getComputedStyle(document.querySelector('[data-testid=stMainBlockContainer] p')).fontSize"
        normal = float(page.evaluate(paragraph).removesuffix("px"))
        page.get_by_text("Presentation mode").first.click()
        page.wait_for_function(COLLAPSED_JS)
        page.get_by_text("Show the settings").wait_for()
        page.get_by_role("spinbutton", name="Count").wait_for(state="hidden")  # the rest of the form is hidden
        # waits, not reads: under load the button and the enlarged fonts can arrive a moment after the sidebar
        # collapses and the form's other fields are hidden
        page.get_by_role("button", name="Run SPADE").wait_for(state="visible")
        page.wait_for_function(f"parseFloat({paragraph}) >= {1.3 * normal}")
        title = "getComputedStyle(document.querySelector('[data-testid=stMainBlockContainer] h1')).fontSize"
        page.wait_for_function(f"{title} === '48px'")
        page.wait_for_timeout(1000)
        _screenshot(page, shot)
        page.get_by_text("Show the settings").click()
        page.get_by_role("spinbutton", name="Count").wait_for(state="visible")
        # the sidebar opens again, to switch presentation mode off
        page.get_by_test_id("stExpandSidebarButton").click()
        page.get_by_text("Presentation mode").first.wait_for(state="visible")
        assert page.get_by_test_id("stException").count() == 0
    finally:
        print(f"screenshot: {shot}")
        context.close()
