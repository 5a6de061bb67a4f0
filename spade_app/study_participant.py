"""The participant's side of a study, reached through the share link ``?study=<id>``.

Instructions, then the training tasks with feedback, then the real tasks: the photo, one neuron
visualization, the two patches A and B, and three answer buttons. Every answer is stored the moment it is
given; the participant is kept in the URL as a signed token (``&p=<token>``, ``spade_study.links``), so a reload
resumes at the first unanswered task and an edited or foreign token is refused. Ids a recruiting platform adds
to the link (Prolific's ``PROLIFIC_PID``, ``STUDY_ID``, ``SESSION_ID``) are stored with the participant; the end
screen shows the study's completion code and links to its completion URL.

Everything the researcher wrote (title, instructions, completion code) is shown as text, never as markdown.

Blinding: nothing on these screens names or hints at the condition (no captions, labels or widget keys with
it; the visualization is just "the neuron's picture"), and the app's sidebar is hidden.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw
from sqlalchemy.exc import SQLAlchemyError

from spade.errors import SpadeError
from spade_app.study import cached_study, markdown_text, store
from spade_app.study_access import participant_tokens
from spade_study.assignment import Participant, PlatformIds, Task, assign_tasks
from spade_study.design import Study, png_to_array
from spade_study.links import InvalidParticipantLink, platform_ids
from spade_study.storage import StudyNotFoundError

PARTICIPANT_PARAM = "p"
FEEDBACK_KEY = "study_feedback"
ERROR_KEY = "study_answer_error"
UNSAVED = "Your answer could not be saved just now (the database is unavailable). Please try again in a moment."
ANSWER_LABELS = {"A": "Patch A", "B": "Patch B", "undecided": "Can't decide"}
HIDE_SIDEBAR = """
<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stExpandSidebarButton"],
[data-testid="stSidebarNav"] { display: none; }
</style>
"""


def _started_key(participant_id: str, task: Task) -> str:
    return f"study_started_{participant_id}_{task.index}"


def _stored(what: str, write) -> bool:
    """Run one database write; on failure keep the message for the next run and return False."""
    try:
        write()
    except SpadeError as exc:
        st.session_state[ERROR_KEY] = str(exc)
        return False
    except SQLAlchemyError:
        logging.getLogger(__name__).exception("%s failed", what)
        st.session_state[ERROR_KEY] = UNSAVED
        return False
    return True


def _start(study_id: str, platform: PlatformIds) -> None:
    registered = []
    if _stored("registering a participant",
               lambda: registered.append(store().register_participant(study_id, platform))):
        st.query_params[PARTICIPANT_PARAM] = participant_tokens().token(study_id, registered[0].id)


def _answer(study_id: str, participant_id: str, task: Task, answer: str) -> None:
    started = st.session_state.get(_started_key(participant_id, task))
    response_ms = int(round((time.monotonic() - started) * 1000)) if started is not None else 0
    if not _stored("storing an answer",
                   lambda: store().record_answer(study_id, participant_id, task, answer, response_ms)):
        return
    if task.training:
        st.session_state[FEEDBACK_KEY] = (participant_id, task, answer)


def _continue() -> None:
    st.session_state.pop(FEEDBACK_KEY, None)


def _outlined(image_png: bytes, box, color=(255, 196, 0)) -> np.ndarray:
    image = Image.fromarray(png_to_array(image_png))
    width = max(2, image.width // 80)
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=color, width=width)
    return np.asarray(image)


def _show(container, image, caption: str) -> None:
    # PNG keeps the pictures lossless (Streamlit would re-encode them as JPEG)
    container.image(image, caption=caption, width="stretch", output_format="PNG")


def _patches(study: Study, task: Task) -> dict[str, bytes]:
    item = study.items[task.item]
    first, second = (item.truth, item.distractor) if task.truth_label == "A" else (item.distractor, item.truth)
    return {"A": first.png, "B": second.png}


def progress_text(n_training: int, n_tasks: int, current: int | None) -> str:
    """The progress label of task ``current`` (0-based index in the participant's list, training first; None:
    all done): practice and real tasks are counted separately."""
    if current is None or current >= n_tasks:
        return "Finished"
    if current < n_training:
        return f"Practice task {current + 1} of {n_training}"
    return f"Task {current - n_training + 1} of {n_tasks - n_training}"


def _progress(study: Study, tasks: tuple[Task, ...], current: int | None, done: int) -> None:
    """A bar over all tasks (``done`` answered) labelled with the task on the screen (``current``: during the
    feedback that is the task just answered, not the next one)."""
    n_training = sum(t.training for t in tasks)
    st.progress(done / max(len(tasks), 1), text=progress_text(n_training, len(tasks), current))


def _instructions(study: Study) -> None:
    # the researcher's text as text: one paragraph per blank-line-separated block, its line breaks kept
    for paragraph in study.config.instructions.split("\n\n"):
        lines = [markdown_text(line.strip()) for line in paragraph.strip().splitlines() if line.strip()]
        if lines:
            st.markdown("  \n".join(lines))


def _pictures(study: Study, task: Task, photo) -> None:
    """One row: the photo, the neuron's picture, patch A, patch B."""
    item = study.items[task.item]
    patches = _patches(study, task)
    cols = st.columns(4)
    _show(cols[0], photo, "Photo")
    _show(cols[1], item.visualizations[task.condition], "What the neuron responds to")
    _show(cols[2], patches["A"], "Patch A")
    _show(cols[3], patches["B"], "Patch B")


