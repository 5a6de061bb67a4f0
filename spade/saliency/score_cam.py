"""Score-CAM (Wang et al., CVPR-W 2020): a class activation map weighted by how much each channel's activation,
used as a mask on the input, raises the class's softmax score. Forward passes only, no gradients.

For the layer's activations ``A`` (K, h, w): each channel is upsampled to the input size (bilinear) and min-max
normalised to a mask ``H_k`` in [0, 1]; its weight is the increase of the target's softmax probability when the
input is masked by it, over the fully masked input (``p(x * H_k) - p(x * 0)``; masking happens in normalized
space, so a masked-out pixel is the dataset's mean colour); the map is ``ReLU(sum_k w_k A_k)`` at the layer's
resolution, upsampled to the input.

Own implementation rather than ``pytorch-grad-cam``'s ``ScoreCAM`` (checked, version 1.5.7): that one weights the
channels by a softmax *over channels* of the raw target outputs (not the paper's increase of the class's
softmax score), reports progress through tqdm bars on stderr only (the registry passes a ``progress`` callback),
rescales every map to [0, 1] through numpy and OpenCV, and would bring opencv, matplotlib and ttach into the
library's dependencies for about forty lines of torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from torch import nn

from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy
from spade.saliency.base import check_batch_size
from spade.saliency.cam import resolve_cam_layer


@dataclass(frozen=True)
class ScoreCamSettings:
    """layer: module name whose (N, C, h, w) output is used (None: ``spade.saliency.cam.default_cam_layer``);
    batch_size: masked images per forward pass (None: 8 on the CPU, 32 on a GPU); interpolate_mode: how the
    coarse map is upsampled to the input size (the masks are always bilinear, as in the paper)."""

    layer: str | None = None
    batch_size: int | None = None
    interpolate_mode: str = "bilinear"


def _layer_output(net: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(1, K, h, w) output of ``layer`` for ``x``."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        net(x)
    finally:
        handle.remove()
    if not seen or not isinstance(seen[0], torch.Tensor) or seen[0].dim() != 4:
        raise ConfigError("The Score-CAM layer must output a (N, C, H, W) feature map; choose a convolutional stage.")
    return seen[0]


def channel_masks(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, K, h, w) activations -> (K, H, W) masks: each channel upsampled (bilinear) and min-max scaled to [0, 1]
    (a constant channel gives an all-zero mask)."""
    up = F.interpolate(activations, size=size, mode="bilinear", align_corners=False)[0]
    flat = up.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp_min(1e-8)
    return (up - low[:, None, None]) / span[:, None, None] * (high > low)[:, None, None]


def score_cam(model: nn.Module, x: torch.Tensor, target: int, settings: ScoreCamSettings,
              progress: Progress) -> torch.Tensor:
    """Score-CAM map of class ``target`` on ``x`` ((1, 3, H, W) normalized): ``(1, H, W)``, >= 0."""
    batch_size = check_batch_size(settings.batch_size, x.device)
    with attribution_copy(model, Mode.PLAIN, x) as net, torch.no_grad():
        activations = _layer_output(net, resolve_cam_layer(net, settings.layer), x)
        masks = channel_masks(activations, tuple(x.shape[-2:]))
        baseline = F.softmax(net(torch.zeros_like(x)), dim=1)[0, target]
        weights = torch.empty(masks.shape[0], device=x.device)
        for start in range(0, masks.shape[0], batch_size):
            chunk = masks[start:start + batch_size]
            probs = F.softmax(net(x * chunk[:, None]), dim=1)[:, target]
            weights[start:start + len(chunk)] = probs - baseline
            progress("score_cam", (start + len(chunk)) / masks.shape[0])
        cam = F.relu((weights[:, None, None] * activations[0]).sum(dim=0))
    up = LayerAttribution.interpolate(cam[None, None], tuple(x.shape[-2:]), interpolate_mode=settings.interpolate_mode)
    return up[0]


def run_score_cam(model: nn.Module, x: torch.Tensor, target: int, settings: ScoreCamSettings,
                  progress: Progress) -> torch.Tensor:
    return score_cam(model, x, target, settings, progress)
