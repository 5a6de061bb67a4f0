"""The study designer's preview: each item's visualizations (dense and SPADE) before the study is created.

The pictures come from ``spade_study.create.item_visualizations`` (what ``create_study`` makes), with fewer
optimisation steps (PREVIEW_STEPS at most; the preview says so). Finished previews live in a small LRU store
shared by all sessions, one entry per image, neuron and visualization settings, so changing one image recomputes
only that one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from spade.featurevis import FeatureVisConfig, method_label
from spade.progress import Progress
from spade_app import compute, runner
from spade_app.sidebar import Selection
from spade_study.create import item_visualizations
from spade_study.design import VisualizationSettings

PREVIEW_STEPS = 32
"""Optimisation steps of a preview picture (the study's own count when that is smaller)."""
PREVIEW_KEY = "sd_preview"
PREVIEW_PX = 200
LABELS = {"dense": "Dense model", "spade": "SPADE trace"}


@dataclass(frozen=True)
class PreviewImage:
    """One image to preview: its caption (markdown: user text escaped by the caller), content key
    (``loaders.digest``), RGB PIL image and neuron (class)."""

    caption: str
    key: str
    image: object
    neuron: int


@st.cache_resource
def preview_store() -> compute.LRUStore:
    """Process-wide store of finished previews ({condition: (H, W, 3) uint8}); never mutated."""
    return compute.LRUStore({"preview": 64})


def preview_steps(vis: VisualizationSettings, default_steps: int) -> int:
    """Steps of the preview pictures: the study's steps (``default_steps`` when it has none), at most
    PREVIEW_STEPS."""
    return min(PREVIEW_STEPS, vis.steps or default_steps)


def _key(sel: Selection, item: PreviewImage, conditions: tuple[str, ...], vis: VisualizationSettings,
         steps: int) -> tuple:
    return (sel.model_key, item.key, item.neuron, conditions, vis, steps)


def _compute(sel: Selection, items: list[PreviewImage], conditions: tuple[str, ...], vis: VisualizationSettings,
             steps: int, draw: Progress) -> None:
    loaded = sel.loaded
    config = FeatureVisConfig(steps=steps, size=vis.size, seed=vis.seed, parameterization=vis.method)
    dense_cache: dict[int, np.ndarray] = {}
    missing = [item for item in items if preview_store().get("preview", _key(sel, item, conditions, vis, steps))
               is None]
    for done, item in enumerate(missing):
        def step(stage: str, fraction: float, prefix=item.caption) -> None:
            draw(f"{prefix}: {stage}", fraction)

        pictures, _ = item_visualizations(loaded.model, item.image.convert("RGB"), item.neuron, conditions, vis,
                                          config, preprocessing=loaded.preprocessing,
                                          selection=loaded.spec.layer_selection,
                                          solver=loaded.spec.solver,
                                          dense_cache=dense_cache, progress=step)
        preview_store().put("preview", _key(sel, item, conditions, vis, steps), pictures)
        draw("Images previewed", (done + 1) / len(missing))


def preview_section(sel: Selection, items: list[PreviewImage], conditions: tuple[str, ...],
                    vis: VisualizationSettings, default_steps: int) -> None:
    """A "Preview visualizations" button; below it, each image with its visualizations once computed (also after
    a rerun, as long as the settings stay the same)."""
    conditions = tuple(c for c in LABELS if c in conditions)
    if not items or not conditions:
        return
    steps = preview_steps(vis, default_steps)
    st.markdown("**Preview**")
    study_steps = vis.steps or default_steps
    rougher = f" instead of the study's {study_steps}, so rougher than participants will see them" if (
        steps < study_steps) else ", as in the study"
    st.caption(f"Each item's visualizations with the {method_label(vis.method)} method, made with {steps} "
               f"optimisation steps{rougher}. Computed once per image and setting.")
    keys = [_key(sel, item, conditions, vis, steps) for item in items]
    ready = all(preview_store().get("preview", key) is not None for key in keys)
    slot = st.empty()
    if not ready and slot.button("Preview visualizations", icon=":material/preview:", key="sd_preview_button"):
        runner.run_guarded("Previewing the visualizations…", sel.loaded.device,
                           lambda draw: _compute(sel, items, conditions, vis, steps, draw),
                           failed="Preview failed", done=lambda _: f"Preview ready ({steps} steps)")
        ready = all(preview_store().get("preview", key) is not None for key in keys)
        if ready:
            slot.empty()  # the button has done its work
    if not ready:
        return
    for item, key in zip(items, keys):
        pictures = preview_store().get("preview", key)
        cols = st.columns(1 + len(conditions))
        cols[0].image(item.image.convert("RGB"), width=PREVIEW_PX, caption=item.caption)
        for col, condition in zip(cols[1:], conditions):
            col.image(pictures[condition], width=PREVIEW_PX, caption=f"{LABELS[condition]} (preview)")

