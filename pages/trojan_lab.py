"""Trojan lab: paste a trigger, watch a back-doored model flip, and score how well dense and SPADE saliency
maps point at the trigger (Trojan AUC, pointing game); the shipped benchmark tables at the bottom."""

import streamlit as st
import torch

from spade.errors import SpadeError
from spade_app import results, trojan
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
    try:
        loaded, model_key, model_label = trojan.trojan_model(sel, choice)
    except SpadeError as exc:
        st.error(str(exc))
        return
    with st.expander("Settings", expanded=not sel.presentation):
        submitted = trojan.trojan_form(loaded, model_key, choice, results.method_labels())
    settings = trojan.active_settings(sel.image_key, model_key, submitted)
    if settings is None:
        st.info("Press **Stamp and run SPADE** to paste the trigger and compare the dense and SPADE maps.")
        return

    pre = loaded.preprocessing
    key = trojan.stamp_key(sel.image_key, settings, pre)
    try:
        stamped = trojan.stamped_image(key, sel.image, trojan.trigger_image(settings), pre, settings)
        trojan.check_mask(stamped.mask)
        clean_sel = trojan.model_selection(sel, loaded, model_key, model_label)
        stamped_sel = trojan.stamped_selection(clean_sel, stamped, key, settings)
        stamped_top1 = trojan.top_k(stamped_sel)[0][0]
        target = settings.target if settings.target is not None else trojan.auto_target(
            loaded.spec, trojan.trigger_name(settings), settings.model, stamped_top1)
        verdict = trojan.Verdict(trojan.top_k(clean_sel)[0][0], stamped_top1, target)
        st.header("The stamped image")
        trojan.prediction_section(clean_sel, stamped_sel, stamped, verdict, settings)
    except (SpadeError, torch.OutOfMemoryError) as exc:
        trojan.oom_or_error(exc)
        return

    st.header("SPADE on the stamped image")
    trace = results.run_trace(stamped_sel, settings.run_settings)
    if trace is None:
        return
    results.prediction_comparison(stamped_sel, trace)
    trojan.maps_section(stamped_sel, settings, trace, target, stamped.mask)


lab()
trojan.benchmark_section()
