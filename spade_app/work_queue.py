"""A first-come-first-served queue with a fixed number of work slots, shared by every session of one app
server (`spade_app.runner` holds one per device type): the heavy SPADE work (statistics, solve, saliency) of
twenty browser sessions runs `slots` at a time, in the order the users asked for it, and each waiting run is told
where it stands. Plain threading, no Streamlit: the runner turns `Place` into the status line.

The order is by `since`, when the user asked (the runner passes the start of the click's script run): the second
step of one click (the saliency maps after the trace) goes before the first step of a later click, so a session
that was first is not sent to the back of the line between its steps. Equal or missing `since`: arrival order.

A run gives up its place by raising from its `on_wait` callback (Streamlit raises its stop/rerun exceptions there
when the user reruns, stops or closes the tab); a slot is released whatever the work raises.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from spade.errors import ConfigError

SLOTS_ENV = "SPADE_WORK_SLOTS"
"""Environment variable: how many runs of one device type work at the same time (default `DEFAULT_SLOTS`)."""
DEFAULT_SLOTS = 1
MAX_SLOTS = 64


def slots_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """The number of work slots `SPADE_WORK_SLOTS` asks for (a whole number in [1, MAX_SLOTS]), or DEFAULT_SLOTS
    when it is unset or empty. Raises ConfigError for anything else."""
    raw = environ.get(SLOTS_ENV, "").strip()
    if not raw:
        return DEFAULT_SLOTS
    try:
        slots = int(raw)
    except ValueError:
        slots = 0
    if not 1 <= slots <= MAX_SLOTS:
        raise ConfigError(f"{SLOTS_ENV} must be a whole number from 1 to {MAX_SLOTS}, got {raw!r}.")
    return slots


@dataclass(frozen=True)
class Place:
    """Where a waiting run stands: `running` runs hold a slot now, `queued_ahead` waiting runs came before it,
    out of `slots` slots."""

    running: int
    queued_ahead: int
    slots: int

    @property
    def ahead(self) -> int:
        """Runs ahead of this one: those working now and those waiting before it (>= 1 while it waits)."""
        return self.running + self.queued_ahead


@dataclass(frozen=True)
class QueueState:
    """A snapshot of the queue: runs holding a slot and runs waiting."""

    running: int
    waiting: int


class WorkQueue:
    """FIFO admission to `slots` concurrent work slots. Thread-safe; one instance is shared by all sessions.

    ``with queue.slot(on_wait):`` waits for its turn, then holds a slot for the body. While it waits,
    ``on_wait(place)`` is called at once and then at least every `poll` seconds (also when nothing changed, so that
    the caller can show the time waited and give up by raising); the exception is passed on and the place freed.
    """

    def __init__(self, slots: int = DEFAULT_SLOTS, poll: float = 1.0):
        if not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ConfigError(f"The number of work slots must be a whole number from 1 to {MAX_SLOTS}, got {slots!r}.")
        if not poll > 0:
            raise ConfigError(f"The queue's poll interval must be positive, got {poll!r}.")
        self.slots, self.poll = slots, poll
        self._changed = threading.Condition()
        self._waiting: list[tuple[float, int]] = []  # (since, ticket), sorted: the first in line first
        self._running = 0
        self._version = 0  # bumped on every admission and release, so a waiter never sleeps through one
        self._tickets = itertools.count()

    def state(self) -> QueueState:
        with self._changed:
            return QueueState(self._running, len(self._waiting))

    def _admit_or_place(self, entry: tuple[float, int]) -> Place | None:
        """Under the lock: take a slot for `entry` when it is first in line and a slot is free (None), else its
        place."""
        if self._waiting[0] == entry and self._running < self.slots:
            self._waiting.pop(0)
            self._running += 1
            self._version += 1
            self._changed.notify_all()  # the next in line may also fit when several slots are free
            return None
        return Place(self._running, self._waiting.index(entry), self.slots)

    @contextlib.contextmanager
    def slot(self, on_wait: Callable[[Place], None] | None = None, since: float | None = None) -> Iterator[None]:
        """Wait for a slot (first come, first served by `since`, a `time.monotonic()` reading of when the user
        asked; default: now), hold it for the body, release it however the body ends."""
        with self._changed:
            entry = (time.monotonic() if since is None else since, next(self._tickets))
            bisect.insort(self._waiting, entry)
            self._version += 1
            self._changed.notify_all()  # the ones it went ahead of are told at once
        admitted = False
        try:
            while True:
                with self._changed:
                    place = self._admit_or_place(entry)
                    version = self._version
                if place is None:
                    admitted = True
                    break
                if on_wait is not None:
                    on_wait(place)  # may raise: the finally below frees the place
                with self._changed:
                    if self._version == version:
                        self._changed.wait(self.poll)
        finally:
            if not admitted:
                with self._changed:
                    self._waiting.remove(entry)
                    self._version += 1
                    self._changed.notify_all()  # the ones behind move up (and may now be first)
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._version += 1
                self._changed.notify_all()
