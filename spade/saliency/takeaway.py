"""What SPADE changed in one saliency comparison, as numbers and one plain sentence.

>>> takeaway = compare_maps(dense_map, spade_map, mask=trigger, dense_top1=dense[0], trace_top1=traced[0])
>>> takeaway.moved, takeaway.sentence()
(0.23, 'SPADE moved 23 % of the top-10 % saliency mass, mostly from the centre to the top left; ...')

Both maps are read as absolute attribution (``|map|``). The *top region* of a map is its ``top_share`` (10 %)
pixels with the largest ``|map|``; the *top mass* is the sum of ``|map|`` over it. Every share below is a share of
a map's own top mass, so two maps on very different scales compare fairly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spade.errors import ConfigError
from spade.metrics import ALIKE_CORRELATION, mass_in_mask, rank_correlation
from spade.prediction import Prediction

TOP_SHARE = 0.10
NEARLY_SAME = 0.10  # less than this share of the top mass moved: the maps are "nearly the same"
WEAKER = 0.5  # a SPADE map with less than this times the dense map's top mass is called weaker
NOISY_CORRELATION = 0.5  # a rank correlation below this: the pixel-by-pixel difference is mostly noise
# the ninths of the image, named so that two of them never read as one inside the other ("from the right to the
# bottom right" read as a move within one side)
REGION_NAMES = (("top left", "top centre", "top right"), ("centre left", "centre", "centre right"),
                ("bottom left", "bottom centre", "bottom right"))


def _absolute(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ConfigError(f"{name} must be a non-empty (H, W) map, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ConfigError(f"{name} has NaN or infinite values.")
    return np.abs(array)


def top_region(absolute: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """Bool ``(H, W)``: the ``max(1, round(share * H * W))`` pixels with the largest values of ``absolute``
    (``(H, W)``, >= 0); ties go to the earlier pixel in row-major order, so the region is deterministic."""
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"The top share must be in (0, 1], got {share}.")
    flat = absolute.ravel()
    count = max(1, round(share * flat.size))
    order = np.argsort(-flat, kind="stable")[:count]
    region = np.zeros(flat.size, dtype=bool)
    region[order] = True
    return region.reshape(absolute.shape)


def _share(absolute: np.ndarray, top: np.ndarray, where: np.ndarray) -> float:
    """Share of the top mass (``absolute`` summed over ``top``) that lies in ``where``; NaN for no top mass."""
    return mass_in_mask(np.where(top, absolute, 0.0), where)


def _region_shares(absolute: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``(3, 3)`` shares of the top mass in each third of the height and width (NaN without top mass)."""
    rows = np.array_split(np.arange(absolute.shape[0]), 3)
    cols = np.array_split(np.arange(absolute.shape[1]), 3)
    out = np.full((3, 3), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cell = np.zeros(absolute.shape, dtype=bool)
            cell[np.ix_(r, c)] = True
            out[i, j] = _share(absolute, top, cell)
    return out


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


@dataclass(frozen=True)
class Takeaway:
    """What changed between a dense and a SPADE map of one image, method and class.

    top_share: the share of pixels in each map's top region (0.1). moved: share of the SPADE map's top mass that
    lies outside the dense map's top region, in [0, 1] (0: SPADE's strongest pixels are dense's; NaN when the SPADE
    map is all zero). overlap: share of the dense top pixels that are also SPADE top pixels, in [0, 1].
    rank_correlation: Spearman correlation of the two absolute maps, in [-1, 1] (NaN for a constant map).
    strength: the SPADE map's top mass over the dense map's, >= 0 (below 1: SPADE's map is weaker and looks darker
    on a shared colour scale; NaN when the dense map is all zero).
    gained, lost: the ninth of the image (e.g. "top left", "centre right") where SPADE's share of its top mass grew /
    shrank most against dense's, None when nothing moved. mask_dense, mask_spade: share of each map's top mass
    inside the mask (e.g. a Trojan trigger), in [0, 1]; None without a mask. dense_top1, trace_top1: the dense
    model's and the trace's top-1 predictions, None when not given.
    """

    top_share: float
    moved: float
    overlap: float
    rank_correlation: float
    strength: float
    gained: str | None
    lost: str | None
    mask_dense: float | None = None
    mask_spade: float | None = None
    dense_top1: Prediction | None = None
    trace_top1: Prediction | None = None

    @property
    def kept_decision(self) -> bool | None:
        """Whether the trace predicts the dense model's top-1 class (None without both predictions)."""
        if self.dense_top1 is None or self.trace_top1 is None:
            return None
        return self.dense_top1.index == self.trace_top1.index

    @property
    def nearly_same(self) -> bool:
        """Less than :data:`NEARLY_SAME` of the top mass moved (and, with a mask, the mask shares differ by less
        than that): the two maps show nearly the same thing."""
        if self.moved != self.moved:
            return False
        same = self.moved < NEARLY_SAME
        if self.mask_dense is not None and self.mask_spade is not None:
            same = same and abs(self.mask_spade - self.mask_dense) < NEARLY_SAME
        return same

    @property
    def noisy_difference(self) -> bool:
        """The rank correlation of the maps is below :data:`NOISY_CORRELATION` (the pixel-by-pixel difference of
        a pixel-level method is then mostly noise)."""
        return self.rank_correlation == self.rank_correlation and self.rank_correlation < NOISY_CORRELATION

    @property
    def ranks_alike(self) -> bool:
        """The rank correlation of the maps is at least :data:`spade.metrics.ALIKE_CORRELATION`: they look almost
        the same overall, even where some of the top mass moved."""
        return self.rank_correlation == self.rank_correlation and self.rank_correlation >= ALIKE_CORRELATION

    @property
    def number(self) -> float:
        """The one number of the takeaway: SPADE's top-mass share on the mask when there is one, else ``moved``."""
        return self.mask_spade if self.mask_spade is not None else self.moved

    def _top(self) -> str:
        return f"top-{_percent(self.top_share)}"

    def _decision(self) -> str:
        kept = self.kept_decision
        if kept is None:
            return ""
        trace = self.trace_top1
        if kept:
            return f"the trace kept the decision ({trace.name or trace.index}, {_percent(trace.probability)})"
        return (f"the trace changed the decision ({self.dense_top1.name or self.dense_top1.index} → "
                f"{trace.name or trace.index}, {_percent(trace.probability)}), so its map explains a model that "
                "decides differently")

    def sentence(self, why_close: str = "") -> str:
        """One plain sentence. why_close: the reason the maps are nearly the same (e.g. "the sparsity was backed
        off to 0.40"), added when :attr:`nearly_same`."""
        if self.moved != self.moved:
            text = "The SPADE map is all zero, so it shows no attribution at all"
        elif self.mask_spade is not None:
            text = (f"SPADE puts {_percent(self.mask_spade)} of the {self._top()} saliency mass on the trigger "
                    f"(dense: {_percent(self.mask_dense)})")
            if self.nearly_same:
                text += ": nearly the same as the dense map"
            elif abs(self.mask_spade - self.mask_dense) < NEARLY_SAME:
                text += (f", about as much as dense, though {_percent(self.moved)} of its top mass lies off the "
                         "dense map's strongest pixels")
            elif self.mask_spade > self.mask_dense and self.lost:
                text += f", taking it mostly from the {self.lost}"
            elif self.mask_spade < self.mask_dense and self.gained:
                text += f", moving it mostly to the {self.gained}"
        elif self.nearly_same:
            text = (f"Dense and SPADE maps are nearly the same: SPADE moved only {_percent(self.moved)} of the "
                    f"{self._top()} saliency mass")
        else:
            text = f"SPADE moved {_percent(self.moved)} of the {self._top()} saliency mass"
            if self.gained and self.lost and self.gained != self.lost:
                text += f", mostly from the {self.lost} to the {self.gained}"
        if self.nearly_same and why_close:
            text += f" ({why_close})"
        if self.strength == self.strength and self.strength < WEAKER:
            text += (f"; the SPADE map is weaker overall ({self.strength:.2g} × the dense map's top mass), so it "
                     "looks darker on the shared colour scale")
        decision = self._decision()
        return text + (f"; {decision}." if decision else ".")


def compare_maps(dense_map, spade_map, mask=None, *, dense_top1: Prediction | None = None,
                 trace_top1: Prediction | None = None, top_share: float = TOP_SHARE) -> Takeaway:
    """The :class:`Takeaway` of a dense and a SPADE map.

    dense_map, spade_map: ``(H, W)`` float maps (tensor or array; signed or absolute, read as ``|map|``) of the
    same size. mask: optional bool ``(H, W)`` (True inside the region, e.g. the trigger). dense_top1, trace_top1:
    the dense model's and the trace's top-1 predictions (``Prediction``), for the decision part of the sentence.
    ConfigError on maps of different sizes, a mask of another size, or a top_share outside (0, 1]."""
    dense = _absolute(dense_map, "The dense map")
    sparse = _absolute(spade_map, "The SPADE map")
    if dense.shape != sparse.shape:
        raise ConfigError(f"Both maps must have one size, got {dense.shape} and {sparse.shape}.")
    top_dense, top_spade = top_region(dense, top_share), top_region(sparse, top_share)
    moved = _share(sparse, top_spade, ~top_dense)
    overlap = float((top_dense & top_spade).sum() / top_dense.sum())
    dense_mass = dense[top_dense].sum()
    strength = float(sparse[top_spade].sum() / dense_mass) if dense_mass > 0 else float("nan")
    change = _region_shares(sparse, top_spade) - _region_shares(dense, top_dense)
    gained = lost = None
    if np.isfinite(change).all() and np.abs(change).max() > 0:
        gained = REGION_NAMES[int(np.argmax(change)) // 3][int(np.argmax(change)) % 3]
        lost = REGION_NAMES[int(np.argmin(change)) // 3][int(np.argmin(change)) % 3]
    mask_dense = mask_spade = None
    if mask is not None:
        region = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask).astype(bool)
        if region.shape != dense.shape:
            raise ConfigError(f"The mask must have the maps' size {dense.shape}, got {region.shape}.")
        mask_dense, mask_spade = _share(dense, top_dense, region), _share(sparse, top_spade, region)
        mask_dense = None if math.isnan(mask_dense) else mask_dense
        mask_spade = None if math.isnan(mask_spade) else mask_spade
        if mask_dense is None or mask_spade is None:
            mask_dense = mask_spade = None
    return Takeaway(top_share=top_share, moved=moved, overlap=overlap,
                    rank_correlation=rank_correlation(dense, sparse), strength=strength, gained=gained, lost=lost,
                    mask_dense=mask_dense, mask_spade=mask_spade, dense_top1=dense_top1, trace_top1=trace_top1)
