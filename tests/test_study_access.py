"""Who may see what in the human study: the researcher password (argon2), signed participant links, the
participant view on every page, Prolific ids and completion codes, and researcher text shown as text.

The library parts are tested directly; the page with AppTest (the same cases in Chromium are in
tests/test_study_access_browser.py)."""

from __future__ import annotations

import csv
import io
import re
import stat
import string
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from spade.errors import ConfigError
from spade_app.study import markdown_text
from spade_study.archive import read_archive
from spade_study.assignment import PlatformIds, assign_tasks
from spade_study.design import StudyConfig
from spade_study.links import InvalidParticipantLink, ParticipantTokens, platform_ids, secret_path, study_secret
from spade_study.password import PASSWORD_ENV, check_hash, configured_hash, hash_password, verify_password
from spade_study.results import answers_csv
from spade_study.storage import StudyStore
from tests.app_testing import TIMEOUT
from tests.study_helpers import click, synthetic_study

PAGE = "pages/human_study.py"
PASSWORD = "correct horse battery"
NASTY = "**bold** <script>alert(1)</script> [link](http://x) :red[red] $x^2$ `code` # not a heading"
pytestmark = pytest.mark.usefixtures("app_navigation")


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def db(tmp_path, monkeypatch) -> StudyStore:
    """The app's database and link secret in a temporary folder; no researcher password unless a test sets one."""
    path = tmp_path / "studies.sqlite"
    monkeypatch.setenv("SPADE_STUDY_DB", str(path))
    monkeypatch.setenv("SPADE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SPADE_STUDY_SECRET", raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    store = StudyStore(f"sqlite:///{path}")
    yield store
    store.close()


@pytest.fixture
def locked(db, monkeypatch, password_hash) -> StudyStore:
    """As ``db``, with the researcher password set."""
    monkeypatch.setenv(PASSWORD_ENV, password_hash)
    return db


def _app(query: dict[str, str] | None = None, page: str = PAGE) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.session_state["device"] = "cpu"
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def _researcher_parts(at: AppTest) -> list[str]:
    """What of the researcher parts this run drew: the section tabs, the designer's or the list's widgets."""
    parts = [t.label for t in at.tabs]
    parts += [w.key for w in [*at.text_input, *at.multiselect, *at.selectbox] if (w.key or "").startswith("sd_")]
    return parts + [b.label for b in at.get("download_button")]


def _shown(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def _answer_all(at: AppTest, n_tasks: int) -> None:
    for _ in range(n_tasks):
        click(at, "Patch A")
        if "Continue" in _labels(at):
            click(at, "Continue")


# ----------------------------------------------------------------------------------------------- library
def test_password_hash_round_trip_and_command():
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert hashed != hash_password(PASSWORD), "salted"
    assert verify_password(hashed, PASSWORD) and not verify_password(hashed, PASSWORD + " ")
    assert not verify_password(hashed, "")
    with pytest.raises(ConfigError, match="at least 8"):
        hash_password("short")
    for setting in (PASSWORD, "$argon2id$v=19$broken", "$2b$12$abcdefghijklmnopqrstuv"):
        with pytest.raises(ConfigError, match="not an argon2 hash"):
            check_hash(setting)
    assert configured_hash({}) is None and configured_hash({PASSWORD_ENV: f" {hashed}\n"}) == hashed
    out = subprocess.run([sys.executable, "-m", "spade_study.password", "--stdin"], input=PASSWORD + "\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert verify_password(out.stdout.strip(), PASSWORD) and PASSWORD_ENV in out.stderr
    short = subprocess.run([sys.executable, "-m", "spade_study.password", "--stdin"], input="abc\n",
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 1 and "at least 8" in short.stderr and not short.stdout


def test_participant_tokens_refuse_edits_other_studies_and_bare_ids():
    tokens = ParticipantTokens("s" * 40)
    token = tokens.token("study1", "participant-7")
    assert tokens.participant_id("study1", token) == "participant-7"
    assert "participant-7" not in token or len(token) > 30
    with pytest.raises(InvalidParticipantLink, match="another study"):
        tokens.participant_id("study2", token)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (tampered, "participant-7", "", token + "x", ParticipantTokens("t" * 40).token("study1", "x")):
        with pytest.raises(InvalidParticipantLink, match="not valid"):
            tokens.participant_id("study1", bad)


def test_secret_is_generated_once_into_the_data_folder(tmp_path):
    env = {"SPADE_DATA_DIR": str(tmp_path / "data")}
    first = study_secret(env)
    path = secret_path(env)
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32 and study_secret(env) == first, "kept, not regenerated"
    assert study_secret({**env, "SPADE_STUDY_SECRET": "e" * 32}) == "e" * 32
    with pytest.raises(ConfigError, match="at least 32"):
        study_secret({**env, "SPADE_STUDY_SECRET": "short"})
    path.write_text("tiny")
    with pytest.raises(ConfigError, match="delete the file"):
        study_secret(env)


def test_platform_ids_from_the_link():
    assert platform_ids({}) == PlatformIds()
    ids = platform_ids({"PROLIFIC_PID": "5f1a2b3c4d5e6f7a8b9c0d1e", "STUDY_ID": "abc", "SESSION_ID": "s-1",
                        "other": "x"})
    assert ids == PlatformIds("5f1a2b3c4d5e6f7a8b9c0d1e", "abc", "s-1")
    for bad in ("{{%PROLIFIC_PID%}}", "a b", "x" * 129, "<script>"):
        with pytest.raises(ConfigError, match="PROLIFIC_PID is not a valid id"):
            platform_ids({"PROLIFIC_PID": bad})


def test_markdown_text_escapes_every_markdown_character():
    escaped = markdown_text(NASTY)
    assert _shown(escaped) == NASTY
    for char in "*<>[]()`#$:":
        assert re.search(rf"(?<!\\){re.escape(char)}", escaped) is None, char
    assert markdown_text("plain words 42") == "plain words 42"
    assert all(markdown_text(c) in (c, "\\" + c) for c in string.punctuation)


def test_old_database_gets_the_platform_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    store = StudyStore(url)
    study = synthetic_study("old", n_real=2, n_training=0)
    store.save_study(study)
    before = store.register_participant(study.id)
    with store.engine.begin() as conn:  # the participants table of the version before platform ids
        for column in ("platform_participant_id", "platform_study_id", "platform_session_id"):
            conn.exec_driver_sql(f"ALTER TABLE participants DROP COLUMN {column}")
    store.close()
    store = StudyStore(url)
    assert store.participant(study.id, before.id).platform == PlatformIds()
    after = store.register_participant(study.id, PlatformIds("pid", "sid", "ses"))
    assert store.participant(study.id, after.id).platform == PlatformIds("pid", "sid", "ses")
    store.close()


# ----------------------------------------------------------------------------------------------- researcher
def test_researcher_pages_need_the_password(locked):
    locked.save_study(synthetic_study("secret", n_real=2, n_training=0))
    at = _app()
    assert not _researcher_parts(at), _researcher_parts(at)
    assert any(h.value == "Researcher login" for h in at.subheader)
    at.text_input(key="study_password").set_value("wrong password")
    at.button[0].click().run()  # the form's "Log in"
    assert [e.value for e in at.error] == ["Wrong password: the researcher pages stay locked. Ask whoever runs this "
                                           "server for the password."]
    assert not _researcher_parts(at)
    at.session_state["study_section"] = "Studies"
    at.text_input(key="study_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Studies" in _researcher_parts(at) and "Export (.zip)" in _researcher_parts(at)
    assert not any(t.key == "study_password" for t in at.text_input), "no password field once logged in"
    click(at, "Log out")
    assert not _researcher_parts(at) and any(h.value == "Researcher login" for h in at.subheader)


def test_a_setting_that_is_not_a_hash_locks_the_pages(db, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)  # the password itself instead of its hash
    at = _app()
    assert not _researcher_parts(at)
    assert at.error and "not an argon2 hash" in at.error[0].value


def test_without_a_password_the_pages_are_open_on_this_machine_only(db, monkeypatch):
    at = _app()
    assert "Design a study" in _researcher_parts(at)
    assert any("Open researcher access" in i.value for i in at.info), "the page says it is open"
    monkeypatch.setattr("spade_app.study_access._client_is_local", lambda: False)  # a browser elsewhere
    at = _app()
    assert not _researcher_parts(at)
    assert at.error and "no researcher password" in at.error[0].value


# ----------------------------------------------------------------------------------------------- participant
def _started(db: StudyStore, study_id: str, query: dict[str, str] | None = None) -> tuple[AppTest, str]:
    at = _app({"study": study_id, **(query or {})})
    click(at, "Start")
    return at, at.query_params["p"]


def test_participant_link_never_reaches_the_researcher_parts(locked):
    study = synthetic_study("iso", n_real=3, n_training=0)
    locked.save_study(study)
    at, token = _started(locked, study.id)
    assert at.get("image") and not _researcher_parts(at)
    # without ?study= the participant reaches the human study page: it asks for the password
    at = _app({"p": token})
    assert not _researcher_parts(at) and any(h.value == "Researcher login" for h in at.subheader)
    # an empty or unknown ?study= is a participant link too: "not found", nothing else
    for study_id in ("", "nope"):
        at = _app({"study": study_id})
        assert [t.value for t in at.title] == ["Study not found"]
        assert not _researcher_parts(at) and not at.text_input


@pytest.mark.parametrize("page", ["pages/explore.py", "pages/neurons.py", "pages/trojan_lab.py",
                                  "pages/how_spade_works.py"])
def test_every_page_with_a_study_link_is_the_participant_view(locked, page):
    study = synthetic_study("everywhere", n_real=2, n_training=0)
    locked.save_study(study)
    at = _app({"study": study.id}, page=page)
    assert [t.value for t in at.title] == [study.config.title]
    assert _labels(at) == ["Start"]
    assert not at.sidebar.children, "no sidebar"


def test_participant_cannot_read_or_answer_as_another(locked):
    study = synthetic_study("two", n_real=3, n_training=0)
    other_study = synthetic_study("other", n_real=3, n_training=0)
    locked.save_study(study)
    locked.save_study(other_study)
    first, first_token = _started(locked, study.id)
    [victim] = locked.participants(study.id)
    _, foreign_token = _started(locked, other_study.id)
    tampered = first_token[:-3] + ("xyz" if not first_token.endswith("xyz") else "abc")
    for p, message in ((victim.id, "not valid"), (tampered, "not valid"), (foreign_token, "another study")):
        at = _app({"study": study.id, "p": p})
        assert at.error and message in at.error[0].value, [e.value for e in at.error]
        assert not at.get("image"), "none of the victim's tasks is shown"
        assert _labels(at) == ["Start afresh"], "no answer button"
        click(at, "Start afresh")  # a new participant, never the victim
        assert at.query_params["p"] != first_token
    assert locked.answers(study.id) == []
    assert len(locked.participants(study.id)) == 4
    # the victim's own link still works, and their first answer is theirs
    click(first, "Patch B")
    assert [(a.participant_id, a.answer) for a in locked.answers(study.id)] == [(victim.id, "B")]


def test_prolific_ids_are_stored_and_exported(db):
    study = synthetic_study("prolific", n_real=2, n_training=0)
    db.save_study(study)
    ids = {"PROLIFIC_PID": "5f1a2b3c4d5e6f7a8b9c0d1e", "STUDY_ID": "6a7b8c", "SESSION_ID": "sess42"}
    at, _ = _started(db, study.id, ids)
    _answer_all(at, 2)
    [participant] = db.participants(study.id)
    assert participant.platform == PlatformIds(*ids.values())
    rows = list(csv.DictReader(io.StringIO(answers_csv(db.answers(study.id)))))
    assert [(r["platform_participant_id"], r["platform_study_id"], r["platform_session_id"]) for r in rows] == [
        tuple(ids.values())] * 2
    archive = read_archive(db.export_study(study.id))
    assert [p.platform for p in archive.participants] == [PlatformIds(*ids.values())]
    assert {a.platform.participant for a in archive.answers} == {ids["PROLIFIC_PID"]}
    # a link whose placeholder the platform did not fill in is refused before anything is stored
    at = _app({"study": study.id, "PROLIFIC_PID": "{{%PROLIFIC_PID%}}"})
    assert at.error and "PROLIFIC_PID is not a valid id" in at.error[0].value and "Start" not in _labels(at)
    assert len(db.participants(study.id)) == 1


def test_end_screen_shows_the_completion_code_and_url(db):
    url = "https://app.prolific.com/submissions/complete?cc=C0DE123"
    config = StudyConfig(title="Done", training_tasks=1, completion_code="C0DE123", completion_url=url)
    study = synthetic_study("complete", n_real=2, n_training=1, config=config)
    db.save_study(study)
    at, _ = _started(db, study.id)
    _answer_all(at, 3)
    assert any("Thank you" in s.value for s in at.success)
    assert "C0DE123" in [c.value for c in at.get("code")]
    [link] = at.get("link_button")
    assert link.proto.url == url and link.proto.label == "Finish and return"


def test_researcher_text_is_shown_as_text(db):
    config = StudyConfig(title=NASTY, training_tasks=0, instructions=f"{NASTY}\n\nSecond paragraph ![img](http://x)")
    study = synthetic_study("nasty", n_real=2, n_training=0, config=config)
    db.save_study(study)
    at = _app({"study": study.id})
    [title] = at.title
    assert title.value == markdown_text(NASTY) and _shown(title.value) == NASTY
    paragraphs = [m.value for m in at.markdown]
    assert markdown_text(NASTY) in paragraphs
    assert markdown_text("Second paragraph ![img](http://x)") in paragraphs
    at = _app()
    at.session_state["study_section"] = "Studies"
    at.run()
    assert any(m.value.startswith(f"**{markdown_text(NASTY)}**") for m in at.markdown)
    assert all(a.participant_number >= 0 for a in db.answers(study.id))
    assert assign_tasks(study, 0)  # the study itself is usable


def test_studies_list_counts_only_participants_who_answered(db):
    study = synthetic_study("counts", n_real=3, n_training=1)
    db.save_study(study)
    answering, _idle = db.register_participant(study.id), db.register_participant(study.id)
    training_task = assign_tasks(study, answering.number, answering.seed)[0]
    assert training_task.training
    db.record_answer(study.id, answering.id, training_task, "A", 100)  # a practice answer counts as answering
    [summary] = db.list_studies()
    assert (summary.participants, summary.registered, summary.answers) == (1, 2, 1)
