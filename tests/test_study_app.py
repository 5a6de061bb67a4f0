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
from spade_study.results import summarize, wilson_interval
from spade_study.storage import StudyStore
from tests.app_testing import TIMEOUT, FileWeights
from tests.study_helpers import click, synthetic_study
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
    """The app's study database, in a temporary SQLite file (the page reads SPADE_STUDY_DB); the participant
    links' secret in the same folder (SPADE_DATA_DIR); no researcher password (open on this machine)."""
    path = tmp_path / "studies.sqlite"
    monkeypatch.setenv("SPADE_STUDY_DB", str(path))
    monkeypatch.setenv("SPADE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SPADE_STUDY_SECRET", raising=False)
    monkeypatch.delenv("SPADE_RESEARCHER_PASSWORD_HASH", raising=False)
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


def _as_shown(markdown: str) -> str:
    """What markdown that only escapes characters (``spade_app.study.markdown_text``) shows: backslashes dropped."""
    return re.sub(r"\\(.)", r"\1", markdown)


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
    # defaults: never more practice tasks than practice photos, none of them also a real task's photo
    default_training = at.multiselect(key="sd_training").value
    assert len(default_training) == 2 and not set(default_training) & set(at.multiselect(key="sd_images").value)
    assert at.number_input(key="sd_training_tasks_2").value == 2
    assert at.number_input(key="sd_training_tasks_2").max == 2
    at.multiselect(key="sd_images").set_value(["cat", "coffee"])
    at.multiselect(key="sd_training").set_value(["rocket"])
    at.number_input(key="sd_steps").set_value(3)
    at.number_input(key="sd_augmentations").set_value(8)
    at.text_input(key="sd_title").set_value("Pilot")
    at.run()
    assert at.number_input(key="sd_tasks_2").value == 2  # default: every real image once
    assert at.number_input(key="sd_training_tasks_1").value == 1  # follows the one training image
    at.text_input(key="sd_completion_code").set_value("C0DE123")
    at.text_input(key="sd_completion_url").set_value("javascript:alert(1)")
    click(at, "Create study")
    assert at.error and "completion URL" in at.error[0].value and not db.list_studies()
    at.text_input(key="sd_completion_url").set_value("https://app.prolific.com/submissions/complete?cc=C0DE123")
    at.multiselect(key="sd_training").set_value(["cat"]).run()  # also a real task's photo: refused
    assert any("Used for practice and for real tasks: cat" in w.value for w in at.warning)
    click(at, "Create study")
    assert at.error and not db.list_studies()
    at.multiselect(key="sd_training").set_value(["rocket"]).run()
    click(at, "Create study")
    assert not at.error, [e.value for e in at.error]
    [summary] = db.list_studies()
    assert summary.title == "Pilot" and summary.model == TINY
    study = db.load_study(summary.id)
    assert [(item.name, item.training) for item in study.items] == [
        ("cat", False), ("coffee", False), ("rocket (training)", True)]
    assert study.config.training_tasks == 1 and study.config.tasks_per_participant == 2
    assert (study.config.completion_code, study.config.completion_url) == (
        "C0DE123", "https://app.prolific.com/submissions/complete?cc=C0DE123")
    assert study.config.visualization.steps == 3 and study.config.visualization.augmentations == 8
    from spade.featurevis import DEFAULT_METHOD

    # the defaults: the better visualization method by the benchmark, Score-CAM for the ground truth
    assert study.config.visualization.method == DEFAULT_METHOD and study.config.ground_truth == "score_cam"
    loaded = load_model(TINY, device="cpu")
    predicted = loaded.predict(load_image(bundled_examples()["cat"]), k=1)[0].index
    assert study.items[0].neuron == predicted, "the default neuron is the predicted class"
    assert all(set(item.visualizations) == {"dense", "spade"} for item in study.items)
    links = [c.value for c in at.get("code")]
    assert f"/?study={study.id}" in links  # the app's root (AppTest has no URL: relative to the server's)
    # the Studies tab lists it; closing it is stored
    at.session_state["study_section"] = "Studies"
    at.run()
    click(at, "Close")
    assert db.is_closed(study.id)
    click(at, "Reopen")
    assert not db.is_closed(study.id)
    click(at, "Results")  # opens the Results tab on this study
    assert at.selectbox(key="sd_results_study").value == study.id
    assert any("Table 3" in m.value for m in at.markdown)


