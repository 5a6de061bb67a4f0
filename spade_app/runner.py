"""The one guarded runner of the app's long work: a ``st.status`` box with progress, the GPU slot, and the
errors (the library's SpadeError, out of GPU memory) shown on the page instead of raised."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st
import torch

from spade.errors import SpadeError
from spade.progress import Progress
from spade_app import compute

T = TypeVar("T")

OOM_HINT = "Out of GPU memory: use fewer augmentations, a smaller model, or the CPU (device in the sidebar)."
WAITING = "Waiting for the GPU: another session is using it…"


def stage_progress() -> Progress:
    """A library progress callback that draws one Streamlit progress bar per stage, where it is called."""
    bars: dict[str, st.delta_generator.DeltaGenerator] = {}

    def draw(stage: str, fraction: float) -> None:
        if stage not in bars:
            bars[stage] = st.progress(0.0)
        bars[stage].progress(min(max(fraction, 0.0), 1.0), text=f"{stage}: {fraction:.0%}")

    return draw


def run_guarded(label: str, device: torch.device | str, work: Callable[[Progress], T], *, failed: str,
                done: Callable[[T], str], progress: Callable[[], Progress] = stage_progress) -> T | None:
    """``work(callback)`` in a status box labelled `label`, holding the GPU slot of `device` (the box says when
    it waits for it); ``progress()`` makes the callback, drawn in the box. ``done(result)`` runs in the box after
    the slot is released (it may draw there or keep the result) and gives the box's final label. SpadeError and
    out of GPU memory (also from `done`) are shown with ``st.error``, the box labelled `failed`; then None."""
    with st.status(label, expanded=True) as status:
        draw = progress()

        def waiting() -> None:
            status.update(label=WAITING, state="running")

        try:
            with compute.gpu_slot(device, on_wait=waiting):
                status.update(label=label)
                result = work(draw)
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
