"""The Human study page with AppTest: the designer creates a study on a tiny model, a participant goes
through training and real tasks (blinded, stored at once, resumable), and the results view shows Table 3."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from streamlit.runtime.memory_media_file_storage import _calculate_file_id
from streamlit.testing.v1 import AppTest

from spade.images import bundled_examples, load_image
from spade.models import MODELS, ModelSpec, load_model
from spade.preprocessing import Preprocessing
from spade_study.assignment import assign_tasks
from spade_study.results import summarize
from spade_study.storage import StudyStore
from tests.app_testing import TIMEOUT, FileWeights
from tests.study_helpers import synthetic_study
from tests.tiny_models import tiny_resnet

PAGE = "pages/human_study.py"
TINY = "tiny_resnet_study"
pytestmark = pytest.mark.usefixtures("app_navigation")
# Words that would reveal (or hint at) the condition to a participant.
REVEALING = re.compile(r"dense|spade|sparse|trace|prun|condition", re.IGNORECASE)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> ModelSpec:
    path = tmp_path_factory.mktemp("tiny_study") / f"{TINY}.pth"
    build = functools.partial(tiny_resnet, 0, num_classes=3)
    torch.save(build().state_dict(), path)
    return ModelSpec(name=TINY, description="tiny test model", build=build, weights=FileWeights(path),
                     preprocessing=Preprocessing(resize=72, crop=64), last_conv_stage="layer2", offline=True,
                     class_names=("apple", "boat", "cloud"))


@pytest.fixture
def db(tmp_path, monkeypatch) -> StudyStore:
    """The app's study database, in a temporary SQLite file (the page reads SPADE_STUDY_DB)."""
    path = tmp_path / "studies.sqlite"
    monkeypatch.setenv("SPADE_STUDY_DB", str(path))
    store = StudyStore(f"sqlite:///{path}")
    yield store
    store.close()


def _app(study_id: str | None = None, participant: str | None = None) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.session_state["device"] = "cpu"
    if study_id:
        at.query_params["study"] = study_id
    if participant:
        at.query_params["p"] = participant
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _click(at: AppTest, label: str) -> AppTest:
    buttons = [b for b in at.button if b.label == label]
    assert len(buttons) == 1, [b.label for b in at.button]
    buttons[0].click().run()
    assert not at.exception, at.exception
    return at


def _main_texts(at: AppTest) -> list[str]:
    """Every text a participant can see in the main area: markdown, captions, titles, alerts, buttons,
    image captions, progress texts, expander labels (and the keys, which end up in the page's CSS classes)."""
    texts = []
    for node in at.main:
        stack = [node]
        while stack:
            element = stack.pop()
            stack.extend(getattr(element, "children", {}).values())
            for attr in ("value", "label", "body", "key"):
                value = getattr(element, attr, None)
                if isinstance(value, str):
                    texts.append(value)
            proto = getattr(element, "proto", None)
            if proto is not None:
                texts += [img.caption for img in getattr(proto, "imgs", [])]
                if type(element).__name__ == "UnknownElement" or hasattr(proto, "text"):
                    texts.append(str(getattr(proto, "text", "")))
    return texts


def _assert_blinded(at: AppTest) -> None:
    leaks = [t for t in _main_texts(at) if REVEALING.search(t)]
    assert not leaks, leaks
    assert any("stSidebar" in h.proto.body for h in at.get("html")), "the sidebar is hidden for participants"


def _image_ids(at: AppTest) -> list[str]:
    return [url.rsplit("/", 1)[1].split(".")[0] for e in at.main.get("image") for url in e.value]


def _file_id(png: bytes) -> str:
    # Streamlit names a media file by a hash of its bytes: the shown picture is identified by its content.
    return _calculate_file_id(png, "image/png")


def _progress_text(at: AppTest) -> str:
    bars = at.get("progress")
    assert len(bars) == 1
    return bars[0].proto.text


