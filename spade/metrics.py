"""Metrics for saliency maps: Trojan AUC, pointing game, mass in mask, rank correlation, insertion / deletion.

Maps are 2-D ``(H, W)`` scores (tensors or arrays), e.g. ``Attribution.signed_map``; masks are boolean
``(H, W)`` with True on the ground-truth region (e.g. a Trojan trigger).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

from spade.devices import model_device
from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy
from spade.saliency.base import check_batch_size


def _as_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D (H, W) map, got shape {arr.shape}.")
    return arr


def _scores_and_mask(scores, mask) -> tuple[np.ndarray, np.ndarray]:
    s = _as_array(scores, "The saliency map").astype(np.float64)
    m = _as_array(mask, "The mask").astype(bool)
    if s.shape != m.shape:
        raise ConfigError(f"The saliency map {s.shape} and the mask {m.shape} must have the same size.")
    if not np.isfinite(s).all():
        raise ConfigError("The saliency map contains NaN or infinite values.")
    return s, m


@dataclass(frozen=True)
class AucResult:
    """ROC-AUC of pixel scores against a mask: of the signed map, of its absolute value, and the better one."""

    signed: float
    absolute: float

    @property
    def best(self) -> float:
        """max(signed, absolute), the variant the authors reported."""
        return max(self.signed, self.absolute)


def trojan_auc(scores, mask) -> AucResult:
    """ROC-AUC of ``scores`` (signed ``(H, W)`` map) and of ``|scores|`` for separating mask pixels from the rest.

    Ties count one half (scikit-learn's ``roc_auc_score``), so a constant map scores 0.5. The mask must
    contain both True and False pixels.
    """
    s, m = _scores_and_mask(scores, mask)
    if m.all() or not m.any():
        raise ConfigError("The mask must contain both pixels inside and pixels outside the region.")
    labels = m.ravel()
    return AucResult(signed=float(roc_auc_score(labels, s.ravel())),
                     absolute=float(roc_auc_score(labels, np.abs(s).ravel())))


def pointing_game(scores, mask) -> bool:
    """Hit when the map's maximum lies inside the mask; with several maximal pixels all must be inside
    (so a constant map does not hit)."""
    s, m = _scores_and_mask(scores, mask)
    return bool(m[s == s.max()].all())


def mass_in_mask(scores, mask) -> float:
    """Fraction of the saliency mass ``sum |scores|`` that lies inside the mask (0..1; NaN for an all-zero map)."""
    s, m = _scores_and_mask(scores, mask)
    total = np.abs(s).sum()
    if total == 0:
        return float("nan")
    return float(np.abs(s[m]).sum() / total)


ALIKE_CORRELATION = 0.9
"""A rank correlation of two maps at or above this: they rank pixels almost alike and look much the same."""


def rank_correlation(map_a, map_b) -> float:
    """Spearman rank correlation of two maps of the same size (ties get average ranks); NaN if one is constant."""
    a = _as_array(map_a, "The first map").astype(np.float64).ravel()
    b = _as_array(map_b, "The second map").astype(np.float64).ravel()
    if a.shape != b.shape:
        raise ConfigError("Both maps must have the same size to compare them.")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass(frozen=True)
class CurveResult:
    """Insertion / deletion curves and their areas (both in [0, 1]).

    fractions: ``(steps,)`` the fraction of pixels inserted / deleted at each point (i / steps);
    insertion, deletion: ``(steps,)`` the dense model's target probability relative to the unmasked image,
    clipped to [0, 1]. Higher insertion AUC and lower deletion AUC mean a more faithful map.
    """

    insertion_auc: float
    deletion_auc: float
    fractions: np.ndarray
    insertion: np.ndarray
    deletion: np.ndarray

    @property
    def curves(self) -> dict[str, np.ndarray]:
        return {"fraction": self.fractions, "insertion": self.insertion, "deletion": self.deletion}


def curve_auc(values: np.ndarray) -> float:
    """Trapezoid area under ``values`` sampled at evenly spaced points spanning [0, 1]."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise ConfigError("A curve needs at least 2 points.")
    return float((values.sum() - values[0] / 2 - values[-1] / 2) / (values.size - 1))


def pixel_order(saliency) -> torch.Tensor:
    """Flat pixel indices from most to least salient; ties keep row-major order (stable sort)."""
    s = torch.as_tensor(_as_array(saliency, "The saliency map").astype(np.float32))
    return torch.argsort(-s.reshape(-1), stable=True)


def insertion_deletion(
    model: nn.Module,
    x: torch.Tensor,
    saliency,
    target: int,
    steps: int = 100,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> CurveResult:
    """The authors' insertion / deletion protocol.

    x: normalized ``(3, H, W)`` or ``(1, 3, H, W)`` image; saliency: ``(H, W)`` scores (pixels ranked by
    value, high first). For i = 0..steps-1, the k_i = floor(i * H * W / steps) most salient pixels are kept
    (insertion; all other pixels set to 0 in normalized space) or set to 0 (deletion). Each point is the
    softmax probability of ``target`` divided by the probability on the unmasked image, clipped to [0, 1];
    the AUC is the trapezoid over the ``steps`` points spread evenly over [0, 1] (:func:`curve_auc`).
    Runs ``2 * steps + 1`` images (no gradients) in batches of ``batch_size`` (None: 8 on the CPU, 32 on a
    GPU) through the eval-mode attribution copy of ``model`` (BatchNorm folded, same function; the model
    itself is never run or modified, so a model left in training mode is evaluated in eval mode).
    """
    if steps < 2:
        raise ConfigError("insertion_deletion needs steps >= 2.")
    device = model_device(model)
    batch_size = check_batch_size(batch_size, device)
    img = x.detach().to(device=device, dtype=torch.float32)
    img = img[0] if img.dim() == 4 else img
    if img.dim() != 3:
        raise ConfigError(f"Expected one image (3, H, W), got shape {tuple(x.shape)}.")
    height, width = img.shape[-2:]
    if tuple(_as_array(saliency, "The saliency map").shape) != (height, width):
        raise ConfigError("The saliency map must have the image's height and width.")
    n_pixels = height * width
    order = pixel_order(saliency).to(device)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_pixels, device=device)  # rank[p] = position of pixel p in the order
    counts = [(i * n_pixels) // steps for i in range(steps)]

    # image j < steps: insertion with counts[j] pixels; steps <= j < 2 steps: deletion; last: unmasked
    def make(j: int) -> torch.Tensor:
        if j == 2 * steps:
            return img
        k = counts[j % steps]
        top = (rank < k).view(1, height, width)
        keep = top if j < steps else ~top
        return img * keep

    total = 2 * steps + 1
    probs = torch.empty(total, dtype=torch.float64)
    with attribution_copy(model, Mode.PLAIN, img[None]) as net, torch.no_grad():
        for start in range(0, total, batch_size):
            idx = range(start, min(total, start + batch_size))
            out = net(torch.stack([make(j) for j in idx]))
            if target >= out.shape[1]:
                raise ConfigError(f"Target class {target} does not exist; the model has {out.shape[1]} outputs.")
            probs[start: idx.stop] = torch.softmax(out.double(), dim=1)[:, target].cpu()
            if progress is not None:
                progress("insertion_deletion", idx.stop / total)
    reference = probs[-1]
    if reference <= 0:
        raise ConfigError("The model gives the target class probability 0 on the unmasked image.")
    relative = (probs[:-1] / reference).clamp(0, 1).numpy()
    insertion, deletion = relative[:steps], relative[steps:]
    return CurveResult(
        insertion_auc=curve_auc(insertion),
        deletion_auc=curve_auc(deletion),
        fractions=np.array(counts, dtype=np.float64) / n_pixels,
        insertion=insertion,
        deletion=deletion,
    )
