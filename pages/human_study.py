"""Human study: the paper's blinded study (which patch drives the neuron, with a dense or a SPADE
visualization) run with real participants. Researchers log in, design studies, share links and read the
results; a link with ``?study=<id>`` shows the participant flow instead, and never the researcher parts."""

import streamlit as st

from spade_app import study
from spade_app.sidebar import get_selection
from spade_app.study_access import researcher_gate
from spade_app.study_participant import participant_page

if "study" in st.query_params:  # a participant's link, also with an empty or unknown id: never the designer
    participant_page(st.query_params.get("study") or "")
    st.stop()

st.title("Human study")
st.caption("Does a SPADE visualization help people see what a neuron uses in an image? Participants see an image, "
           "one neuron visualization (dense or SPADE, blinded) and two patches, and pick the patch that drives the "
           "neuron. The ground truth is the patch the dense model's Score-CAM (or, if chosen, GradCAM) rates "
           "highest.")
if not researcher_gate():
    st.stop()
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
