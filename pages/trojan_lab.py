"""Trojan lab: paste a trigger, watch a back-doored model flip, and score how well dense and SPADE saliency
maps point at the trigger (Trojan AUC, pointing game); the shipped benchmark tables at the bottom."""

import streamlit as st

from spade.errors import SpadeError
from spade_app import presentation, sections, trojan
from spade_app.settings import method_labels
from spade_app.sidebar import get_selection

st.title("Trojan lab")
st.caption("A back-doored model predicts its target class whenever a trigger is pasted into the photo, so here "
           "the truth is known: a faithful explanation must point at the trigger. Compare how well the dense and "
           "the SPADE saliency maps do.")
sel = get_selection()


def lab() -> None:
    if sel.image is None:
        st.info("Choose a valid image in the sidebar to start.")
        return
    choice = trojan.model_choice()
    st.caption(trojan.DEMO_MODELS_NOTE)
    try:
        loaded, model_key, model_label = trojan.trojan_model(sel, choice)
    except SpadeError as exc:
        st.error(str(exc))
        return
    with presentation.settings_box(sel.presentation, "trojan"):
        submitted = trojan.trojan_form(loaded, model_key, choice, method_labels())
    settings = trojan.active_settings(sel.image_key, model_key, submitted)
    if settings is None:
        st.info("Press **Stamp and run SPADE** to paste the trigger and compare the dense and SPADE maps.")
        return

    st.header("The stamped image")
    outcome = trojan.stamp_and_predict(sel, loaded, model_key, model_label, settings)
    if outcome is None:
        return
    stamped, clean_sel, stamped_sel, verdict = outcome
    trojan.prediction_section(clean_sel, stamped_sel, stamped, verdict, settings)

    st.header("SPADE on the stamped image")
    trace = sections.run_trace(stamped_sel, settings.run_settings)
    if trace is None:
        return
    sections.prediction_comparison(stamped_sel, trace)
    trojan.maps_section(stamped_sel, settings, trace, verdict.target, stamped.mask)


lab()
trojan.benchmark_section()
