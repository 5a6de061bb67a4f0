"""SPADE Explorer: the Streamlit entry point (`streamlit run app.py`).

Sets the page config, draws the shared sidebar and routes to the pages in pages/.
"""

import os

# libgomp's busy-waiting threads make torch 10-100x slower when other processes (other sessions,
# a test runner) share the cores. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

st.set_page_config(page_title="SPADE Explorer", page_icon=":material/biotech:", layout="wide")

STUDY_PAGE = "pages/human_study.py"
PAGES = {  # script: (title, icon); the first is the default page (served at the app's root)
    "pages/explore.py": ("Explore", ":material/search:"),
    "pages/neurons.py": ("Neurons", ":material/psychology:"),
    "pages/trojan_lab.py": ("Trojan lab", ":material/bug_report:"),
    STUDY_PAGE: ("Human study", ":material/groups:"),
    "pages/how_spade_works.py": ("How SPADE works", ":material/school:"),
}

# A study participant's link (?study=<id>) gets the study page alone: no navigation, no sidebar (blinding). It
# is the page at the app's root and at every other page's path, so a link opened on any of them (an older link
# to /human_study included) shows the participant view, without Streamlit's "Page not found" dialog.
participant = "study" in st.query_params
if participant:
    pages = [st.Page(STUDY_PAGE, title="Human study", url_path="study", default=True),
             *(st.Page(STUDY_PAGE, title="Human study", url_path=os.path.splitext(os.path.basename(script))[0])
               for script in PAGES)]
else:
    pages = [st.Page(script, title=title, icon=icon, default=i == 0)
             for i, (script, (title, icon)) in enumerate(PAGES.items())]

# The navigation goes out before torch is imported (about 10 s on a cold start), so the first thing a visitor
# sees is the app's own menu and a message, not Streamlit's file-name menu over a blank page.
page = st.navigation(pages, position="hidden" if participant else "sidebar")
with st.spinner("Starting SPADE Explorer: loading PyTorch…"):
    from spade_app import presentation
    from spade_app.sidebar import render_sidebar
if not participant:
    presentation.apply(render_sidebar().presentation)
page.run()
