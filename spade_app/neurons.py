"""The Neurons page's parts: the settings form, the run (SPADE trace for visualization + dense vs SPADE
feature visualizations and evidence, with progress into ``st.status``), and the result views.

Everything numeric comes from ``spade.featurevis`` and ``spade.visualize``; this module arranges widgets.
The trace reuses the Explore page's store (statistics per image/model/augmentations, traces per sparsity),
the comparisons live in their own small LRU store shared by all sessions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image, ImageDraw
from torch import nn

from spade import visualize
from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.defaults import default_augmentations
from spade.errors import ConfigError, SpadeError
from spade.featurevis import (
    CPU_STEPS,
    DEFAULT_METHOD,
    DEFAULT_METHOD_REASON,
    EVIDENCE_AUGMENT,
    GPU_STEPS,
    METHOD_LABELS,
    ChannelMean,
    ClassLogit,
    FeatureVisConfig,
    Neuron,
    NeuronComparison,
    Objective,
    check_objective,
    compare_neuron,
    method_label,
)
from spade.featurevis.compare import VISUALIZATION_DECISION, VISUALIZATION_TARGET, visualization_request
from spade.featurevis.side_by_side import side_by_side_workers
from spade.progress import Progress
from spade.trace import DecisionTrace
from spade_app import compute, figures, runner
from spade_app.settings import settings_for_scope, trace_sparsity_text
from spade_app.sidebar import Selection

METHOD_NOTE = DEFAULT_METHOD_REASON
"""The page's one line on the default visualization method and why."""
REQUEST_KEY = "neurons_request"
CLASS, CHANNEL = "Class logit", "Conv layer channel"
CLASSIFIER, LATE, UNIFORM = "Classifier only", "Late blocks (authors' choice)", "Uniform"
MAP_OPACITY = 0.6


@dataclass(frozen=True)
class NeuronSettings:
    """Everything a Neurons run depends on besides the image and the model.

    objective: what is maximised. method: the image parameterization (``spade.featurevis.METHOD_LABELS``; default
    the better one on the quality benchmark). sparsity: None = the objective's default profile at 0.95
    (`spade.featurevis.compare.default_visualization_profile`: the classifier alone for a class logit, the late
    blocks for a channel), or with late_blocks the authors' late blocks for any objective; else a uniform target in
    [0, 1). keep_decision: lower the sparsity until the trace keeps the top-1 class
    (`spade.featurevis.compare.visualization_request`). views / top_k: evidence views searched / shown.
    """

    objective: Objective
    steps: int
    seed: int = 0
    method: str = DEFAULT_METHOD
    augmentations: int = default_augmentations("visualize")
    sparsity: float | None = None
    late_blocks: bool = False
    keep_decision: bool = True
    views: int = EVIDENCE_AUGMENT.count
    top_k: int = 4

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(count=self.augmentations, seed=self.seed)

    @property
    def featurevis(self) -> FeatureVisConfig:
        return FeatureVisConfig(steps=self.steps, seed=self.seed, parameterization=self.method)

    @property
    def evidence_augment(self) -> AugmentConfig:
        return replace(EVIDENCE_AUGMENT, count=self.views, seed=self.seed)


@st.cache_resource
def comparison_store() -> compute.LRUStore:
    """Process-wide store of finished comparisons (a few images each; never mutated)."""
    return compute.LRUStore({"comparison": 8})


# ----------------------------------------------------------------------------------------------- form
def conv_layers(model: nn.Module) -> dict[str, int]:
    """{module name: output channels} of every ``nn.Conv2d`` (selected by type), in registration order."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def describe_objective(objective: Objective, class_name) -> str:
    """The objective's library name, with the class name for a class logit."""
    text = objective.describe()
    if isinstance(objective, ClassLogit):
        text += f" ({class_name(objective.index)})"
    return text


def default_steps(device: torch.device) -> int:
    return CPU_STEPS if torch.device(device).type == "cpu" else GPU_STEPS


