"""Trojan lab: back-doored model, trigger placement, dense vs SPADE maps (waits for the library's trojan module)."""

import streamlit as st

st.title("Trojan lab")
st.info(
    "Coming soon: paste a trigger patch onto an image, watch a back-doored model flip its prediction, and "
    "measure how well dense and SPADE saliency maps point at the trigger (Trojan AUC, pointing game). The "
    "library part (`spade.trojan`) is not available yet."
)