def test_designer_previews_each_items_two_visualizations(tiny_spec, db, monkeypatch):
    from spade.featurevis import DEFAULT_METHOD_REASON

    monkeypatch.setitem(MODELS, TINY, tiny_spec)
    at = _app()
    at.sidebar.selectbox(key="model_name").set_value(TINY).run()
    at.multiselect(key="sd_images").set_value(["cat", "coffee"])
    at.multiselect(key="sd_training").set_value(["rocket"])
    at.number_input(key="sd_steps").set_value(3)
    at.number_input(key="sd_augmentations").set_value(8)
    at.run()
    assert DEFAULT_METHOD_REASON in [c.value for c in at.caption], "the designer says which method and why"
    assert [o for o in at.selectbox(key="sd_ground_truth").options] == ["Score-CAM", "GradCAM"]
    assert at.selectbox(key="sd_ground_truth").value == "score_cam"

    def preview_captions() -> list[str]:
        return [c for image in at.image for c in image.captions if "(preview)" in c]

    assert not preview_captions()
    assert any("made with 3 optimisation steps" in c.value for c in at.caption)
    click(at, "Preview visualizations")
    assert not at.error, [e.value for e in at.error]
    # one row per item (the two real images and the training image): the photo, then dense and SPADE
    expected = ["Dense model (preview)", "SPADE trace (preview)"] * 3
    assert preview_captions() == expected
    assert "Preview visualizations" not in [b.label for b in at.button], "the button is gone once it has done"
    assert any("made with 3 optimisation steps, as in the study" in c.value for c in at.caption)
    assert not db.list_studies(), "a preview creates no study"
    # cached: a rerun shows them without the button; another method needs a new preview
    at.run()
    assert preview_captions() == expected and "Preview visualizations" not in [b.label for b in at.button]
    at.selectbox(key="sd_method").set_value("maco").run()
    assert not preview_captions() and "Preview visualizations" in [b.label for b in at.button]
    assert any("MACO" in c.value and "made with 3 optimisation steps" in c.value for c in at.caption)
    # more steps than a preview makes: the preview says it is rougher than the study
    at.number_input(key="sd_steps").set_value(64).run()
    assert any("made with 32 optimisation steps instead of the study's 64, so rougher" in c.value
               for c in at.caption)


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
    click(at, "Import")
    assert [s.id for s in db.list_studies()] == ["moved"]
    assert [(a.participant_id, a.answer, a.response_ms) for a in db.answers("moved")] == [(p.id, "B", 900)]
    assert any("id moved" in m.value for m in at.markdown)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Export (.zip)"]
    # the same file again is refused with a message
    at.file_uploader(key="sd_import").upload("study_moved.zip", data, "application/zip").run()
    click(at, "Import")
    assert any("already exists" in e.value for e in at.error)


# ----------------------------------------------------------------------------------------------- participant
def test_participant_flow_is_blinded_stored_at_once_and_resumable(db):
    study = synthetic_study("flow", n_real=4, n_training=2)  # 2 training tasks, 4 real tasks
    db.save_study(study)
    at = _app(study.id)
    assert at.title[0].value == study.config.title
    assert any(study.config.instructions.split("\n")[0] in _as_shown(m.value) for m in at.markdown)
    _assert_blinded(at)
    click(at, "Start")
    token = at.query_params["p"]
    [participant] = db.participants(study.id)
    assert token != participant.id, "the link carries a signed token, not the bare id"
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
        click(at, {"A": "Patch A", "B": "Patch B", "undecided": "Can't decide"}[answer])
        stored = db.answers(study.id)
        assert [(r.task_index, r.answer) for r in stored][-1] == (task.index, answer), "stored at once"
        assert (stored[-1].condition, stored[-1].patch_order) == (task.condition, task.patch_order)
        if task.training:
            _assert_blinded(at)
            feedback = [s.value for s in at.success] + [w.value for w in at.warning] + [i.value for i in at.info]
            assert any(f"Patch {task.truth_label}" in text for text in feedback), feedback
            assert _progress_text(at) == expected, "the label names the task just answered during its feedback"
            click(at, "Continue")
    assert _progress_text(at) == "Task 3 of 4"

    # a reload (a new session with the same link) resumes at the first unanswered task
    again = _app(study.id, token)
    _assert_blinded(again)
    assert _progress_text(again) == "Task 3 of 4"
    item = study.items[tasks[4].item]
    assert _image_ids(again)[1] == _file_id(item.visualizations[tasks[4].condition])
    for answer in answers[4:]:
        click(again, {"A": "Patch A", "B": "Patch B", "undecided": "Can't decide"}[answer])
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
    undecided = db.register_participant(study.id)  # "agree when decided" has no value for this one
    for task in assign_tasks(study, undecided.number, undecided.seed):
        db.record_answer(study.id, undecided.id, task, "undecided", 700)
    db.register_participant(study.id)  # pressed Start, never answered: not counted
    at = _app()
    assert not at.get("dataframe"), "closed tabs do not run"
    at.session_state["study_section"] = "Results"
    at.run()
    at.selectbox(key="sd_results_study").set_value(study.id).run()
    assert not at.exception, at.exception
    answers = db.answers(study.id)
    expected = summarize(answers, study.config.conditions)
    table = next(d.value for d in at.dataframe if "agree when decided" in d.value.columns)
    assert table.to_dict("records") == expected.table3_compact()
    # one cell against an independent count: the dense agreement share with its Wilson interval
    dense = [a for a in answers if not a.training and a.condition == "dense"]
    agree = sum(a.answer == a.truth_label for a in dense)
    low, high = wilson_interval(agree, len(dense))
    assert table.iloc[0]["agree"] == f"{100 * agree / len(dense):.1f} % ({100 * low:.1f}–{100 * high:.1f})"
    assert len(table.columns) == 6, "narrow enough for the page (checked at 1440 px in the browser test)"
    for frame in at.dataframe:  # no empty cell shows as "None"
        assert not frame.value.isna().any().any() and "None" not in frame.value.astype(str).values, frame.value
    labels = {b.label for b in at.get("download_button")}
    assert {"Raw answers (CSV)", "Raw answers (JSON)", "Results (JSON)"} <= labels
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Participants"] == "4" and metrics["Answers (without training)"] == "16"
    at.session_state["study_section"] = "Studies"
    at.run()
    assert any("participants: 4 (answered at least once; 5 pressed Start)" in m.value for m in at.markdown)