def _feedback(study: Study, task: Task, answer: str) -> None:
    item = study.items[task.item]
    expected = f"**Patch {task.truth_label}** (outlined in the photo)"  # our text, not the researcher's
    if answer == task.truth_label:
        st.success(f"Right: the expected answer is {expected}.")
    elif answer == "undecided":
        st.info(f"The expected answer was {expected}.")
    else:
        st.warning(f"The expected answer was {expected}.")
    _pictures(study, task, _outlined(item.image_png, item.truth.box))
    if task.index + 1 == study.config.training_tasks:
        st.markdown("That was the last practice task. From now on there is no feedback.")
    st.button("Continue", type="primary", on_click=_continue, key=f"continue_{task.index}")


def _task(study: Study, participant: Participant, task: Task) -> None:
    started = _started_key(participant.id, task)
    if started not in st.session_state:
        st.session_state[started] = time.monotonic()
    st.markdown("**Which patch of the photo contains what the neuron responds to?**")
    _pictures(study, task, study.items[task.item].image_png)
    cols = st.columns(3)
    for col, answer in zip(cols, ("A", "undecided", "B")):
        col.button(ANSWER_LABELS[answer], key=f"answer_{task.index}_{answer}", width="stretch",
                   type="primary" if answer != "undecided" else "secondary", on_click=_answer,
                   args=(study.id, participant.id, task, answer))
    with st.expander("Instructions"):
        _instructions(study)


def _finished(study: Study, participant: Participant) -> None:
    st.success("All done. Thank you for taking part!", icon=":material/celebration:")
    config = study.config
    if config.completion_code:
        st.markdown("Your completion code (copy it into the platform you came from):")
        st.code(config.completion_code, language=None)
    if config.completion_url:
        st.link_button("Finish and return", config.completion_url, type="primary", icon=":material/check_circle:")
        st.caption("The button takes you back to the platform you came from, where your participation is confirmed.")
    st.caption(f"Your participant code: {participant.id}")


def _verified_participant(study_id: str) -> tuple[Participant | None, bool]:
    """(this link's participant, whether the link's token was refused). A token that does not verify is refused
    with a message and reads nothing; one of this server's for a participant no longer stored gives None."""
    token = st.query_params.get(PARTICIPANT_PARAM)
    if not token:
        return None, False
    try:
        participant_id = participant_tokens().participant_id(study_id, token)
    except InvalidParticipantLink as exc:
        st.error(str(exc), icon=":material/link_off:")
        return None, True
    participant = store().participant(study_id, participant_id)
    if participant is None:
        st.warning("This participant link is unknown; you can start the study afresh.")
    return participant, False


def participant_page(study_id: str) -> None:
    """The whole participant flow for ``study_id`` (from the URL)."""
    st.html(HIDE_SIDEBAR)
    db = store()
    try:
        if not study_id:
            raise StudyNotFoundError("no study id")
        study = cached_study(study_id)
        closed = db.is_closed(study_id)
    except StudyNotFoundError:
        st.title("Study not found")
        st.error("This study link is not valid. Please check the link you were sent.")
        return
    st.title(markdown_text(study.config.title))
    error = st.session_state.pop(ERROR_KEY, None)
    if error:
        st.error(error)
    participant, refused = _verified_participant(study_id)
    if participant is None:
        if closed:
            st.info("This study is closed. Thank you for your interest.")
            return
        try:
            platform = platform_ids(st.query_params)
        except SpadeError as exc:
            st.error(str(exc))
            return
        _instructions(study)
        st.button("Start afresh" if refused else "Start", type="primary", on_click=_start, args=(study_id, platform),
                  key="study_start", icon=":material/play_arrow:")
        return

    tasks = assign_tasks(study, participant.number, participant.seed)
    feedback = st.session_state.get(FEEDBACK_KEY)
    if feedback is not None and feedback[0] == participant.id:
        _progress(study, tasks, current=feedback[1].index, done=feedback[1].index + 1)
        _feedback(study, feedback[1], feedback[2])
        return
    task = db.next_task(study_id, participant.id, tasks)
    _progress(study, tasks, current=None if task is None else task.index,
              done=len(tasks) if task is None else task.index)
    if task is None:
        _finished(study, participant)
        return
    if closed:
        st.info("This study has been closed; your answers so far are saved. Thank you!")
        return
    _task(study, participant, task)
