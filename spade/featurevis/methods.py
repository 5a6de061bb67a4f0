"""The visualization methods offered to users, their labels, and the default chosen by the measure.

The default is the method that did better on ``benchmarks/bench_featurevis_quality.py`` (Lite0's pictures judged
by Lite2; results under ``benchmarks/results/featurevis-full-*``); the other stays an option everywhere.
"""

from __future__ import annotations

METHOD_LABELS = {"fourier": "Lucid-style (Fourier)", "maco": "MACO (phase only)"}
"""Parameterizations offered in the app (``FeatureVisConfig.parameterization``), with their display names."""

DEFAULT_METHOD = "fourier"
"""The parameterization used unless one is asked for."""

DEFAULT_METHOD_REASON = (
    "Lucid-style by default: its class pictures were recognisable to another network for 20 of 20 classes, "
    "MACO's for 5 (Lite0's pictures judged by Lite2; MACO stays an option).")
"""One line for the app: which method is the default and why (numbers from the committed benchmark results)."""


def method_label(method: str) -> str:
    """Display name of a parameterization (its own name when it is not offered in the app)."""
    return METHOD_LABELS.get(method, method)
