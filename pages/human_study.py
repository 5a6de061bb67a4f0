"""Human study: the paper's blinded study (which patch drives the neuron, with a dense or a SPADE
visualization) run with real participants. Researchers design studies, share links and read the results;
a link with ``?study=<id>`` shows the participant flow instead."""

import streamlit as st

from spade_app import study
from spade_app.sidebar import get_selection
from spade_app.study_participant import participant_page

study_id = st.query_params.get("study")
if study_id:
    participant_page(study_id)
    st.stop()

st.title("Human study")
st.caption("Does a SPADE visualization help people see what a neuron uses in an image? Participants see an image, "
           "one neuron visualization (dense or SPADE, blinded) and two patches, and pick the patch that drives the "
           "neuron. The ground truth is the patch the dense model's GradCAM rates highest.")
sel = get_selection()
# Only the open tab runs (the other two would read the database on every rerun).
design, studies, results = st.tabs(list(study.SECTIONS), key=study.SECTION_KEY, on_change="rerun")
if design.open:
    with design:
        study.designer(sel)
if studies.open:
    with studies:
        study.studies_section()
if results.open:
    with results:
        study.results_section()
