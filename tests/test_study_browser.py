"""One participant runs through a study in a real browser: a study created with the library into a temporary
SQLite database, `streamlit run app.py` pointed at it (SPADE_STUDY_DB), Playwright with the Debian chromium."""

from __future__ import annotations

import re

import pytest

from spade.images import bundled_examples, load_image
from spade.preprocessing import Preprocessing
from spade_study.create import create_study
from spade_study.design import StudyConfig, StudyImage, VisualizationSettings
from spade_study.storage import StudyStore
from tests.browser_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server
from tests.tiny_models import tiny_resnet

REVEALING = re.compile(r"dense|spade|sparse|trace|prun", re.IGNORECASE)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    """(database file, study id): three real tasks, no training, made on a tiny model."""
    path = tmp_path_factory.mktemp("study_db") / "studies.sqlite"
    images = [StudyImage(name, load_image(bundled_examples()[name])) for name in ("cat", "coffee", "rocket")]
    config = StudyConfig(title="Patch study", training_tasks=0,
                         visualization=VisualizationSettings(steps=3, augmentations=8))
    study = create_study(tiny_resnet(0, num_classes=3), images, config, preprocessing=Preprocessing(72, 64),
                         cam_layer="layer2", study_id="browser")
    store = StudyStore(f"sqlite:///{path}")
    store.save_study(study)
    store.close()
    return path, study.id


@pytest.fixture(scope="module")
def server(study_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("streamlit_study") / "server.log"
    with streamlit_server(log, env={"SPADE_STUDY_DB": str(study_db[0])}) as url:
        yield url


def _check_blinded(page) -> None:
    main = page.get_by_test_id("stMain").inner_text()
    assert not REVEALING.search(main), main
    page.get_by_test_id("stSidebar").wait_for(state="hidden", timeout=10_000)


def _answer(page, n: int, label: str) -> None:
    """Wait until task n is drawn, then answer it. The buttons' keys carry the task index (and nothing else), so
    this never clicks a stale button of the previous task while Streamlit is still redrawing the page."""
    from playwright.sync_api import expect

    page.get_by_text(f"Task {n} of 3").first.wait_for()
    answer = {"Patch A": "A", "Patch B": "B", "Can't decide": "undecided"}[label]
    button = page.locator(f".st-key-answer_{n - 1}_{answer} button")
    button.wait_for()
    _check_blinded(page)
    images = page.locator("[data-testid='stImage'] img")
    expect(images).to_have_count(4, timeout=30_000)  # photo, picture, patches A and B
    button.click()


def test_share_link_opens_the_participant_view(server, study_db, tmp_path):
    """The link the Studies tab shows, opened as it is in a fresh browser context, is the participant view alone,
    without Streamlit's "Page not found" dialog; so is the same link on another page's path (and the older links
    to /human_study)."""
    from playwright.sync_api import sync_playwright

    _, study_id = study_db
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            researcher = browser.new_page(viewport={"width": 1200, "height": 1400})
            researcher.set_default_timeout(90_000)
            researcher.goto(f"{server}/human_study")
            researcher.get_by_role("tab", name="Studies").click()
            shown = researcher.locator("[data-testid='stCode'] code").filter(has_text=f"study={study_id}")
            shown.first.wait_for()
            link = shown.first.inner_text().strip()
            assert link == f"{server}/?study={study_id}"
            for url in (link, f"{server}/explore?study={study_id}", f"{server}/human_study?study={study_id}"):
                context = browser.new_context(viewport={"width": 1200, "height": 1400})
                page = context.new_page()
                page.set_default_timeout(90_000)
                try:
                    page.goto(url)
                    page.get_by_role("heading", name="Patch study").wait_for()
                    page.get_by_role("button", name="Start").wait_for()
                    _check_blinded(page)
                    page.wait_for_timeout(1_000)  # the dialog, if any, comes with the first run's messages
                    assert page.get_by_text("Page not found").count() == 0, url
                    assert page.get_by_role("dialog").count() == 0, url
                finally:
                    page.screenshot(path=str(tmp_path / f"link_{len(url)}.png"), full_page=True)
                    context.close()
        finally:
            browser.close()


def test_participant_answers_three_tasks(server, study_db, tmp_path):
    from playwright.sync_api import sync_playwright

    path, study_id = study_db
    shot = tmp_path / "study.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        page.set_default_timeout(90_000)
        try:
            page.goto(f"{server}/human_study?study={study_id}")
            page.get_by_role("heading", name="Patch study").wait_for()
            _check_blinded(page)
            page.get_by_role("button", name="Start").click()
            _answer(page, 1, "Patch A")
            page.get_by_text("Task 2 of 3").first.wait_for()
            # a reload keeps the participant (the id is in the URL) and resumes at the second task
            assert "p=" in page.url
            page.reload()
            _answer(page, 2, "Can't decide")
            _answer(page, 3, "Patch B")
            page.get_by_text("Thank you", exact=False).first.wait_for()
            _check_blinded(page)
        finally:
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            browser.close()
    store = StudyStore(f"sqlite:///{path}")
    answers = store.answers(study_id)
    store.close()
    assert [(a.participant_number, a.task_index, a.answer) for a in answers] == [
        (0, 0, "A"), (0, 1, "undecided"), (0, 2, "B")]
    assert all(a.response_ms > 0 for a in answers)
