"""A dense and a SPADE attribution of one image, side by side, and their scores.

>>> pair = attribution_pair("saliency", loaded.model, trace, x, target)   # x: normalized (3, H, W)
>>> scores = pair.scores(mask, model=loaded.model)                        # mask: bool (H, W), optional
>>> scores.rank_correlation, scores.dense.mask.trojan_auc, scores.spade.curves.insertion_auc

Both attributions explain the same class of the same image with the same method and settings; every score
comes from :mod:`spade.metrics`, the shared colour scale from :mod:`spade.visualize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spade.errors import ConfigError
from spade.metrics import (
    AucResult,
    CurveResult,
    insertion_deletion,
    mass_in_mask,
    pointing_game,
    rank_correlation,
    trojan_auc,
)
from spade.prediction import Prediction
from spade.progress import Progress
from spade.saliency import get_method
from spade.saliency.base import Attribution
from spade.saliency.takeaway import Takeaway, compare_maps
from spade.trace import SpadeTrace
from spade.visualize import joint_scale


@dataclass(frozen=True)
class MaskScores:
    """One attribution's map against a mask (bool ``(H, W)``, True inside the region, e.g. a Trojan trigger).

    auc: ROC-AUC of the signed map and of the absolute map for separating mask pixels from the rest
    (`spade.metrics.trojan_auc`, each in [0, 1], 0.5 = chance). pointing_signed, pointing_absolute: whether the
    maximum of the signed / absolute map lies inside the mask (`spade.metrics.pointing_game`). mass_in_mask:
    share of ``sum |map|`` inside the mask, in [0, 1], NaN for an all-zero map (`spade.metrics.mass_in_mask`).
    """

    auc: AucResult
    pointing_signed: bool
    pointing_absolute: bool
    mass_in_mask: float

    @property
    def variant(self) -> str:
        """``"signed"`` or ``"absolute"``: the map with the higher AUC (signed on a tie)."""
        return "signed" if self.auc.signed >= self.auc.absolute else "absolute"

    @property
    def trojan_auc(self) -> float:
        """The higher of the two AUCs, the variant the SPADE authors reported."""
        return self.auc.best

    @property
    def pointing_game(self) -> bool:
        """The pointing game of :attr:`variant`'s map."""
        return self.pointing_signed if self.variant == "signed" else self.pointing_absolute


def mask_scores(attribution: Attribution, mask) -> MaskScores:
    """Score ``attribution``'s signed and absolute maps against ``mask`` (bool ``(H, W)`` tensor or array of the
    map's size, with pixels inside and outside; ConfigError otherwise)."""
    signed, absolute = attribution.signed_map, attribution.absolute_map
    return MaskScores(auc=trojan_auc(signed, mask), pointing_signed=pointing_game(signed, mask),
                      pointing_absolute=pointing_game(absolute, mask), mass_in_mask=mass_in_mask(signed, mask))


@dataclass(frozen=True)
class MapScores:
    """The scores of one map of a pair; a part that was not asked for is None.

    mask: against the mask (:class:`MaskScores`). curves: insertion / deletion of the signed map on the scoring
    model (`spade.metrics.CurveResult`; AUCs in [0, 1]).
    """

    mask: MaskScores | None = None
    curves: CurveResult | None = None


@dataclass(frozen=True)
class PairScores:
    """rank_correlation: Spearman rank correlation of the dense and the SPADE signed maps, in [-1, 1] (NaN when a
    map is constant). dense, spade: each map's own scores."""

    rank_correlation: float
    dense: MapScores
    spade: MapScores


