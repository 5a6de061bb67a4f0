"""Dense-vs-SPADE map rows for the Explore page and the Trojan lab, built on ``spade.visualize`` (joint colour
scale, colour maps, overlays, PNG rendering); this module arranges them into rows and one download, and states
in words how to read them (the colour scale, the difference panel, the takeaway of ``spade.saliency.takeaway``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from spade import visualize
from spade.saliency import METHODS, AttributionPair, Takeaway

PERCENTILE = 99.0
COLUMNS = ("image", "dense", "SPADE", "difference (SPADE − dense)")
SHARED, PER_MAP = "shared", "per map"
SCALES = (SHARED, PER_MAP)
SCALE_HELP = ("Shared: dense and SPADE on one scale (the 99th percentile of both maps' values together), so equal "
              "colours mean equal attribution. Per map: each map on its own scale (its own 99th percentile), so "
              "the shapes of a strong and a weak map compare; colours then do not compare across the two maps.")


def scale_caption(per_map: bool) -> str:
    """One line stating what the chosen colour scale means."""
    if per_map:
        return ("**Per-map scale:** each map is scaled to its own range, so a weak map is as bright as a strong "
                "one: compare where the attribution lies, not how much there is.")
    return ("**Shared scale:** both maps on one scale, so a darker map has less attribution mass in absolute "
            "terms, not necessarily a worse one (it can point at the same place as well).")


def difference_caption(per_map: bool) -> str:
    """How to read the difference panel (always SPADE − dense in diverging colours)."""
    scale = "each map on its own scale" if per_map else "on the shared scale"
    return (f"Difference panel: SPADE − dense, {scale}. Red: SPADE gives the pixel more attribution; blue: dense "
            "gives it more; white: both agree.")


def pixel_level(method: str) -> bool:
    """Whether a method's map varies pixel by pixel (a gradient method such as Saliency), so that its difference
    panel shows pixel noise where the two maps do not rank pixels alike."""
    return method in METHODS and METHODS[method].family == "gradient"


def correlation_note(method_label: str, takeaway: Takeaway, pixel_level: bool) -> str | None:
    """What the maps' rank correlation means for reading them, or None when it needs no word: maps that rank
    pixels almost alike look the same, and say why; a pixel-level method's (:func:`pixel_level`) maps that rank
    them almost independently have a difference panel of mostly pixel noise."""
    correlation = f"rank correlation {takeaway.rank_correlation:.2f}"
    if takeaway.ranks_alike:
        return (f"The two {method_label} maps rank pixels almost alike ({correlation}), so they look much the "
                "same: the trace was fitted to reproduce the model on this image and its views. What SPADE changed "
                "is where the strongest pixels sit (mass moved, above).")
    if pixel_level and takeaway.noisy_difference:
        return (f"The two {method_label} maps rank pixels almost independently ({correlation}), so the difference "
                "panel is mostly pixel noise: compare the maps' overall shape instead.")
    return None


def _range(scale: float, signed: bool) -> str:
    return f"[-{scale:.3g}, +{scale:.3g}]" if signed else f"[0, {scale:.3g}]"


@dataclass(frozen=True)
class Scaled:
    """Both maps normalized for display: ``(H, W)`` float64 in [0, 1] (absolute) or [-1, 1] (signed), and the
    scale each was divided by (equal on the shared scale)."""

    dense: np.ndarray
    spade: np.ndarray
    dense_scale: float
    spade_scale: float
    per_map: bool

    def label(self, signed: bool) -> str:
        """The scale in words, as in spade.visualize.scale_label."""
        if not self.per_map:
            return visualize.scale_label(self.dense_scale, signed)
        return (f"per-map colour scales: dense {_range(self.dense_scale, signed)}, "
                f"SPADE {_range(self.spade_scale, signed)}")


@dataclass(frozen=True)
class MapRow:
    """One method: the model input and both maps, on their joint scale (see spade.visualize.joint_normalize) or,
    with ``per_map``, each on its own."""

    label: str
    image: np.ndarray  # (H, W, 3) uint8
    pair: AttributionPair
    signed: bool
    per_map: bool = False

    @property
    def kind(self) -> str:
        return "signed" if self.signed else "absolute"

    @property
    def normalized(self) -> Scaled:
        dense, sparse = self.pair.maps(self.kind)
        if not self.per_map:
            a, b, scale = visualize.joint_normalize(dense, sparse, self.signed, PERCENTILE)
            return Scaled(a, b, scale, scale, False)
        a, _, scale_a = visualize.joint_normalize(dense, dense, self.signed, PERCENTILE)
        b, _, scale_b = visualize.joint_normalize(sparse, sparse, self.signed, PERCENTILE)
        return Scaled(a, b, scale_a, scale_b, True)

    def panels(self, opacity: float) -> list[np.ndarray]:
        """image | dense | SPADE | difference (SPADE − dense of the normalized maps, diverging colours)."""
        scaled = self.normalized
        return [self.image, visualize.overlay(self.image, scaled.dense, opacity, self.signed),
                visualize.overlay(self.image, scaled.spade, opacity, self.signed),
                visualize.colorize(np.clip(scaled.spade - scaled.dense, -1.0, 1.0), signed=True)]

    def png(self, opacity: float) -> bytes:
        """The row as spade.visualize.comparison_png draws it (always on the shared scale)."""
        return visualize.comparison_png(self.image, *self.pair.maps(self.kind), self.label, signed=self.signed,
                                        opacity=opacity, percentile=PERCENTILE)


def colour_bar(signed: bool, width: int = 256, height: int = 14) -> np.ndarray:
    ramp = np.linspace(-1.0 if signed else 0.0, 1.0, width)[None].repeat(height, axis=0)
    return visualize.colorize(ramp, signed)


def comparison_png(rows: Sequence[MapRow], opacity: float) -> bytes:
    """Every method's comparison (spade.visualize.comparison_png) stacked into one PNG."""
    if not rows:
        raise ValueError("no rows to render")
    parts = [Image.open(io.BytesIO(row.png(opacity))).convert("RGB") for row in rows]
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