@pytest.mark.parametrize(("page_url", "link"), [
    (None, "/?study=s1"),
    ("http://localhost:8501/human_study", "http://localhost:8501/?study=s1"),
    ("https://lab.example/tools/spade/human_study/", "https://lab.example/tools/spade/?study=s1"),
    ("https://lab.example/tools/spade", "https://lab.example/tools/spade/?study=s1"),
])
def test_share_link_is_the_app_root_with_the_study(page_url, link):
    """The participant link is the app's root (base path kept), where app.py shows the participant view alone."""
    from spade_app.study import participant_link

    assert participant_link(page_url, "s1") == link
    assert participant_link(page_url, "a b&c").endswith("/?study=a+b%26c")


# ----------------------------------------------------------------------------------------------- designer
def test_designer_creates_a_study_on_the_sidebar_model(tiny_spec, db, monkeypatch):
    monkeypatch.setitem(MODELS, TINY, tiny_spec)
    at = _app()
    at.sidebar.selectbox(key="model_name").set_value(TINY).run()
    assert not at.exception, at.exception
    at.multiselect(key="sd_images").set_value(["cat", "coffee"])
    at.multiselect(key="sd_training").set_value(["rocket"])
    at.number_input(key="sd_steps").set_value(3)
    at.number_input(key="sd_augmentations").set_value(8)
    at.text_input(key="sd_title").set_value("Pilot")
    at.run()
    assert at.number_input(key="sd_tasks_2").value == 2  # default: every real image once
    _click(at, "Create study")
    assert not at.error, [e.value for e in at.error]
    [summary] = db.list_studies()
    assert summary.title == "Pilot" and summary.model == TINY
    study = db.load_study(summary.id)
    assert [(item.name, item.training) for item in study.items] == [
        ("cat", False), ("coffee", False), ("rocket (training)", True)]
    assert study.config.training_tasks == 2 and study.config.tasks_per_participant == 2
    assert study.config.visualization.steps == 3 and study.config.visualization.augmentations == 8
    loaded = load_model(TINY, device="cpu")
    predicted = loaded.predict(load_image(bundled_examples()["cat"]), k=1)[0].index
    assert study.items[0].neuron == predicted, "the default neuron is the predicted class"
    assert all(set(item.visualizations) == {"dense", "spade"} for item in study.items)
    links = [c.value for c in at.get("code")]
    assert f"/?study={study.id}" in links  # the app's root (AppTest has no URL: relative to the server's)
    # the Studies tab lists it; closing it is stored
    at.session_state["study_section"] = "Studies"
    at.run()
    _click(at, "Close")
    assert db.is_closed(study.id)
    _click(at, "Reopen")
    assert not db.is_closed(study.id)
    _click(at, "Results")  # opens the Results tab on this study
    assert at.selectbox(key="sd_results_study").value == study.id
    assert any("Table 3" in m.value for m in at.markdown)


def test_studies_tab_imports_an_exported_study(db, tmp_path):
    source = StudyStore(f"sqlite:///{tmp_path / 'elsewhere.sqlite'}")
    study = synthetic_study("moved", n_real=3, n_training=0, config=None)
    source.save_study(study)
    p = source.register_participant(study.id)
    source.record_answer(study.id, p.id, assign_tasks(study, p.number, p.seed)[0], "B", 900)
    data = source.export_study(study.id)
    source.close()
    at = _app()
    at.session_state["study_section"] = "Studies"
    at.run()
    assert any("No study yet" in i.value for i in at.info)
    at.file_uploader(key="sd_import").upload("study_moved.zip", data, "application/zip").run()
    _click(at, "Import")
    assert [s.id for s in db.list_studies()] == ["moved"]
    assert [(a.participant_id, a.answer, a.response_ms) for a in db.answers("moved")] == [(p.id, "B", 900)]
    assert any("id `moved`" in m.value for m in at.markdown)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Export (.zip)"]
    # the same file again is refused with a message
    at.file_uploader(key="sd_import").upload("study_moved.zip", data, "application/zip").run()
    _click(at, "Import")
    assert any("already exists" in e.value for e in at.error)


