"""SPADE Explorer: the Streamlit entry point (`streamlit run app.py`).

Sets the page config, draws the shared sidebar and routes to the pages in pages/.
"""

import os

# libgomp's busy-waiting threads make torch 10-100x slower when other processes (other sessions,
# a test runner) share the cores. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

st.set_page_config(page_title="SPADE Explorer", page_icon=":material/biotech:", layout="wide")

# A study participant's link (?study=<id>) gets the study page alone: no navigation, no sidebar (blinding).
participant = "study" in st.query_params

PAGES = [
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=not participant),
    st.Page("pages/neurons.py", title="Neurons", icon=":material/psychology:"),
    st.Page("pages/trojan_lab.py", title="Trojan lab", icon=":material/bug_report:"),
    st.Page("pages/human_study.py", title="Human study", icon=":material/groups:", default=participant),
    st.Page("pages/how_spade_works.py", title="How SPADE works", icon=":material/school:"),
]

# The navigation goes out before torch is imported (about 10 s on a cold start), so the first thing a visitor
# sees is the app's own menu and a message, not Streamlit's file-name menu over a blank page.
page = st.navigation(PAGES, position="hidden" if participant else "sidebar")
with st.spinner("Starting SPADE Explorer: loading PyTorch…"):
    from spade_app.sidebar import apply_presentation_mode, render_sidebar
if not participant:
    apply_presentation_mode(render_sidebar())
page.run()
