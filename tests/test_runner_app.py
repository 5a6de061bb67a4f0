"""spade_app.runner.run_guarded in a tiny Streamlit script driven by AppTest: progress, errors, and the place in
the server's work queue."""

from __future__ import annotations

import contextlib
import threading

import pytest
from streamlit.testing.v1 import AppTest

from spade_app import runner
from spade_app.work_queue import Place, QueueState
from tests.app_testing import TIMEOUT


def _script(outcome: str, device: str) -> None:
    import streamlit as st
    import torch

    from spade.errors import ConfigError
    from spade_app import runner

    def work(progress):
        progress("solve", 0.5)
        st.session_state["held"] = runner.work_queue(torch.device(device).type).state().running
        if outcome == "spade":
            raise ConfigError("Choose at least one saliency method.")
        if outcome == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 42

    st.session_state["result"] = runner.run_guarded("Working…", device, work, failed="Work failed",
                                                    done=lambda result: f"Done: {result}")


def _run(outcome: str, device: str = "cpu") -> AppTest:
    at = AppTest.from_function(_script, args=(outcome, device), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def test_success_returns_the_result_and_completes_the_status():
    at = _run("ok")
    assert at.session_state["result"] == 42
    assert not at.error
    [status] = at.status
    assert (status.label, status.state) == ("Done: 42", "complete")
    assert [bar.proto.text for bar in status.get("progress")] == ["solve: 50%"]  # drawn in the box


@pytest.mark.parametrize("outcome, message, label", [
    ("spade", "Choose at least one saliency method.", "Work failed"),
    ("oom", runner.OOM_HINT, "Work failed: out of GPU memory"),
])
def test_errors_are_shown_and_give_none(outcome, message, label):
    at = _run(outcome)
    assert at.session_state["result"] is None
    assert at.error[0].value == message
    [status] = at.status
    assert (status.label, status.state) == (label, "error")


@pytest.mark.parametrize("outcome", ["ok", "spade", "oom"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])  # the queue only looks at the device type: no GPU needed
def test_work_holds_a_slot_of_its_device_queue_and_releases_it(outcome, device):
    at = _run(outcome, device=device)
    assert at.session_state["held"] == 1
    assert runner.work_queue(device).state() == QueueState(running=0, waiting=0)
    assert not [c for c in at.caption if "queue" in c.value]  # nobody was ahead: no queue talk


@contextlib.contextmanager
def _slot_held_by_another_session(queue, seconds: float = 60.0):
    """Another session holds one of `queue`'s slots (in a thread) until the block ends or the returned event is set;
    the slot is released on exit, also when an assertion fails."""
    admitted, release = threading.Event(), threading.Event()

    def other_session() -> None:
        with queue.slot():
            admitted.set()
            release.wait(seconds)

    holder = threading.Thread(target=other_session, daemon=True)
    holder.start()
    assert admitted.wait(30)
    try:
        yield release
    finally:
        release.set()
        holder.join(30)


def test_a_run_waits_for_its_turn_and_says_how_long():
    queue = runner.work_queue("cpu")
    with _slot_held_by_another_session(queue) as release:
        threading.Timer(2.0, release.set).start()  # frees the slot while the script below waits
        at = _run("ok")
    assert at.session_state["result"] == 42
    [status] = at.status
    assert (status.label, status.state) == ("Done: 42", "complete")
    [note] = [c.value for c in status.get("caption")]
    waited = int(note.split()[1])
    assert note == f"Waited {waited} s in the queue behind 1 run." and 1 <= waited <= 30, note
    assert queue.state() == QueueState(0, 0)


def _cached_script() -> None:
    import streamlit as st

    from spade_app import runner

    def work(progress):
        st.session_state["worked"] = True
        return 42

    st.session_state["result"] = runner.run_guarded("Working…", "cpu", work, failed="Work failed",
                                                    done=lambda result: f"Done: {result}", ready=lambda: 7)


def test_a_cached_result_takes_no_slot_and_never_waits():
    queue = runner.work_queue("cpu")
    with _slot_held_by_another_session(queue):  # the only slot, for as long as the test runs
        at = AppTest.from_function(_cached_script, default_timeout=TIMEOUT).run()
        assert not at.exception, at.exception
        assert at.session_state["result"] == 7 and "worked" not in at.session_state
        [status] = at.status
        assert (status.label, status.state) == ("Done: 7", "complete")
        assert queue.state() == QueueState(running=1, waiting=0)  # it never queued behind the holder


def test_a_bad_slot_setting_is_shown_instead_of_running(monkeypatch):
    monkeypatch.setenv("SPADE_WORK_SLOTS", "many")
    runner.work_queue.clear()
    try:
        at = _run("ok")
    finally:
        runner.work_queue.clear()
    assert at.session_state["result"] is None
    assert at.error[0].value == "SPADE_WORK_SLOTS must be a whole number from 1 to 64, got 'many'."
    assert "held" not in at.session_state  # the work never ran
    [status] = at.status
    assert (status.label, status.state) == ("Work failed", "error")


def _two_asks() -> None:
    import time

    import streamlit as st

    from spade_app import runner

    first = runner.asked_at()
    time.sleep(0.05)
    st.session_state.setdefault("asked", []).append((first, runner.asked_at()))


def test_one_script_run_keeps_the_time_it_first_asked_and_a_rerun_asks_anew():
    at = AppTest.from_function(_two_asks, default_timeout=TIMEOUT).run()
    at.run()
    (a1, a2), (b1, b2) = at.session_state["asked"]
    assert a1 == a2 and b1 == b2  # the maps after the trace keep the click's place
    assert b1 > a1 + 0.04  # the next run (a new click) queues behind


@pytest.mark.parametrize("ahead, seconds, label", [
    (1, 0.4, "Waiting: 1 run ahead of you (0 s so far)"),
    (3, 12.6, "Waiting: 3 runs ahead of you (13 s so far)"),
])
def test_waiting_label(ahead, seconds, label):
    assert runner.waiting_label(Place(running=1, queued_ahead=ahead - 1, slots=1), seconds) == label


def test_the_waiting_note_says_how_many_runs_the_server_works_on():
    assert "works on one run at a time" in runner.waiting_note(1)
    assert "works on 2 runs at a time" in runner.waiting_note(2)
