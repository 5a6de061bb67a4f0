"""Presentation mode (the sidebar's toggle): a projector-ready page at 1280x720.

When it is on: the sidebar starts collapsed (its expand button stays, to switch the mode off), the menu and
toolbar actions are hidden, the page's text, metrics (value larger than its label) and tables are
enlarged by CSS (a dataframe is drawn on a canvas that CSS cannot enlarge: `table` draws an HTML table
instead), plotly figures get larger fonts through `projector_figure`, and each page's settings shrink to
their Run button (`settings_box`), with a toggle to show them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import plotly.graph_objects as go
import streamlit as st

#: Plotly font sizes (px) in presentation mode: axis ticks, axis and colourbar titles, the figure's title.
TICK_PX, TITLE_PX, FIGURE_TITLE_PX = 17, 19, 22
#: How much taller a plotly figure is drawn in presentation mode (its fonts need the room).
HEIGHT_FACTOR = 1.4

PRESENTATION_CSS = """
<style>
[data-testid="stMainBlockContainer"] { max-width: 100%; padding: 2.5rem 2rem 2rem 2rem; }
[data-testid="stMainBlockContainer"] p, [data-testid="stMainBlockContainer"] li { font-size: 1.35rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 3rem; }
[data-testid="stMainBlockContainer"] [data-testid="stWidgetLabel"] p { font-size: 1.1rem; }
[data-testid="stMainBlockContainer"] [data-testid="stMetricLabel"] p { font-size: 1.25rem; }
[data-testid="stMainBlockContainer"] [data-testid="stMetricValue"],
[data-testid="stMainBlockContainer"] [data-testid="stMetricValue"] div,
[data-testid="stMainBlockContainer"] [data-testid="stMetricValue"] p { font-size: 2.8rem; line-height: 1.2; }
[data-testid="stMainBlockContainer"] [data-testid="stMetricDelta"] div { font-size: 1.25rem; }
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"],
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"] p { font-size: 1.15rem; }
[data-testid="stMainBlockContainer"] [data-testid="stTable"] td,
[data-testid="stMainBlockContainer"] [data-testid="stTable"] th,
[data-testid="stMainBlockContainer"] [data-testid="stMarkdownContainer"] td,
[data-testid="stMainBlockContainer"] [data-testid="stMarkdownContainer"] th { font-size: 1.2rem; }
[data-testid="stToolbarActions"], [data-testid="stMainMenu"], [data-testid="stAppDeployButton"] { display: none; }
</style>
"""

SHOW_ALL_KEY = "presentation_show_settings"
BOX_KEY = "presentation_settings"


def hide_all_but_run_css(box_key: str) -> str:
    """CSS that hides everything in the keyed container ``box_key`` except a form's submit (Run) button and what
    contains it: at every level, a child that does not hold the button is not displayed. The form's other widgets
    still exist (hidden), so Run submits their current values."""
    box = f".st-key-{box_key}"
    holder = ':has([data-testid="stFormSubmitButton"])'
    return (f"<style>{box} [data-testid=\"stVerticalBlock\"] > :not({holder}), "
            f"{box} [data-testid=\"stHorizontalBlock\"] > :not({holder}) {{ display: none; }}</style>")


def apply(on: bool) -> None:
    """Page-wide presentation mode (called by app.py after the sidebar): the CSS, and the sidebar collapsed while
    it is on ("auto" again, i.e. expanded on a desktop, when it is switched off). Draws nothing when off."""
    st.set_page_config(initial_sidebar_state="collapsed" if on else "auto")
    if on:
        st.html(PRESENTATION_CSS)


@contextlib.contextmanager
def settings_box(on: bool, key: str) -> Iterator[None]:
    """Where a page draws its settings form. Normally an expanded "Settings" expander; in presentation mode the
    form shrinks to its Run button (a toggle shows every setting), so Run is in view without opening anything.

    key: a page-unique name for the container (a Streamlit widget key: letters, digits, underscores)."""
    if not on:
        with st.expander("Settings", expanded=True):
            yield
        return
    show_all = st.toggle("Show the settings", key=f"{SHOW_ALL_KEY}_{key}")
    box_key = f"{BOX_KEY}_{key}"
    if not show_all:
        st.html(hide_all_but_run_css(box_key))
    with st.container(key=box_key):
        yield


def projector_figure(fig: go.Figure, on: bool) -> go.Figure:
    """Presentation mode: ``fig`` (changed in place and returned) with larger axis ticks and titles, legend,
    subplot titles and colourbars, and HEIGHT_FACTOR times taller. Unchanged when ``on`` is False."""
    if not on:
        return fig
    fig.update_layout(font=dict(size=TICK_PX), height=int((fig.layout.height or 400) * HEIGHT_FACTOR),
                      title_font_size=FIGURE_TITLE_PX, legend_font_size=TICK_PX,
                      uniformtext=dict(minsize=TICK_PX - 3, mode="show"))  # bar labels not shrunk to fit
    fig.update_xaxes(tickfont_size=TICK_PX, title_font_size=TITLE_PX)
    fig.update_yaxes(tickfont_size=TICK_PX, title_font_size=TITLE_PX)
    fig.update_annotations(font_size=TITLE_PX)
    for trace in fig.data:
        if "colorbar" in trace:
            trace.update(colorbar=dict(tickfont_size=TICK_PX, title_font_size=TITLE_PX))
    if fig.layout.coloraxis is not None:
        fig.update_layout(coloraxis_colorbar=dict(tickfont_size=TICK_PX, title_font_size=TITLE_PX))
    for trace in fig.data:
        if "textfont" in trace and trace.type == "bar":
            trace.update(textfont_size=TICK_PX)
    return fig


def _cell(value, fmt: str | None) -> object:
    if isinstance(value, bool):
        return "✓" if value else ""
    if value is None:
        return ""
    return fmt.format(value) if fmt else value


def table(rows: list[dict], on: bool, formats: dict[str, str] | None = None, **dataframe_kwargs) -> None:
    """``rows`` as an interactive ``st.dataframe`` (``dataframe_kwargs``), or in presentation mode as an HTML
    ``st.table``, whose font the presentation CSS enlarges: booleans shown as ✓ / blank, the columns named in
    ``formats`` formatted with their format string (e.g. {"top-1 kept": "{:.0%}"})."""
    if not on:
        st.dataframe(rows, **dataframe_kwargs)
        return
    formats = formats or {}
    st.table([{k: _cell(v, formats.get(k)) for k, v in row.items()} for row in rows])
