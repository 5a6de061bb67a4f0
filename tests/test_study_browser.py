"""The human study in a real browser: a study created with the library into a temporary SQLite database,
`streamlit run app.py` pointed at it (SPADE_STUDY_DB) with a researcher password (SPADE_RESEARCHER_PASSWORD_HASH),
Playwright with the Debian chromium. A participant runs through a study; the researcher logs in; a participant
cannot reach the researcher parts, another participant's tasks or leave the participant view; researcher text is
shown as text; Table 3 fits a 1440-px-wide window."""

from __future__ import annotations

import re

import pytest

from spade.images import bundled_examples, load_image
from spade.preprocessing import Preprocessing
from spade_study.assignment import assign_tasks
from spade_study.create import create_study
from spade_study.design import StudyConfig, StudyImage, VisualizationSettings
from spade_study.password import PASSWORD_ENV, hash_password
from spade_study.storage import StudyStore
from tests.browser_server import CHROMIUM, CHROMIUM_ARGS, streamlit_server
from tests.study_helpers import synthetic_study
from tests.tiny_models import tiny_resnet

PASSWORD = "correct horse battery"
NASTY = "**bold** <script>alert(1)</script> [link](http://x) :red[red] $x^2$ :smile: &amp;"
CODE = "C0DE123"

REVEALING = re.compile(r"dense|spade|sparse|trace|prun", re.IGNORECASE)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    """(database file, study id): three real tasks, no training, made on a tiny model."""
    path = tmp_path_factory.mktemp("study_db") / "studies.sqlite"
    images = [StudyImage(name, load_image(bundled_examples()[name])) for name in ("cat", "coffee", "rocket")]
    config = StudyConfig(title="Patch study", training_tasks=0, completion_code=CODE,
                         visualization=VisualizationSettings(steps=3, augmentations=8))
    study = create_study(tiny_resnet(0, num_classes=3), images, config, preprocessing=Preprocessing(72, 64),
                         cam_layer="layer2", study_id="browser")
    store = StudyStore(f"sqlite:///{path}")
    store.save_study(study)
    # a study whose title is markup, with answers for its Table 3 (one participant left "agree when decided" empty)
    nasty = synthetic_study("nasty", n_real=4, n_training=0, config=StudyConfig(title=NASTY, training_tasks=0))
    store.save_study(nasty)
    for answers in (("A", "B", "A", "undecided"), ("undecided",) * 4, ("B", "A", "A", "A")):
        p = store.register_participant(nasty.id)
        for task, answer in zip(assign_tasks(nasty, p.number, p.seed), answers):
            store.record_answer(nasty.id, p.id, task, answer, 800)
    store.close()
    return path, study.id


