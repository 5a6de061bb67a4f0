"""The visualization methods offered to users, their labels, and the default chosen by the measure.

The default is the method that did better on ``benchmarks/bench_featurevis_quality.py`` (Lite0's pictures judged
by Lite2), chosen on calibration classes and photos (``benchmarks/results/featurevis-maco-lr-2026-12-06/``) and
measured once on the test set (there and in ``featurevis-full-2026-12-06/``); the other stays an option everywhere.
"""

from __future__ import annotations

METHOD_LABELS = {"fourier": "Lucid-style (Fourier)", "maco": "MACO (phase only)"}
"""Parameterizations offered in the app (``FeatureVisConfig.parameterization``), with their display names."""

DEFAULT_METHOD = "fourier"
"""The parameterization used unless one is asked for."""

DEFAULT_METHOD_REASON = (
    "Lucid-style by default: another network (Lite2) recognised its pictures of Lite0's classes for 49 of 50 "
    "classes, MACO's for 46; on the calibration photos its SPADE pictures were closer to the photo more often "
    "(29 of 40 pairs against 21; on the test photos MACO's were, 27 of 40 against 26).")
"""One line for the app: which method is the default and why (numbers from the committed benchmark results)."""


def method_label(method: str) -> str:
    """Display name of a parameterization (its own name when it is not offered in the app)."""
    return METHOD_LABELS.get(method, method)
