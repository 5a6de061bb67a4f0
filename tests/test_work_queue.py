"""spade_app.work_queue: first come first served, the places reported to waiting runs, slots released on any exit,
N slots; and the statistics of one key computed once when sessions ask for them at the same time."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from spade.augment import AugmentConfig
from spade.errors import ConfigError
from spade_app import compute
from spade_app.work_queue import DEFAULT_SLOTS, MAX_SLOTS, Place, QueueState, WorkQueue, slots_from_env

WAIT = 10.0  # seconds any step below may take on a busy machine before the test fails


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Run:
    """A thread that asks `queue` for a slot, records every place it is told, and holds the slot until released."""

    def __init__(self, queue: WorkQueue, name: str, admitted: list[str], cancel_after: int | None = None,
                 error: type[BaseException] | None = None, since: float | None = None):
        self.queue, self.name, self.admitted, self.since = queue, name, admitted, since
        self.places: list[Place] = []
        self.release = threading.Event()
        self.outcome: BaseException | str | None = None
        self.cancel_after, self.error = cancel_after, error
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_wait(self, place: Place) -> None:
        self.places.append(place)
        if self.cancel_after is not None and len(self.places) >= self.cancel_after:
            raise StopException()  # what Streamlit raises at a yield point of a stopped / closed session

    def _run(self) -> None:
        try:
            with self.queue.slot(on_wait=self._on_wait, since=self.since):
                self.admitted.append(self.name)
                assert self.release.wait(WAIT)
                if self.error is not None:
                    raise self.error("the work failed")
            self.outcome = "done"
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to look at
            self.outcome = exc

    def start(self, waiting_before: int | None = None) -> Run:
        """Start; when `waiting_before` is given, return once the queue has that many waiting runs more."""
        self.thread.start()
        if waiting_before is not None:
            until(lambda: self.queue.state().waiting == waiting_before + 1, f"{self.name} to queue")
        return self

    def finish(self) -> None:
        self.release.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"{self.name} did not finish"


def test_runs_are_admitted_first_come_first_served():
    queue, admitted = WorkQueue(slots=1, poll=0.01), []
    holder = Run(queue, "holder", admitted).start()
    until(lambda: admitted == ["holder"], "the holder's slot")
    runs = [Run(queue, name, admitted).start(waiting_before=i) for i, name in enumerate("ABCD")]
    assert queue.state() == QueueState(running=1, waiting=4)
    holder.finish()
    for i, run in enumerate(runs):
        until(lambda n=i + 2: len(admitted) == n, f"{run.name}'s turn")
        assert queue.state() == QueueState(running=1, waiting=3 - i)
        run.finish()
    assert admitted == ["holder", "A", "B", "C", "D"]
    assert queue.state() == QueueState(0, 0)


def test_waiting_runs_are_told_how_many_are_ahead_and_move_up():
    queue, admitted = WorkQueue(slots=1, poll=0.01), []
    holder = Run(queue, "holder", admitted).start()
    until(lambda: admitted == ["holder"], "the holder's slot")
    first, second = Run(queue, "first", admitted).start(0), Run(queue, "second", admitted).start(1)
    until(lambda: len(second.places) >= 3, "repeated reports while nothing changes")  # a heartbeat, every poll
    assert first.places[0] == Place(running=1, queued_ahead=0, slots=1)
    assert first.places[0].ahead == 1
    assert set(second.places) == {Place(running=1, queued_ahead=1, slots=1)}
    assert second.places[-1].ahead == 2
    holder.finish()
    until(lambda: admitted == ["holder", "first"], "first's turn")
    until(lambda: second.places[-1] == Place(running=1, queued_ahead=0, slots=1), "second to move up")
    assert Place(running=0, queued_ahead=0, slots=1) not in second.places  # never told of a free slot it lacks
    first.finish()
    second.finish()
    assert [r.outcome for r in (holder, first, second)] == ["done"] * 3


def test_the_next_step_of_an_earlier_click_goes_before_later_clicks():
    """A session's maps (asked with the time of its click) wait behind the work of earlier clicks only."""
    queue, admitted = WorkQueue(slots=1, poll=0.01), []
    clicked = time.monotonic()
    trace = Run(queue, "first click: trace", admitted, since=clicked).start()
    until(lambda: len(admitted) == 1, "the first click's slot")
    later = Run(queue, "later click", admitted, since=clicked + 5).start(0)
    until(lambda: later.places != [], "the later click's place")
    trace.finish()
    until(lambda: admitted[-1] == "later click", "the later click's turn")
    latest = Run(queue, "latest click", admitted, since=clicked + 9).start(0)
    maps = Run(queue, "first click: maps", admitted, since=clicked).start(1)  # arrives last, goes first
    until(lambda: maps.places != [] and latest.places[-1].queued_ahead == 1, "the places after the maps came")
    assert maps.places[-1] == Place(running=1, queued_ahead=0, slots=1)
    assert latest.places[0] == Place(running=1, queued_ahead=0, slots=1)  # told at once that it moved back
    later.finish()
    until(lambda: len(admitted) == 3, "the next turn")
    maps.finish()
    until(lambda: len(admitted) == 4, "the last turn")
    latest.finish()
    assert admitted == ["first click: trace", "later click", "first click: maps", "latest click"]


