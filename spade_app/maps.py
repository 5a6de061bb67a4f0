"""Dense-vs-SPADE map rows for the Explore page, built on ``spade.visualize`` (joint colour scale,
colour maps, overlays, PNG rendering); this module only arranges them into rows and one download."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from spade import visualize
from spade.saliency import AttributionPair

PERCENTILE = 99.0
COLUMNS = ("image", "dense", "SPADE", "difference (SPADE − dense)")


@dataclass(frozen=True)
class MapRow:
    """One method: the model input and both maps on their joint scale (see spade.visualize.joint_normalize)."""

    label: str
    image: np.ndarray  # (H, W, 3) uint8
    pair: AttributionPair
    signed: bool

    @property
    def kind(self) -> str:
        return "signed" if self.signed else "absolute"

    @property
    def normalized(self) -> tuple[np.ndarray, np.ndarray, float]:
        return visualize.joint_normalize(*self.pair.maps(self.kind), self.signed, PERCENTILE)

    def panels(self, opacity: float) -> list[np.ndarray]:
        """image | dense | SPADE | difference (SPADE − dense on the same scale, diverging colours)."""
        dense, sparse, _ = self.normalized
        return [self.image, visualize.overlay(self.image, dense, opacity, self.signed),
                visualize.overlay(self.image, sparse, opacity, self.signed),
                visualize.colorize(np.clip(sparse - dense, -1.0, 1.0), signed=True)]

    def png(self, opacity: float) -> bytes:
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
