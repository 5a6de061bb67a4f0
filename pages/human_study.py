"""Human study: the blinded dense-vs-SPADE neuron visualization study (filled by its own issue)."""

import streamlit as st

st.title("Human study")
st.info(
    "Coming soon: a blinded study in which you see an image, a neuron visualization (dense or SPADE, order "
    "randomised) and two patches, and choose the patch that drives the neuron. It is being built in its own "
    "issue."
)
