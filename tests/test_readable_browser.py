"""Labels on the Explore and Trojan lab forms are not cut off ("Grace hop...", a truncated solver menu) in a real
browser at the walk's small window (1280x720): only a browser lays text out, so only a browser can tell."""

from __future__ import annotations

import pytest

from tests.browser_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

pytestmark = pytest.mark.browser

# Boxes in the main area whose text is cut off with an ellipsis (their content is wider than the box); with the
# gallery in 8 columns this finds exactly the "Grace hopper" button, as the issue saw it.
CUT_OFF = """() => [...document.querySelectorAll('[data-testid=stMain] *')]
    .filter(e => e.textContent.trim() && getComputedStyle(e).textOverflow === 'ellipsis'
                 && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.textContent.trim())"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with streamlit_server(tmp_path_factory.mktemp("streamlit") / "server.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
        pg.set_default_timeout(120_000)
        pg.goto(url)
        pg.get_by_text("Prediction:", exact=False).first.wait_for()
        yield pg
        browser.close()


def test_explore_form_gallery_and_advanced_settings_are_not_cut_off(page):
    page.get_by_text("Example gallery").first.click()
    page.get_by_role("button", name="Grace hopper").wait_for()
    page.get_by_text("Advanced: solver").first.click()
    page.get_by_text("Share of removed weights counts").first.wait_for()
    page.wait_for_timeout(1000)
    assert page.evaluate(CUT_OFF) == []
    for mode, label in (("Built-in profile", "Built-in profile"), ("Profile JSON file", "Profile JSON file")):
        page.get_by_text(mode, exact=True).first.click()
        page.get_by_text(label, exact=True).last.wait_for()
        page.wait_for_timeout(1000)
        assert page.evaluate(CUT_OFF) == [], mode


def test_trojan_lab_form_is_not_cut_off(page):
    page.get_by_test_id("stSidebarNav").get_by_text("Trojan lab", exact=True).click()
    page.get_by_role("heading", name="Trojan lab").first.wait_for()
    page.get_by_text("Position sliders").first.click()
    page.get_by_text("Centre x").first.wait_for()
    page.wait_for_timeout(1000)
    assert page.evaluate(CUT_OFF) == []


def test_study_designer_conditions_are_not_cut_off(page):
    """Both conditions' names ("Dense visualization", "SPADE visualization") lie whole inside the designer's
    multiselect (a chip that does not fit is clipped by the box, without an ellipsis)."""
    page.get_by_test_id("stSidebarNav").get_by_text("Human study", exact=True).click()
    page.get_by_text("Conditions", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    chips = page.evaluate("""() => [...document.querySelectorAll('[data-testid=stMultiSelect] span')]
        .filter(e => e.children.length === 0 && e.textContent.trim().endsWith('visualization'))
        .map(e => {
            const box = e.closest('[data-testid=stMultiSelect]').getBoundingClientRect();
            const chip = e.getBoundingClientRect();
            return [e.textContent.trim(), chip.left >= box.left && chip.right <= box.right - 40];
        })""")
    assert sorted(text for text, _ in chips) == ["Dense visualization", "SPADE visualization"], chips
    assert all(inside for _, inside in chips), chips
    assert page.evaluate(CUT_OFF) == []