def neuron_form(sel: Selection, predicted: int) -> NeuronSettings | None:
    """Draw the form; returns the settings when "Run" was pressed and they are valid (else None, errors shown)."""
    loaded = sel.loaded
    layers = conv_layers(loaded.model)
    suffix = f"{sel.model_key}_{sel.image_key}"  # defaults (the predicted class) follow the image and model
    # chosen outside the form, so that the form shows only the controls of the chosen objective and sparsity
    c_kind, c_mode = st.columns(2)
    kind = c_kind.radio("Objective", [CLASS, CHANNEL], key="nv_kind", horizontal=True,
                        help="A class logit (default: the class predicted for the image), or one channel of a "
                             "convolution layer (its mean over positions, or the single neuron at the centre).")
    target = f"{VISUALIZATION_TARGET:g}"
    late_help = (f"Late blocks: {target} on the last 30% of blocks and the classifier, 0 elsewhere (the authors' "
                 "choice for visualizations). Uniform: the slider's value on every pruned layer.")
    if kind == CLASS:  # a channel inside the network does not depend on the classifier
        mode = c_mode.radio("Sparsity of the trace", [CLASSIFIER, LATE, UNIFORM], key="nv_sparsity_mode",
                            horizontal=True,
                            help=f"Classifier only (the default for a class): {target} on the classifier, every "
                                 "other layer dense, so the picture is drawn by the dense features the image's class "
                                 "score rests on (on the calibration photos its pictures were closer to the photo "
                                 f"than the dense ones far more often than the late blocks' were). {late_help}")
    else:
        mode = c_mode.radio("Sparsity of the trace", [LATE, UNIFORM], key="nv_channel_sparsity_mode",
                            horizontal=True, help=late_help)
    class_index, layer, channel, centre, uniform = predicted, None, 0, False, loaded.spec.default_sparsity
    with st.form("neuron_settings"):
        c_neuron, c_vis, c_trace = st.columns(3)
        with c_neuron:
            st.markdown("**Neuron**")
            if kind == CLASS:
                class_index = st.selectbox(
                    "Class (default: the prediction)", range(len(loaded.class_names)), index=predicted,
                    key=f"nv_class_{suffix}",
                    format_func=lambda i: f"{loaded.class_name(i)} ({i})" + (" · predicted" if i == predicted else ""))
            else:
                names = list(layers)
                layer = st.selectbox("Conv layer", names, index=len(names) - 1 if names else None, key="nv_layer",
                                     format_func=lambda n: f"{n} ({layers[n]} channels)", disabled=not names)
                channel = st.number_input("Channel", 0, max(layers.values(), default=1) - 1, 0, key="nv_channel")
                centre = st.checkbox("Centre neuron only", False, key="nv_centre",
                                     help="The single neuron at the centre of the channel's map, instead of the "
                                          "channel's mean over all positions.")
        with c_vis:
            st.markdown("**Visualization**")
            methods = list(METHOD_LABELS)
            method = st.selectbox("Method", methods, index=methods.index(DEFAULT_METHOD), key="nv_method",
                                  format_func=method_label, help=DEFAULT_METHOD_REASON)
            steps = st.number_input("Steps", 1, 4096, default_steps(loaded.device), step=16, key="nv_steps",
                                    help=f"Adam steps (library default: {CPU_STEPS} on the CPU, {GPU_STEPS} on a GPU).")
            seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="nv_seed",
                                   help="Same seed, same images (also seeds the augmentations).")
            views = st.number_input("Evidence views", 1, 1024, EVIDENCE_AUGMENT.count, step=8, key="nv_views",
                                    help="Random crops of the image searched for the views that excite it most.")
            top_k = st.number_input("Top views shown", 1, 16, 4, key="nv_top_k")
        with c_trace:
            st.markdown("**SPADE trace**")
            augmentations = st.number_input("Augmentations", 1, 4096, default_augmentations("visualize", loaded.device),
                                            step=8, key="nv_count")
            if mode == UNIFORM:
                uniform = st.slider("Uniform sparsity", 0.0, 0.99, loaded.spec.default_sparsity, step=0.01,
                                    key="nv_sparsity")
            late = ", ".join(f"{t:g}" for t in VISUALIZATION_DECISION.levels(VISUALIZATION_TARGET))
            uniform_factors = ", ".join(f"{f:g}" for f in KeepDecision().factors)
            keep = st.checkbox("Keep the model's decision", True, key="nv_keep",
                               help="If the trace changes the top-1 class, lower the sparsity until it keeps it: the "
                                    f"classifier's or the late blocks' target to {late}, or the uniform one to "
                                    f"{uniform_factors} times the chosen value.")
        submitted = st.form_submit_button("Run", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return None
    try:
        objective = neuron_objective(kind, int(class_index), layer, int(channel), bool(centre), layers)
        return NeuronSettings(objective=objective, steps=int(steps), seed=int(seed), method=method,
                              augmentations=int(augmentations),
                              sparsity=round(float(uniform), 4) if mode == UNIFORM else None,
                              late_blocks=mode == LATE, keep_decision=bool(keep),
                              views=int(views), top_k=int(top_k))
    except SpadeError as exc:
        st.error(str(exc))
        return None


def neuron_objective(kind: str, class_index: int, layer: str | None, channel: int, centre: bool,
                     layers: dict[str, int]) -> Objective:
    """The objective the form's values ask for (kind: CLASS or CHANNEL; layers: {conv layer: channels});
    ConfigError (one sentence for the user) when the layer or channel does not exist."""
    if kind == CLASS:
        return ClassLogit(class_index)
    if layer is None:
        raise ConfigError("This model has no convolution layer; choose a class logit instead.")
    if layer not in layers or not 0 <= channel < layers[layer]:
        raise ConfigError(f"Layer {layer} has {layers.get(layer, 0)} channels; pick a channel from 0 to "
                          f"{layers.get(layer, 0) - 1}.")
    return Neuron(layer, channel) if centre else ChannelMean(layer, channel)


def active_settings(sel: Selection, submitted: NeuronSettings | None) -> NeuronSettings | None:
    """Just submitted settings, or the last ones run on this same image and model."""
    return settings_for_scope((sel.model_key, sel.image_key), submitted, key=REQUEST_KEY)


# ----------------------------------------------------------------------------------------------- run
def _trace(sel: Selection, settings: NeuronSettings, progress) -> DecisionTrace:
    """The visualization trace from the shared store: the same as `spade.featurevis.visualization_trace`, with
    the statistics reused across sparsities (and shared with the Explore page)."""
    loaded = sel.loaded
    requested, decision = visualization_request(loaded.model, settings.sparsity, settings.keep_decision,
                                                loaded.spec.layer_selection,
                                                None if settings.late_blocks else settings.objective)
    return compute.get_trace(sel.model_key, sel.image_key, loaded, sel.image, settings.augment, requested, decision,
                             loaded.spec.solver, progress)[0]


PREVIEW_PX = 160
PREVIEW_LABELS = {"dense": "Dense model", "trace": "SPADE trace"}


def preview_drawer(steps: int):
    """A `spade.featurevis.compare_neuron` preview callback that shows the dense and the SPADE image as they are
    optimised, side by side where it is first called (the run's status box), captioned with the step."""
    slots: dict[str, st.delta_generator.DeltaGenerator] = {}

    def draw(which: str, step: int, image: np.ndarray) -> None:
        if not slots:
            columns = st.columns(2)
            slots.update({name: col.empty() for name, col in zip(PREVIEW_LABELS, columns)})
        slots[which].image(image, width=PREVIEW_PX, caption=f"{PREVIEW_LABELS[which]}: step {step} of {steps}")

    return draw


def run(sel: Selection, settings: NeuronSettings) -> tuple[DecisionTrace, NeuronComparison] | None:
    """Trace + dense/SPADE visualizations and evidence, with per-stage progress in a status box.
    Errors are shown (the library's message), never raised."""
    loaded = sel.loaded

    def work(draw: Progress) -> tuple[DecisionTrace, NeuronComparison]:
        check_objective(loaded.model, settings.objective, loaded.to_batch(sel.image))
        kept = _trace(sel, settings, draw)
        key = (sel.model_key, sel.image_key, settings.augment, repr(kept.trace.settings.get("sparsity")),
               settings.objective, settings.featurevis, settings.evidence_augment, settings.top_k)
        result = comparison_store().get("comparison", key)
        if result is None:
            result = compare_neuron(loaded.model, kept.trace.model, sel.image, settings.objective,
                                    preprocessing=loaded.preprocessing, config=settings.featurevis,
                                    evidence_augment=settings.evidence_augment, top_k=settings.top_k,
                                    feature_layer=loaded.spec.last_conv_stage, progress=draw,
                                    preview=preview_drawer(settings.steps))
            comparison_store().put("comparison", key, result)
        return kept, result

    def done(outcome: tuple[DecisionTrace, NeuronComparison]) -> str:
        kept, result = outcome
        together = side_by_side_workers({"dense": loaded.model, "trace": kept.trace.model}) > 1
        return (f"Done: {result.dense.settings['steps']} steps, dense {result.dense.seconds:.1f} s, "
                f"SPADE {result.trace.seconds:.1f} s" + (" (side by side, one CPU thread each)" if together else ""))

    return runner.run_guarded("Visualizing the neuron…", loaded.device, work, failed="Visualization failed",
                              done=done)


# ----------------------------------------------------------------------------------------------- results
def curve_figure(result: NeuronComparison, height: int = 320) -> go.Figure:
    """Objective per optimisation step, dense vs SPADE (values on each step's randomly transformed image)."""
    fig = go.Figure()
    for color, (label, vis) in zip(figures.COLORS, (("dense", result.dense), ("SPADE trace", result.trace))):
        fig.add_scatter(x=list(range(1, len(vis.curves) + 1)), y=vis.curves[:, 0].tolist(), mode="lines", name=label,
                        line=dict(color=color))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis_title="objective", legend=dict(orientation="h", y=1.12))
    return fig


