"""Plotly figures of the app (display only; every number comes from the library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from spade_app.presentation import projector_figure

COLORS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2")


def top_k_bars(predictions: Mapping[str, Sequence[tuple[int, str, float]]], height: int = 300) -> go.Figure:
    """Horizontal bars of top-k probabilities, one trace per model ({label: [(index, name, prob), ...]}). Each
    bar's percentage stands after it at the figure's font size: inside a bar, Plotly shrinks it to the bar's
    thickness, unreadable when several models share a row. The axis runs a little past 1 to leave room for it."""
    fig = go.Figure()
    for color, (label, preds) in zip(COLORS, predictions.items()):
        fig.add_bar(
            y=[f"{name} ({index})" for index, name, _ in preds],
            x=[prob for _, _, prob in preds],
            orientation="h",
            name=label,
            marker_color=color,
            text=[f"{prob:.1%}" for _, _, prob in preds],
            textposition="outside",
            constraintext="none",
            cliponaxis=False,
        )
    ticks = [i / 5 for i in range(6)]
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30, b=10),
        xaxis=dict(title="probability", range=[0, 1.15], tickvals=ticks, ticktext=[f"{t:g}" for t in ticks]),
        yaxis=dict(autorange="reversed"), barmode="group", legend=dict(orientation="h", y=1.12),
    )
    return fig


def layer_chart(layers: Sequence, height: int = 420) -> go.Figure:
    """Per-layer target vs achieved sparsity (top) and relative reconstruction error (bottom, log scale).

    layers: the trace's LayerReport rows (name, target, achieved, error, ...), in model order.
    """
    from plotly.subplots import make_subplots

    names = [r.name for r in layers]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.55, 0.45])
    fig.add_scatter(x=names, y=[r.target for r in layers], mode="lines", name="target sparsity",
                    line=dict(color="#999999", dash="dash", shape="hvh"), row=1, col=1)
    fig.add_bar(x=names, y=[r.achieved for r in layers], name="achieved sparsity", marker_color=COLORS[0],
                row=1, col=1)
    errors = [max(r.error, 1e-12) for r in layers]
    fig.add_scatter(x=names, y=errors, mode="markers+lines", name="relative reconstruction error",
                    marker_color=COLORS[1], row=2, col=1)
    fig.update_yaxes(title_text="sparsity", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="rel. error", type="log", dtick=1, exponentformat="power", row=2, col=1)
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9), row=2, col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.08),
                      bargap=0.15)
    return fig


def for_projector(fig: go.Figure, on: bool) -> go.Figure:
    """Presentation mode: larger fonts and a taller figure (`spade_app.presentation.projector_figure`)."""
    return projector_figure(fig, on)
