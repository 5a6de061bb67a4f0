"""Perturbation methods: Occlusion (Captum) and LIME (Captum's algorithm, vectorised). Both only run forward
passes, batched by ``batch_size``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import Occlusion
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy
from spade.saliency.base import CountingForward, check_batch_size, seeded_generator
from spade.saliency.segmentation import grid_segments, slic_segments


@dataclass(frozen=True)
class OcclusionSettings:
    """The authors' settings: a 3x15x15 window (all channels), stride 3x8x8, replaced by 0 (normalized space).

    batch_size: occluded images per forward pass (None: 8 on the CPU, 32 on a GPU).
    """

    window: tuple[int, int, int] = (3, 15, 15)
    stride: tuple[int, int, int] = (3, 8, 8)
    baseline: float = 0.0
    batch_size: int | None = None


@dataclass(frozen=True)
class LimeSettings:
    """LIME with Captum's defaults (Lasso alpha 0.01, exponential cosine kernel of width 1) on superpixels.

    n_samples: 1000 as the authors; positive_only: keep positive weights only (the authors' setting);
    segmentation: "slic" (our dependency-free SLIC, see ``segmentation``) or "grid" (square cells);
    n_segments / compactness: superpixel count and SLIC compactness; baseline: the value of a switched-off
    superpixel (0 in normalized space); seed: seeds the random on/off samples; batch_size: samples per
    forward pass (None: 8 on the CPU, 32 on a GPU).
    """

    n_samples: int = 1000
    positive_only: bool = True
    segmentation: str = "slic"
    n_segments: int = 100
    compactness: float = 10.0
    baseline: float = 0.0
    seed: int = 0
    batch_size: int | None = None


def _n_windows(shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return math.prod((dim - w) // s + 1 for dim, w, s in zip(shape, window, stride, strict=True))


def run_occlusion(model: nn.Module, x: torch.Tensor, target: int, settings: OcclusionSettings,
                  progress: Progress) -> torch.Tensor:
    batch = check_batch_size(settings.batch_size, x.device)
    window, stride = tuple(settings.window), tuple(settings.stride)
    if len(window) != 3 or len(stride) != 3 or any(w > d for w, d in zip(window, x.shape[1:], strict=True)):
        raise ConfigError(f"Occlusion window {window} / stride {stride} must be 3 values that fit the image.")
    total = 1 + _n_windows(tuple(x.shape[1:]), window, stride)
    x = x.detach()
    with attribution_copy(model, Mode.PLAIN, x) as net, torch.no_grad():  # forward passes only
        forward = CountingForward(net, total, "occlusion", progress)
        attr = Occlusion(forward).attribute(x, sliding_window_shapes=window, strides=stride, target=target,
                                            baselines=settings.baseline, perturbations_per_eval=batch)
    return attr[0]


def lime_segments(x: torch.Tensor, settings: LimeSettings) -> torch.Tensor:
    """``(H, W)`` long superpixel labels of a normalized image ``(1, 3, H, W)``.

    SLIC runs on the input rescaled to [0, 1] with one global min/max (an affine map of the original
    colours when the model's normalization uses equal stds, and close to it otherwise).
    """
    height, width = x.shape[-2:]
    if settings.segmentation == "grid":
        return grid_segments(height, width, settings.n_segments)
    if settings.segmentation == "slic":
        img = x[0].detach().float().cpu()
        img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-12)
        return slic_segments(img, settings.n_segments, settings.compactness)
    raise ConfigError(f"Unknown LIME segmentation {settings.segmentation!r}; use 'slic' or 'grid'.")


def run_lime(model: nn.Module, x: torch.Tensor, target: int, settings: LimeSettings,
             progress: Progress) -> torch.Tensor:
    """``(3, H, W)`` LIME attribution of class ``target`` for one normalized image ``x`` ``(1, 3, H, W)``.

    Captum's `Lime` with its defaults, computed batch by batch instead of sample by sample (the same numbers
    up to float rounding, see the tests): ``n_samples`` on/off draws of the superpixels, Bernoulli(0.5) from a
    CPU generator seeded with ``seed`` (captum's ``default_perturb_func`` draws one row at a time from the global
    generator, which gives the same rows); each sample weighted by the exponential kernel of its cosine distance
    to ``x`` (width 1); a Lasso (alpha 0.01, captum's ``SkLearnLasso``) from the draws to the target logit; each
    pixel gets its superpixel's coefficient. Captum's loop costs a device sync and a dozen small kernels per
    sample, which dominates on a GPU; here a batch costs the same few kernels as one sample.
    """
    batch = check_batch_size(settings.batch_size, x.device)
    if settings.n_samples < 2:
        raise ConfigError("LIME needs n_samples >= 2.")
    x = x.detach()
    segments = lime_segments(x, settings).to(x.device)
    segments = segments - segments.min()  # captum shifts the labels to start at 0
    n_features = int(segments.max()) + 1
    draws = torch.bernoulli(torch.full((settings.n_samples, n_features), 0.5),
                            generator=seeded_generator(settings.seed))
    flat_x = x.flatten().float()
    outputs, similarities = [], []
    with attribution_copy(model, Mode.PLAIN, x) as net, torch.no_grad():  # forward passes only
        for start in range(0, settings.n_samples, batch):
            on = draws[start:start + batch].to(x.device).bool()[:, segments][:, None]  # (b, 1, H, W)
            inputs = torch.where(on, x, torch.tensor(settings.baseline, dtype=x.dtype, device=x.device))
            cosine = nn.functional.cosine_similarity(flat_x[None], inputs.flatten(1).float(), dim=1)
            similarities.append(torch.exp(-((1 - cosine.double()) ** 2) / 2))
            outputs.append(net(inputs)[:, target])
            progress("lime", min(1.0, (start + len(on)) / settings.n_samples))
    lasso = SkLearnLasso(alpha=0.01)
    data = TensorDataset(draws, torch.cat(outputs).float().cpu(), torch.cat(similarities).float().cpu())
    lasso.fit(DataLoader(data, batch_size=settings.n_samples))
    coefficients = lasso.representation().flatten().to(x.device, torch.float32)
    attr = coefficients[segments].expand(x.shape[1:])
    return attr.clamp(min=0) if settings.positive_only else attr.clone()
