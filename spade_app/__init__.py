"""Streamlit-only helpers of the SPADE Explorer app: cached loaders, the shared sidebar, figures.

The algorithms live in the pure library ``spade``; this package only wires them to widgets.
"""