@pytest.fixture(scope="module")
def server(study_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("streamlit_study") / "server.log"
    env = {"SPADE_STUDY_DB": str(study_db[0]), "SPADE_DATA_DIR": str(study_db[0].parent),
           PASSWORD_ENV: hash_password(PASSWORD)}
    with streamlit_server(log, env=env) as url:
        yield url


def _log_in(page, password: str = PASSWORD) -> None:
    page.get_by_text("Researcher login").wait_for()
    page.get_by_label("Researcher password").fill(password)
    page.get_by_role("button", name="Log in").click()


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
            _log_in(researcher)
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
            page.get_by_text(CODE, exact=True).wait_for()  # the completion code
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


def _new_page(browser, width: int = 1200):
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(90_000)
    return context, page


def _participant_view(page, title: str) -> None:
    page.get_by_role("heading", name=title).wait_for()
    page.get_by_test_id("stSidebar").wait_for(state="hidden", timeout=10_000)
    assert page.get_by_role("tab").count() == 0, "no researcher tabs"
    assert page.get_by_text("Researcher login").count() == 0


def test_login_failure_success_and_logout(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context, page = _new_page(browser)
        try:
            page.goto(f"{server}/human_study")
            _log_in(page, "not the password")
            page.get_by_text("Wrong password", exact=False).wait_for()
            assert page.get_by_role("tab", name="Studies").count() == 0
            _log_in(page)
            page.get_by_role("tab", name="Studies").wait_for()
            page.get_by_role("button", name="Log out").click()
            page.get_by_text("Researcher login").wait_for()
            assert page.get_by_role("tab", name="Studies").count() == 0
        finally:
            page.screenshot(path=str(tmp_path / "login.png"), full_page=True)
            browser.close()


def test_participant_cannot_leave_the_participant_view_or_act_as_another(server, study_db, tmp_path):
    """A participant's own link works; without ?study= the Human study page asks for the password; another
    participant's bare id or an edited token is refused and shows no task; every page's path with ?study= is
    the participant view without the sidebar."""
    from playwright.sync_api import sync_playwright

    path, study_id = study_db
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context, page = _new_page(browser)
        try:
            page.goto(f"{server}/?study={study_id}")
            page.get_by_role("button", name="Start").click()
            page.locator(".st-key-answer_0_A button").wait_for()
            token = page.url.split("p=", 1)[1].split("&", 1)[0]
            store = StudyStore(f"sqlite:///{path}")
            victim = store.participants(study_id)[-1]
            answers_before = len(store.answers(study_id))
            assert token != victim.id
            page.goto(f"{server}/human_study?p={token}")  # ?study= removed
            page.get_by_text("Researcher login").wait_for()
            assert page.get_by_role("tab").count() == 0 and page.get_by_text("Design a study").count() == 0
            for bad in (victim.id, token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")):
                page.goto(f"{server}/?study={study_id}&p={bad}")
                page.get_by_text("This participant link is not valid", exact=False).wait_for()
                _participant_view(page, "Patch study")
                assert page.locator("[data-testid='stImage']").count() == 0, "none of the victim's tasks"
                assert page.locator(".st-key-answer_0_A").count() == 0
            for other in ("neurons", "trojan_lab", "how_spade_works", "explore"):
                page.goto(f"{server}/{other}?study={study_id}")
                _participant_view(page, "Patch study")
                page.get_by_role("button", name="Start").wait_for()
                assert page.get_by_text("Page not found").count() == 0
            assert len(store.answers(study_id)) == answers_before and store.participant(study_id, victim.id)
            store.close()
        finally:
            page.screenshot(path=str(tmp_path / "isolation.png"), full_page=True)
            browser.close()


def test_markup_in_a_title_is_shown_as_text_and_table3_fits_1440_px(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context, page = _new_page(browser, width=1440)
        try:
            page.goto(f"{server}/?study=nasty")
            heading = page.locator("[data-testid='stMain'] h1").first
            heading.wait_for()
            assert heading.inner_text().strip() == NASTY
            main = page.get_by_test_id("stMain")
            assert main.locator("strong, a[href='http://x'], script").count() == 0
            page.goto(f"{server}/human_study")
            _log_in(page)
            page.get_by_role("tab", name="Studies").click()
            line = page.locator("[data-testid='stMarkdownContainer'] p").filter(has_text="id nasty")
            line.wait_for()
            assert line.inner_text().startswith(NASTY)
            assert line.locator("a, script").count() == 0
            page.locator(".st-key-results_nasty button").click()
            page.get_by_text("Table 3: which patch drives the neuron?").wait_for()
            grid = page.locator("[data-testid='stDataFrame']").first  # Table 3 is the Results tab's first table
            grid.wait_for()
            page.wait_for_timeout(1_000)
            sizes = page.evaluate("""() => {
                const frame = document.querySelector('[data-testid="stDataFrame"]');
                const scroller = frame.querySelector('.dvn-scroller');
                const main = document.querySelector('[data-testid="stMain"]');
                return {frame: frame.getBoundingClientRect().right, main: main.getBoundingClientRect().right,
                        scroll: scroller.scrollWidth, client: scroller.clientWidth,
                        page: document.documentElement.scrollWidth, window: window.innerWidth};
            }""")
            print("Table 3 sizes at 1440 px:", sizes)
            assert sizes["scroll"] <= sizes["client"] + 1, sizes  # no horizontal scrolling inside the table
            assert sizes["frame"] <= sizes["main"] and sizes["page"] <= sizes["window"], sizes
            assert "None" not in page.get_by_test_id("stMain").inner_text()
        finally:
            page.screenshot(path=str(tmp_path / "nasty.png"), full_page=True)
            browser.close()