def test_a_run_admitted_at_once_is_never_told_to_wait():
    queue, admitted = WorkQueue(slots=1, poll=0.01), []
    run = Run(queue, "alone", admitted).start()
    until(lambda: admitted == ["alone"], "its slot")
    run.finish()
    assert run.places == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, StopException])
def test_the_slot_is_released_when_the_work_raises(error):
    queue, admitted = WorkQueue(slots=1, poll=0.01), []
    failing = Run(queue, "failing", admitted, error=error).start()
    until(lambda: admitted == ["failing"], "its slot")
    waiting = Run(queue, "next", admitted).start(0)
    failing.finish()
    assert isinstance(failing.outcome, error)
    until(lambda: admitted == ["failing", "next"], "the next run's turn")
    waiting.finish()
    assert waiting.outcome == "done"
    assert queue.state() == QueueState(0, 0)


def test_a_run_that_gives_up_while_waiting_frees_its_place():
    queue, admitted = WorkQueue(slots=1, poll=0.01), []
    holder = Run(queue, "holder", admitted).start()
    until(lambda: admitted == ["holder"], "the holder's slot")
    leaving = Run(queue, "leaving", admitted, cancel_after=5).start(0)
    behind = Run(queue, "behind", admitted).start(1)
    leaving.thread.join(WAIT)
    assert isinstance(leaving.outcome, StopException)
    assert queue.state() == QueueState(running=1, waiting=1)
    until(lambda: behind.places[-1] == Place(running=1, queued_ahead=0, slots=1), "the run behind to move up")
    holder.finish()
    until(lambda: admitted == ["holder", "behind"], "the run behind to get the slot")
    behind.finish()
    assert "leaving" not in admitted
    assert queue.state() == QueueState(0, 0)


def test_n_slots_run_n_at_a_time_in_order():
    queue, admitted = WorkQueue(slots=3, poll=0.01), []
    runs = [Run(queue, name, admitted) for name in "ABCDE"]
    for run in runs[:3]:
        run.start()
    until(lambda: queue.state() == QueueState(running=3, waiting=0), "three runs in their slots")
    runs[3].start(0)
    runs[4].start(1)
    assert queue.state() == QueueState(running=3, waiting=2)
    until(lambda: runs[4].places != [], "the last run's place")
    assert runs[4].places[-1] == Place(running=3, queued_ahead=1, slots=3)
    runs[1].finish()  # one slot frees: only the first waiting run gets it
    until(lambda: len(admitted) == 4, "D's turn")
    assert admitted[3] == "D" and queue.state() == QueueState(running=3, waiting=1)
    for run in (runs[0], runs[2]):
        run.finish()
    until(lambda: len(admitted) == 5, "E's turn")
    for run in runs[3:]:
        run.finish()
    assert sorted(admitted[:3]) == ["A", "B", "C"] and admitted[3:] == ["D", "E"]
    assert queue.state() == QueueState(0, 0)


def test_slots_from_the_environment():
    assert slots_from_env({}) == DEFAULT_SLOTS == 1
    assert slots_from_env({"SPADE_WORK_SLOTS": " "}) == DEFAULT_SLOTS
    assert slots_from_env({"SPADE_WORK_SLOTS": "3"}) == 3
    for bad in ("0", "-1", "two", "1.5", str(MAX_SLOTS + 1)):
        with pytest.raises(ConfigError, match=r"SPADE_WORK_SLOTS must be a whole number from 1 to 64"):
            slots_from_env({"SPADE_WORK_SLOTS": bad})


@pytest.mark.parametrize("slots, poll", [(0, 1.0), (MAX_SLOTS + 1, 1.0), (1.5, 1.0), (1, 0.0)])
def test_bad_queue_settings_are_refused(slots, poll):
    with pytest.raises(ConfigError):
        WorkQueue(slots, poll)


def test_statistics_are_computed_once_when_sessions_ask_at_the_same_time(monkeypatch):
    """With several work slots, sessions asking for the same statistics at once share one computation (and one
    copy in memory)."""
    computed, start = [], threading.Barrier(4)

    def slow_statistics(model, image, **kwargs):
        computed.append(threading.get_ident())
        time.sleep(0.1)
        return object()

    monkeypatch.setattr(compute, "prepare_statistics", slow_statistics)
    compute.store().clear()
    loaded = SimpleNamespace(model=None, preprocessing=None, spec=SimpleNamespace(layer_selection=None))
    results = []

    def session() -> None:
        start.wait(WAIT)
        results.append(compute.get_statistics("model", "image", loaded, None, AugmentConfig(count=2)))

    threads = [threading.Thread(target=session) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    compute.store().clear()
    assert len(computed) == 1
    assert len({id(stats) for stats, _ in results}) == 1  # one object shared by all four
    assert sorted(fresh for _, fresh in results) == [False, False, False, True]
    assert compute.store()._computing == {}  # no lock left behind