# ----------------------------------------------------------------------------------------------- participant
def test_participant_flow_is_blinded_stored_at_once_and_resumable(db):
    study = synthetic_study("flow", n_real=4, n_training=1)  # 2 training tasks, 4 real tasks
    db.save_study(study)
    at = _app(study.id)
    assert at.title[0].value == study.config.title
    assert any(study.config.instructions.split("\n")[0] in m.value for m in at.markdown)
    _assert_blinded(at)
    _click(at, "Start")
    participant_id = at.query_params["p"]
    participant = db.participant(study.id, participant_id)
    assert participant is not None and participant.number == 0
    tasks = assign_tasks(study, participant.number, participant.seed)

    answers = ["A", "undecided", "B", "A", "undecided", "B"]
    for task, answer in zip(tasks[:4], answers):
        item = study.items[task.item]
        _assert_blinded(at)
        truth_first = task.truth_label == "A"
        a, b = (item.truth, item.distractor) if truth_first else (item.distractor, item.truth)
        # photo, this task's visualization, then patch A and patch B
        assert _image_ids(at) == [_file_id(item.image_png), _file_id(item.visualizations[task.condition]),
                                  _file_id(a.png), _file_id(b.png)]
        expected = (f"Practice task {task.index + 1} of 2" if task.training else
                    f"Task {task.index - 1} of 4")
        assert _progress_text(at) == expected
        _click(at, {"A": "Patch A", "B": "Patch B", "undecided": "Can't decide"}[answer])
        stored = db.answers(study.id)
        assert [(r.task_index, r.answer) for r in stored][-1] == (task.index, answer), "stored at once"
        assert (stored[-1].condition, stored[-1].patch_order) == (task.condition, task.patch_order)
        if task.training:
            _assert_blinded(at)
            feedback = [s.value for s in at.success] + [w.value for w in at.warning] + [i.value for i in at.info]
            assert any(f"Patch {task.truth_label}" in text for text in feedback), feedback
            _click(at, "Continue")
    assert _progress_text(at) == "Task 3 of 4"

    # a reload (a new session with the same link) resumes at the first unanswered task
    again = _app(study.id, participant_id)
    _assert_blinded(again)
    assert _progress_text(again) == "Task 3 of 4"
    item = study.items[tasks[4].item]
    assert _image_ids(again)[1] == _file_id(item.visualizations[tasks[4].condition])
    for answer in answers[4:]:
        _click(again, {"A": "Patch A", "B": "Patch B", "undecided": "Can't decide"}[answer])
    assert any("Thank you" in s.value for s in again.success)
    _assert_blinded(again)
    stored = db.answers(study.id)
    assert [(r.task_index, r.answer) for r in stored] == list(enumerate(answers))
    assert all(r.response_ms >= 0 for r in stored)


def test_closed_or_unknown_study_links(db):
    study = synthetic_study("closed", n_real=2, n_training=0, config=None)
    db.save_study(study)
    db.set_closed(study.id)
    at = _app(study.id)
    assert any("closed" in i.value for i in at.info)
    assert not [b for b in at.button if b.label == "Start"]
    at = _app("no-such-study")
    assert at.error and "not valid" in at.error[0].value


# ----------------------------------------------------------------------------------------------- results
def test_results_view_shows_table3_of_the_stored_answers(db):
    study = synthetic_study("res", n_real=4, n_training=1)
    db.save_study(study)
    for _ in range(3):
        p = db.register_participant(study.id)
        for task, answer in zip(assign_tasks(study, p.number, p.seed), ("A", "B", "A", "undecided", "B", "A")):
            db.record_answer(study.id, p.id, task, answer, 500)
    at = _app()
    assert not at.get("dataframe"), "closed tabs do not run"
    at.session_state["study_section"] = "Results"
    at.run()
    at.selectbox(key="sd_results_study").set_value(study.id).run()
    assert not at.exception, at.exception
    expected = summarize(db.answers(study.id), study.config.conditions)
    table = next(d.value for d in at.dataframe if "agree when decided %" in d.value.columns)
    assert table.to_dict("records") == expected.table3()
    labels = {b.label for b in at.get("download_button")}
    assert {"Raw answers (CSV)", "Raw answers (JSON)", "Results (JSON)"} <= labels
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Participants"] == "3" and metrics["Answers (without training)"] == "12"
