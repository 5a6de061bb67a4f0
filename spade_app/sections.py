"""The sections that show one SPADE run, shared by Explore, the Trojan lab and How SPADE works: the run with
progress, predictions, per-layer faithfulness, saliency rows and downloads. Everything numeric comes from the
library."""

from __future__ import annotations

import contextlib
import io
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict
from importlib import metadata

import streamlit as st

from spade.errors import SpadeError
from spade.prediction import Prediction
from spade.progress import Progress
from spade.saliency import METHODS, AttributionPair, Takeaway
from spade.trace import DecisionTrace, SpadeTrace
from spade_app import compute, figures, maps, runner
from spade_app.presentation import table as projector_table
from spade_app.settings import (
    RunSettings,
    closeness_reason,
    current_settings,
    method_labels,
    trace_sparsity_text,
)
from spade_app.sidebar import Selection


# ----------------------------------------------------------------------------------------------- run
def augmentation_strip(sel: Selection, settings: RunSettings | None = None, n: int = 6) -> None:
    """A row of the first `n` augmented views the run uses (same settings and seed)."""
    settings = settings or current_settings()
    try:
        views = compute.augmentation_preview(sel.model_key, sel.image_key, settings.augment, sel.loaded, sel.image, n)
    except SpadeError as exc:
        st.error(str(exc))
        return
    st.caption(f"The first {len(views)} of the {settings.augment.count} augmented views SPADE fits the trace to:")
    st.image(views, width=110)


def run_trace(sel: Selection, settings: RunSettings) -> SpadeTrace | None:
    """Statistics (cached per image, model and augmentation settings) + solve (cached per sparsity), with a
    status box showing per-stage progress and timings. Errors are shown, never raised."""

    def work(draw: Progress) -> tuple[DecisionTrace, bool, bool]:
        return compute.get_trace(sel.model_key, sel.image_key, sel.loaded, sel.image, settings.augment,
                                 settings.sparsity, settings.decision, settings.solver, draw)

    def done(outcome: tuple[DecisionTrace, bool, bool]) -> str:
        kept, fresh_stats, fresh_trace = outcome
        rows = []
        refit = ("output refit",) if "output refit" in kept.trace.seconds else ()
        for stage in ("augment", "statistics", "solve", *refit):
            took = kept.trace.seconds.get(stage)
            reused = not fresh_stats if stage in ("augment", "statistics") else not fresh_trace
            rows.append({"stage": stage, "seconds": round(took, 2) if took is not None else None,
                         "this run": "reused from cache" if reused else "computed"})
        st.dataframe(rows, hide_index=True, width="content")
        return ("SPADE trace ready: " + trace_sparsity_text(kept.trace)
                + f", {settings.augment.count} augmentations"
                + (" (statistics reused, re-solved)" if not fresh_stats and fresh_trace else "")
                + (" (from cache)" if not fresh_stats and not fresh_trace else ""))

    def ready() -> tuple[DecisionTrace, bool, bool] | None:
        return compute.cached_trace(sel.model_key, sel.image_key, settings.augment, settings.sparsity,
                                    settings.decision, settings.solver)

    outcome = runner.run_guarded("Running SPADE…", sel.loaded.device, work, failed="SPADE failed", done=done,
                                 ready=ready)
    if outcome is None:
        return None
    kept = outcome[0]
    if kept.backed_off:
        result = ("which keeps the decision" if kept.trace.top1_agrees
                  else "the ladder's last rung, which still predicts another class")
        st.info(f"At the requested sparsity the trace predicted another class than the dense model, so it was "
                f"re-solved at {kept.scale:g} × that sparsity, {result} "
                "(\"Keep the model's decision\" in the settings).", icon=":material/tune:")
    return kept.trace


# ----------------------------------------------------------------------------------------------- results
def _named(sel: Selection, pred) -> list[tuple[int, str, float]]:
    return [(p.index, sel.loaded.class_name(p.index), p.probability) for p in pred]


