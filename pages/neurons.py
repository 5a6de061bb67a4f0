"""Neurons: dense vs SPADE feature visualizations (waits for the library's neuron module)."""

import streamlit as st

st.title("Neurons")
st.info(
    "Coming soon: pick a neuron (by default the predicted class logit, or a layer and channel), and compare "
    "its feature visualization on the dense model with the one on the SPADE trace of your image, side by side "
    "with the activation maps. The library part (`spade.neurons`) is not available yet."
)