@dataclass(frozen=True)
class AttributionPair:
    """One saliency method's attribution of one image and class on the dense model and on its SPADE trace.

    x: the explained image, normalized, float32 CPU ``(3, H, W)``. dense, spade: the method's
    :class:`~spade.saliency.base.Attribution` on the dense model and on the trace; same method, target and
    settings, raw ``(C, H, W)`` float32 CPU with the image's ``H, W`` (``C`` = 3, or 1 for GradCAM).
    """

    x: torch.Tensor
    dense: Attribution
    spade: Attribution

    def __post_init__(self):
        if self.x.dim() != 3:
            raise ConfigError(f"The image must have shape (3, H, W), got {tuple(self.x.shape)}.")
        if (self.dense.method, self.dense.target) != (self.spade.method, self.spade.target):
            raise ConfigError(f"A pair compares one method and class; got {self.dense.method} on class "
                              f"{self.dense.target} and {self.spade.method} on class {self.spade.target}.")
        shapes = {tuple(self.x.shape[-2:]), tuple(self.dense.raw.shape[-2:]), tuple(self.spade.raw.shape[-2:])}
        if len(shapes) != 1:
            raise ConfigError(f"The image and both maps must have one size, got {sorted(shapes)}.")

    @property
    def method(self) -> str:
        """Registry name of the saliency method (a key of ``spade.saliency.METHODS``)."""
        return self.dense.method

    @property
    def target(self) -> int:
        """The explained class index."""
        return self.dense.target

    @property
    def settings(self) -> Any:
        """The method's frozen settings, shared by both attributions."""
        return self.dense.settings

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image and of both maps."""
        return tuple(self.x.shape[-2:])

    def maps(self, kind: str = "signed") -> tuple[torch.Tensor, torch.Tensor]:
        """(dense, SPADE) ``(H, W)`` float32 maps; ``kind`` "signed" or "absolute" (see ``Attribution.map``)."""
        return self.dense.map(kind), self.spade.map(kind)

    def rank_correlation(self, kind: str = "signed") -> float:
        """Spearman rank correlation of the two ``kind`` maps, in [-1, 1]; NaN when one of them is constant."""
        return rank_correlation(*self.maps(kind))

    def shared_scale(self, kind: str = "signed", percentile: float = 99.0) -> float:
        """The one colour scale of both ``kind`` maps: the ``percentile`` of their absolute values taken together
        (`spade.visualize.joint_scale`; >= 0)."""
        return joint_scale(*self.maps(kind), percentile)

    def takeaway(self, mask=None, *, dense_top1: Prediction | None = None, trace_top1: Prediction | None = None
                 ) -> Takeaway:
        """What SPADE changed, as numbers and one sentence (`spade.saliency.takeaway.compare_maps` on the two
        absolute maps; mask: optional bool ``(H, W)``, e.g. the trigger; the top-1 predictions for the decision)."""
        return compare_maps(*self.maps("absolute"), mask, dense_top1=dense_top1, trace_top1=trace_top1)

    def scores(self, mask=None, *, model: nn.Module | None = None, steps: int = 100, batch_size: int | None = None,
               progress: Progress | None = None) -> PairScores:
        """Score both maps.

        mask: bool ``(H, W)`` tensor or array, True inside the ground-truth region, with pixels inside and outside
        (ConfigError otherwise): adds :class:`MaskScores`. model: the scoring model of the insertion / deletion
        curves of each signed map (the dense model in the SPADE authors' protocol; `spade.metrics.
        insertion_deletion` with ``steps`` points and ``batch_size``): adds ``curves``. The rank correlation is
        always computed.
        """
        if mask is not None:
            shape = tuple(np.shape(mask))
            if shape != self.shape:
                raise ConfigError(f"The mask must be a bool (H, W) = {self.shape} array, got shape {shape}.")
        parts = []
        for attribution in (self.dense, self.spade):
            curves = None
            if model is not None:
                curves = insertion_deletion(model, self.x, attribution.signed_map, self.target, steps=steps,
                                            batch_size=batch_size, progress=progress)
            parts.append(MapScores(mask=None if mask is None else mask_scores(attribution, mask), curves=curves))
        return PairScores(rank_correlation=self.rank_correlation(), dense=parts[0], spade=parts[1])


def attribution_pair(method: str, dense_model: nn.Module, trace: SpadeTrace | nn.Module, x: torch.Tensor,
                     target: int, settings: Any = None, *, progress: Progress | None = None) -> AttributionPair:
    """Explain class ``target`` of image ``x`` (normalized ``(3, H, W)`` or ``(1, 3, H, W)``) with the registered
    saliency ``method`` on ``dense_model`` and on ``trace`` (a :class:`SpadeTrace` or its model), with the same
    ``settings`` (None: the method's defaults). Neither model is modified."""
    explainer = get_method(method)
    sparse_model = trace.model if isinstance(trace, SpadeTrace) else trace
    dense = explainer.explain(dense_model, x, target, settings, progress=progress)
    spade = explainer.explain(sparse_model, x, target, dense.settings, progress=progress)
    image = x.detach().reshape(-1, *x.shape[-2:]).to(device="cpu", dtype=torch.float32)
    return AttributionPair(x=image, dense=dense, spade=spade)
