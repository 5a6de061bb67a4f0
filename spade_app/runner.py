"""The one guarded runner of the app's long work: a ``st.status`` box with progress, a place in the server's
work queue (`spade_app.work_queue`: first come, first served, `SPADE_WORK_SLOTS` runs at a time per device
type, the waiting session told how many runs are ahead of it), and the errors (the library's SpadeError, out of
GPU memory) shown on the page instead of raised."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from spade.errors import SpadeError
from spade.progress import Progress
from spade_app.work_queue import Place, WorkQueue, slots_from_env

T = TypeVar("T")

OOM_HINT = "Out of GPU memory: use fewer augmentations, a smaller model, or the CPU (device in the sidebar)."


@st.cache_resource(show_spinner=False)
def work_queue(device_type: str) -> WorkQueue:
    """The server's queue for work on `device_type` ("cpu", "cuda", ...), shared by every session; its slots
    come from the SPADE_WORK_SLOTS environment variable (default 1)."""
    return WorkQueue(slots_from_env())


_asked_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_asked_at_lock = threading.Lock()


def asked_at() -> float:
    """When the current script run first asked for a work slot (`time.monotonic()`): the order of the queue, so
    the later steps of one click (trace, then maps) keep that click's place. Keyed weakly by the object Streamlit
    1.67 makes anew for every script run (its ``parallel_coordinator``); now, outside a script run."""
    ctx = get_script_run_ctx(suppress_warning=True)
    run = getattr(ctx, "parallel_coordinator", None)
    if run is None:
        return time.monotonic()
    with _asked_at_lock:
        return _asked_at.setdefault(run, time.monotonic())


def _runs(count: int) -> str:
    return "1 run" if count == 1 else f"{count} runs"


def waiting_label(place: Place, seconds: float) -> str:
    """The status line of a run waiting in the queue for `seconds`."""
    return f"Waiting: {_runs(place.ahead)} ahead of you ({seconds:.0f} s so far)"


def waiting_note(slots: int) -> str:
    """What the status box says while its run waits."""
    jobs = "one run" if slots == 1 else f"{slots} runs"
    return (f"This server works on {jobs} at a time for all its users, in the order they were started; yours "
            "starts when the runs ahead of it are done. Leaving or rerunning the page gives up its place.")


def waited_note(seconds: float, ahead: int) -> str:
    """What the status box keeps once a run that had to wait got its turn."""
    return f"Waited {seconds:.0f} s in the queue behind {_runs(ahead)}."


def stage_progress() -> Progress:
    """A library progress callback that draws one Streamlit progress bar per stage, where it is called."""
    bars: dict[str, st.delta_generator.DeltaGenerator] = {}

    def draw(stage: str, fraction: float) -> None:
        if stage not in bars:
            bars[stage] = st.progress(0.0)
        bars[stage].progress(min(max(fraction, 0.0), 1.0), text=f"{stage}: {fraction:.0%}")

    return draw


def run_guarded(label: str, device: torch.device | str, work: Callable[[Progress], T], *, failed: str,
                done: Callable[[T], str], progress: Callable[[], Progress] = stage_progress,
                ready: Callable[[], T | None] | None = None) -> T | None:
    """``work(callback)`` in a status box labelled `label`, holding a slot of the work queue of `device`'s type;
    while it waits, the box's label says how many runs are ahead and updates every second (each update is where
    Streamlit stops a run whose session reran, stopped or closed: its place is freed). ``progress()`` makes the
    callback, drawn in the box. ``done(result)`` runs in the box after the slot is released (it may draw there or
    keep the result) and gives the box's final label. SpadeError and out of GPU memory (also from `done`) are shown
    with ``st.error``, the box labelled `failed`; then None. ``ready()``, when given, returns the result without work
    when it is already cached (else None): such a rerun takes no slot, so it never waits behind other sessions."""
    with st.status(label, expanded=True) as status:
        try:
            cached = ready() if ready is not None else None
            if cached is not None:
                status.update(label=done(cached), state="complete", expanded=False)
                return cached
            queue = work_queue(torch.device(device).type)
            note = st.empty()
            asked = time.monotonic()
            since = asked_at()
            first: list[Place] = []

            def waiting(place: Place) -> None:
                if not first:
                    first.append(place)
                    note.caption(waiting_note(queue.slots))
                status.update(label=waiting_label(place, time.monotonic() - asked), state="running", expanded=True)

            with queue.slot(on_wait=waiting, since=since):
                if first:
                    note.caption(waited_note(time.monotonic() - asked, first[0].ahead))
                    status.update(label=label, expanded=True)
                result = work(progress())
            final = done(result)
        except torch.OutOfMemoryError:
            status.update(label=f"{failed}: out of GPU memory", state="error", expanded=True)
            st.error(OOM_HINT)
            return None
        except SpadeError as exc:
            status.update(label=failed, state="error", expanded=True)
            st.error(str(exc))
            return None
        status.update(label=final, state="complete", expanded=False)
    return result
