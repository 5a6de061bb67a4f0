"""Explore: dense vs SPADE prediction, per-layer faithfulness and saliency maps for the chosen image."""

import streamlit as st

from spade_app import figures, loaders, presentation, sections
from spade_app.settings import default_methods, method_labels, settings_for_scope, settings_form
from spade_app.sidebar import gallery, get_selection, require_selection

st.title("Explore")
sel = get_selection()
if not sel.presentation:
    with st.expander("Example gallery", expanded=False):
        gallery(columns=4)
require_selection()

left, right = st.columns([1, 2])
with left:
    pre = sel.loaded.preprocessing
    st.image(pre.resize_crop(sel.image), caption=f"{sel.image_label}: what the model sees ({pre.crop}×{pre.crop})",
             width="stretch")
with right:
    preds = loaders.top_k(sel.model_key, sel.image_key, sel.loaded, sel.image)
    index, name, prob = preds[0]
    st.markdown(f"### Prediction: **{name}** ({prob:.1%})")
    st.caption(f"Model {sel.model_label} on {sel.loaded.device}; class index {index}.")
    st.plotly_chart(figures.for_projector(figures.top_k_bars({"Dense model": preds}), sel.presentation),
                    width="stretch")

st.header("SPADE trace")
methods = method_labels()
with presentation.settings_box(sel.presentation, "explore"):
    profiles = loaders.available_profiles(sel.loaded, sel.model_key)
    submitted = settings_form(sel.loaded.model, methods, default_methods(),
                              sel.loaded.spec.default_sparsity, profiles,
                              loaders.default_profile(profiles, sel.loaded.spec), sel.loaded.spec.name,
                              sel.loaded.spec.default_solver, sel.loaded.spec.layer_selection, str(sel.loaded.device))
    settings = settings_for_scope((sel.model_key, sel.image_key), submitted)
    sections.augmentation_strip(sel, settings)

if settings is None:
    st.info("Press **Run SPADE** to fit a sparse trace of the model to this image.")
    st.stop()

trace = sections.run_trace(sel, settings)
if trace is None:
    st.stop()
sections.prediction_comparison(sel, trace)
sections.layer_section(trace, sel.presentation)
saliency = sections.saliency_section(sel, settings, trace)
sections.downloads(sel, settings, trace, saliency)
