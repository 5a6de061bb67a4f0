"""Neurons: feature visualizations of one neuron on the dense model and on the SPADE trace of the image."""

import streamlit as st

from spade_app import loaders, neurons, presentation
from spade_app.sidebar import require_selection

st.title("Neurons")
st.caption("A feature visualization on the dense model mixes every facet a neuron has learned; on the SPADE "
           "trace of one image it shows the facet this image used.")
st.caption(neurons.METHOD_NOTE)
sel = require_selection()

preds = loaders.top_k(sel.model_key, sel.image_key, sel.loaded, sel.image)
predicted, name, prob = preds[0]
st.markdown(f"**Image:** {sel.image_label} · **model:** {sel.model_label} · **prediction:** {name} ({prob:.1%})")

with presentation.settings_box(sel.presentation, "neurons"):
    submitted = neurons.neuron_form(sel, predicted)
settings = neurons.active_settings(sel, submitted)
if settings is None:
    st.info("Press **Run** to visualize the neuron on the dense model and on the SPADE trace.")
    st.stop()

outcome = neurons.run(sel, settings)
if outcome is None:
    st.stop()
neurons.show(sel, settings, *outcome)