def prediction_comparison(sel: Selection, trace: SpadeTrace) -> None:
    dense, sparse = _named(sel, trace.dense_top5), _named(sel, trace.trace_top5)
    if trace.top1_agrees:
        st.success(f"Top-1 kept: the trace predicts **{sparse[0][1]}** like the dense model.",
                   icon=":material/check_circle:")
    else:
        st.error(f"Top-1 differs: the dense model predicts **{dense[0][1]}**, the trace **{sparse[0][1]}**. "
                 "Lower the sparsity or add augmentations for a more faithful trace.", icon=":material/warning:")
    st.caption(f"Sparsity: {trace_sparsity_text(trace)}")
    refit = trace.settings.get("output_refit")
    if refit:
        st.caption(f"Classifier refit on: the last layer (`{refit['layer']}`) was fitted again on the trace's own "
                   "features, so that its class scores on this image and its augmented views match the dense "
                   "model's (relative squared error of those scores "
                   f"{refit['output_error_before']:.2%} before the refit, {refit['output_error']:.2%} after).")
    m1, m2, m3 = st.columns(3)
    kept, total = trace.pruned_params
    m1.metric("Weights kept in pruned layers", f"{kept / max(total, 1):.1%}",
              help=f"{kept:,} of {total:,} (the layers with a target above 0)")
    m2.metric("Logit cosine similarity (dense vs trace)", f"{trace.logit_cosine:.3f}")
    m3.metric("Pruned layers", f"{len(trace.pruned_layers)} of {len(trace.layers)}",
              help="Layers with a target above 0, of all the layers SPADE may prune in this model.")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(f"**Dense prediction:** {dense[0][1]} ({dense[0][2]:.1%})")
        st.plotly_chart(figures.for_projector(figures.top_k_bars({"dense": dense}, height=260), sel.presentation),
                        width="stretch")
    with c2:
        st.markdown(f"**Trace prediction:** {sparse[0][1]} ({sparse[0][2]:.1%})")
        st.plotly_chart(figures.for_projector(figures.top_k_bars({"SPADE trace": sparse}, height=260),
                                            sel.presentation), width="stretch")


def layer_table(trace: SpadeTrace) -> list[dict]:
    return [{"layer": r.name, "block": r.block, "kind": r.kind, "target": r.target,
                          "achieved": round(r.achieved, 4), "rel. error": r.error, "kept": r.kept,
                          "weights": r.params} for r in trace.layers]


def layer_section(trace: SpadeTrace, presentation: bool = False, title: str | None = "Per-layer faithfulness") -> None:
    if title:  # None under a heading of the caller's (How SPADE works' steps)
        st.subheader(title)
    st.caption("Achieved vs target sparsity, and the relative reconstruction error ‖W_s X − W X‖² / ‖W X‖² of "
               "each layer on the augmented views.")
    st.plotly_chart(figures.for_projector(figures.layer_chart(trace.layers), presentation), width="stretch")
    with st.expander("Per-layer table", expanded=False):
        projector_table(layer_table(trace), presentation, {"rel. error": "{:.2e}"}, hide_index=True, width="stretch",
                        column_config={"rel. error": st.column_config.NumberColumn(format="%.2e")})


def _method_settings(sel: Selection, name: str):
    method = METHODS[name]
    # GradCAM-type methods explain the model's last convolutional stage, as its spec names it.
    return method.settings(layer=sel.loaded.spec.last_conv_stage) if method.accepts("layer") else None


def saliency_section(sel: Selection, settings: RunSettings, trace: SpadeTrace,
                     title: str | None = "Saliency: dense vs SPADE") -> dict:
    """Target class choice, the maps of each chosen method on the dense model and on the trace, and the
    comparison view. Returns {method: summary} for the JSON report."""
    labels = method_labels()
    if not labels:
        st.info("Saliency maps (dense vs SPADE) will appear here once the library's saliency methods are available.")
        return {}
    if title:  # None under a heading of the caller's (How SPADE works' steps)
        st.subheader(title)
    chosen = [m for m in settings.methods if m in labels]
    if not chosen:
        st.info("Choose one or more saliency methods in the settings and run again to compare maps.")
        return {}
    n_classes = len(sel.loaded.class_names)
    predicted = trace.dense_top5[0].index
    target = st.selectbox("Explained class (default: the dense model's prediction)", range(n_classes),
                          index=predicted, format_func=lambda i: f"{sel.loaded.class_name(i)} ({i})",
                          key=f"ex_target_{sel.model_key}_{sel.image_key}")
    x = sel.loaded.preprocessing(sel.image)
    image = sel.loaded.preprocessing.to_uint8(x)
    pairs = attribution_pairs(sel, settings, dict.fromkeys(chosen, trace), target)
    if pairs is None:
        return {}
    takeaways = {name: takeaway(sel, pair, trace) for name, pair in pairs.items()}
    why_close = closeness_reason(trace)
    maps_view(image, pairs, takeaways, why_close,
              f"{sel.model_label} · {sel.image_label} · class {sel.loaded.class_name(target)} · "
              f"{trace_sparsity_text(trace)}")
    return {name: {"label": labels[name], "target": int(target), "target_name": sel.loaded.class_name(target),
                   "rank_correlation_dense_vs_spade": _finite(takeaways[name].rank_correlation),
                   "top10_mass_moved": _finite(takeaways[name].moved),
                   "takeaway": takeaways[name].sentence(why_close),
                   "dense_seconds": round(pair.dense.seconds, 3), "spade_seconds": round(pair.spade.seconds, 3),
                   "settings": repr(pair.settings)} for name, pair in pairs.items()}