def map_panels(result: NeuronComparison, opacity: float = MAP_OPACITY) -> tuple[np.ndarray, list[np.ndarray], float]:
    """(image uint8, [dense overlay, SPADE overlay], shared scale): the neuron's maps on one signed colour scale."""
    dense, sparse = result.dense_evidence, result.trace_evidence
    image = (dense.image * 255).round().astype(np.uint8)
    a, b, scale = visualize.joint_normalize(dense.activation_map, sparse.activation_map, signed=True)
    return image, [visualize.overlay(image, a, opacity, True), visualize.overlay(image, b, opacity, True)], scale


def side_by_side_png(result: NeuronComparison, title: str, panel: int = 256) -> bytes:
    """One PNG: dense visualization | SPADE visualization | dense map | SPADE map, with titles."""
    panels = [result.dense.image_uint8(0), result.trace.image_uint8(0)]
    names = ["dense", "SPADE"]
    if result.dense_evidence is not None:
        _, overlays, _ = map_panels(result)
        panels += overlays
        names += ["dense map", "SPADE map"]
    top, gap = 40, 8
    canvas = Image.new("RGB", (len(panels) * (panel + gap) + gap, panel + top + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill="black")
    for i, (array, name) in enumerate(zip(panels, names)):
        x = gap + i * (panel + gap)
        canvas.paste(Image.fromarray(array).resize((panel, panel), Image.BILINEAR), (x, top))
        draw.text((x, top - 14), name, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def show(sel: Selection, settings: NeuronSettings, kept: DecisionTrace, result: NeuronComparison) -> None:
    loaded = sel.loaded
    trace = kept.trace
    name = describe_objective(result.objective, loaded.class_name)
    kept_weights, pruned_weights = trace.pruned_params
    share = kept_weights / max(pruned_weights, 1)
    st.subheader(f"Neuron: {name}")
    sparsity = trace_sparsity_text(trace)
    # the sparsity is stated once: in the caption, or with the back-off's reason in the notice
    facts = [f"{share:.1%} of the pruned layers' weights kept", f"logit cosine {trace.logit_cosine:.3f}",
             f"{settings.augmentations} augmentations", f"seed {settings.seed}",
             f"method {method_label(settings.method)}"]
    st.caption(" · ".join(facts if kept.backed_off else [f"SPADE trace: {sparsity}", *facts]))
    if kept.backed_off:
        st.info(f"SPADE trace: {sparsity}. At the requested sparsity the trace changed the model's top-1 class, so "
                "the sparsity was lowered.", icon=":material/info:")
    if not trace.top1_agrees:
        st.warning("The trace does not keep the model's top-1 class, so its visualization may not show what the "
                   "model used: lower the sparsity or add augmentations.", icon=":material/warning:")
    st.markdown("#### Feature visualizations")
    c1, c2 = st.columns(2)
    for col, label, vis in ((c1, "Dense model", result.dense), (c2, "SPADE trace", result.trace)):
        col.image(vis.image_uint8(0), caption=f"{label}: objective {vis.final_values[0]:.3f}", width="stretch")
    st.markdown("#### Objective during the optimisation")
    st.plotly_chart(figures.for_projector(curve_figure(result), sel.presentation), width="stretch")
    if result.dense_evidence is not None:
        st.markdown("#### The neuron on the image")
        image, overlays, scale = map_panels(result)
        dense_ev, trace_ev = result.dense_evidence, result.trace_evidence
        st.caption(f"{dense_ev.map_kind[0].upper()}{dense_ev.map_kind[1:]}; {visualize.scale_label(scale, True)}; "
                   "red positive, blue negative.")
        cols = st.columns(3)
        cols[0].image(image, caption="image (model's view)", width="stretch")
        cols[1].image(overlays[0], caption=f"dense: {dense_ev.value:.3f} on the image", width="stretch")
        cols[2].image(overlays[1], caption=f"SPADE: {trace_ev.value:.3f} on the image", width="stretch")
        st.caption(result.evidence_note())
        st.markdown("#### Augmented views that excite it most")
        for label, ev in (("Dense model", dense_ev), ("SPADE trace", trace_ev)):
            st.caption(f"{label} (of {len(ev.all_view_values)} views)")
            st.image([(v * 255).round().astype(np.uint8) for v in ev.views], width=110,
                     caption=[f"{v:.2f}" for v in ev.view_values])
    stem = f"neuron_{loaded.spec.name}_{sel.image_label.rsplit('.', 1)[0]}"
    title = f"{sel.model_label} · {sel.image_label} · {name} · {method_label(settings.method)} · {sparsity}"
    st.download_button("Side by side (PNG)", side_by_side_png(result, title), file_name=f"{stem}.png",
                       mime="image/png", icon=":material/image:", on_click="ignore")