def takeaway(sel: Selection, pair: AttributionPair, trace: SpadeTrace, mask=None) -> Takeaway:
    """The pair's takeaway (spade.saliency.takeaway) with the dense and the trace top-1 named by the model."""
    def named(prediction: Prediction) -> Prediction:
        return Prediction(prediction.index, sel.loaded.class_name(prediction.index), prediction.probability)

    return pair.takeaway(mask, dense_top1=named(trace.dense_top5[0]), trace_top1=named(trace.trace_top5[0]))


def takeaway_line(result: Takeaway, why_close: str, label: str) -> None:
    """The takeaway's number as a metric and its sentence beside it. label: the metric's label."""
    c_number, c_text = st.columns([1, 4], vertical_alignment="center")
    if result.mask_spade is not None:
        c_number.metric(label, f"{result.number:.0%}", f"{result.mask_spade - result.mask_dense:+.0%} vs dense",
                        help="Share of the SPADE map's top-10 % mass (the sum of |attribution| over its strongest "
                             "tenth of pixels) that lies on the trigger; the delta compares it with the dense map's.")
    else:
        c_number.metric(label, "–" if result.moved != result.moved else f"{result.moved:.0%}",
                        help="Share of the SPADE map's top-10 % mass (the sum of |attribution| over its strongest "
                             "tenth of pixels) that lies outside the dense map's strongest tenth.")
    c_text.markdown(result.sentence(why_close))


def attribution_pairs(sel: Selection, settings: RunSettings, traces: Mapping[str, SpadeTrace], target: int
                      ) -> dict[str, AttributionPair] | None:
    """{method: its AttributionPair of class `target` on `sel.image`, the SPADE map on ``traces[method]``} for each
    method of ``traces``; each attribution is cached in the store, so a dense map is shared by every trace. Computed
    inside a status box with a progress bar. Errors (SpadeError, out of GPU memory) are shown and give None."""
    labels = method_labels()
    chosen = list(traces)
    x = sel.loaded.preprocessing(sel.image)
    dense_key = ("dense", sel.model_key, sel.image_key)
    stats_key = compute.statistics_key(sel.model_key, sel.image_key, settings.augment)

    def sparse_key(trace: SpadeTrace) -> tuple:
        return compute.trace_key(stats_key, repr(trace.settings["sparsity"]), settings.solver), sel.image_key

    steps = 2 * len(chosen)

    def one_bar() -> Progress:
        bar = st.progress(0.0)
        return lambda text, fraction: bar.progress(min(1.0, fraction), text=text)

    def work(draw: Progress) -> dict[str, AttributionPair]:
        pairs: dict[str, AttributionPair] = {}
        for i, name in enumerate(chosen):
            ms = _method_settings(sel, name)
            trace = traces[name]
            both = []
            for j, (key, model, which) in enumerate(((dense_key, sel.loaded.model, "dense"),
                                                     (sparse_key(trace), trace.model, "SPADE"))):
                def progress(stage: str, fraction: float, _k=2 * i + j, _w=f"{labels[name]} on the {which}") -> None:
                    draw(f"{_w} model: {fraction:.0%}", (_k + fraction) / steps)

                both.append(compute.get_attribution(key, model, x, name, target, ms, progress))
            pairs[name] = AttributionPair(x, *both)
        return pairs

    def done(pairs: dict[str, AttributionPair]) -> str:
        took = sum(pair.dense.seconds + pair.spade.seconds for pair in pairs.values())
        return f"Saliency maps ready ({len(chosen)} method(s), {took:.1f} s of compute)"

    return runner.run_guarded("Computing saliency maps…", sel.loaded.device, work, failed="Saliency failed",
                              done=done, progress=one_bar)


def _finite(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN (constant map) -> null in JSON


def scale_radio(key: str) -> bool:
    """The colour scale choice (shared by default); True for one scale per map."""
    return st.radio("Colour scale", maps.SCALES, key=key, horizontal=True, help=maps.SCALE_HELP) == maps.PER_MAP


@st.fragment
def maps_view(image, pairs: dict[str, AttributionPair], takeaways: dict[str, Takeaway], why_close: str,
              title: str) -> None:
    """Per method: its takeaway (a number and a sentence), then image | dense | SPADE | difference. Opacity, map
    kind and colour scale only redraw this fragment."""
    labels = method_labels()
    c1, c2, c3 = st.columns([2, 1, 1])
    opacity = c1.slider("Overlay opacity", 0.0, 1.0, 0.6, step=0.05, key="ex_opacity")
    kind = c2.radio("Map", ["absolute", "signed"], key="ex_map_kind", horizontal=True,
                    help="absolute: |sum over colour channels|; signed: the sum itself (red positive, blue negative).")
    with c3:
        per_map = scale_radio("ex_scale")
    signed = kind == "signed"
    st.caption(maps.scale_caption(per_map) + " " + maps.difference_caption(per_map))
    st.image(maps.colour_bar(signed), caption=("−max … 0 … +max (each row states its range)" if signed
                                                  else "0 … max (each row states its range)"), width=256)
    rows = []
    for name, pair in pairs.items():
        row = maps.MapRow(labels[name], image, pair, signed, per_map)
        rows.append(row)
        result = takeaways[name]
        st.markdown(f"**{row.label}**")
        takeaway_line(result, why_close, "Mass moved")
        note = maps.correlation_note(row.label, result, maps.pixel_level(name))
        st.caption(f"{row.normalized.label(signed)} · Spearman rank correlation of the absolute maps, "
                   f"dense vs SPADE: {result.rank_correlation:.2f}" + (f". {note}" if note else ""))
        cols = st.columns(4)
        for col, panel, caption in zip(cols, row.panels(opacity), maps.COLUMNS):
            col.image(panel, caption=caption, width="stretch")
    st.download_button("Comparison (PNG)", maps.comparison_png(rows, opacity), file_name="spade_comparison.png",
                       mime="image/png", icon=":material/image:", on_click="ignore",
                       help=f"{title} (on the shared colour scale)")


# ----------------------------------------------------------------------------------------------- downloads
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "captum", "zennit", "streamlit", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def report(sel: Selection, settings: RunSettings, trace: SpadeTrace, saliency: dict | None = None) -> dict:
    """JSON-ready report: the requested and the used sparsity, settings (with seeds), versions, predictions with
    class names, per-layer table."""
    body = trace.to_dict()
    body["settings"] = {**body.get("settings", {}), "augment": asdict(settings.augment),
                        "solver": asdict(settings.solver)}
    for key in ("dense_top5", "trace_top5"):
        pred = getattr(trace, key)
        if pred is not None:
            body[key] = [{"index": i, "name": n, "probability": p} for i, n, p in _named(sel, pred)]
    return {
        "tool": "SPADE Explorer",
        "requested_sparsity": trace.requested_sparsity,
        "used_sparsity": trace.settings["sparsity"],
        "image": {"label": sel.image_label, "sha256_prefix": sel.image_key},
        "model": {"name": sel.loaded.spec.name, "label": sel.model_label, "source": sel.loaded.source,
                  "device": str(sel.loaded.device)},
        "saliency": saliency or {},
        "versions": _versions(),
        **body,
    }


def downloads(sel: Selection, settings: RunSettings, trace: SpadeTrace, saliency: dict | None = None) -> None:
    st.subheader("Downloads")
    st.caption(f"The trace at {trace_sparsity_text(trace)}; the JSON report records the requested and the used "
               "sparsity.")
    stem = f"spade_{sel.loaded.spec.name}_{sel.image_label.rsplit('.', 1)[0]}"
    cols = st.columns(3)
    cols[0].download_button("JSON report", json.dumps(report(sel, settings, trace, saliency), indent=2),
                            file_name=f"{stem}.json", mime="application/json", icon=":material/description:",
                            on_click="ignore")
    buffer = io.BytesIO()
    trace.save(buffer)
    cols[1].download_button("Trace file (.pt)", buffer.getvalue(), file_name=f"{stem}.trace.pt",
                            mime="application/octet-stream", icon=":material/save:", on_click="ignore",
                            help="Sparse weights + report; reload with SpadeTrace.load(path, dense_model).")
