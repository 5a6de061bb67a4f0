"""Modified-backprop methods on canonicalised copies: DeepLift (Captum) and Guided Backprop (own rule).

DeepLift runs Captum's rescale rule on a copy whose activations are one ``nn.ReLU`` per call site
(ReLU6 as two ReLUs, see ``attribution_model.ClampAsReLUs``), so it is exact for ReLU6 models and for
torchvision's reused ReLUs. Guided Backprop is the gradient through a copy whose clamps use the guided
rule ``relu(grad) * [low < x < high]`` (``GuidedClamp``); Captum's version only overrides ``nn.ReLU``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from captum.attr import DeepLift
from torch import nn

from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy
from spade.saliency.base import target_gradient


@dataclass(frozen=True)
class DeepLiftSettings:
    """Rescale rule from a constant baseline (the authors: 0 in normalized space)."""

    baseline: float = 0.0


@dataclass(frozen=True)
class GuidedBackpropSettings:
    """No options: gradient with every ReLU-type clamp passing only positive gradient where it is not flat."""


def run_deeplift(model: nn.Module, x: torch.Tensor, target: int, settings: DeepLiftSettings,
                 progress: Progress) -> torch.Tensor:
    with attribution_copy(model, Mode.DEEPLIFT, x) as net, warnings.catch_warnings():
        # Captum warns that it sets (and later removes) hooks on the copy's activations: expected here.
        warnings.filterwarnings("ignore", message=".*hooks.*", category=UserWarning)
        attr = DeepLift(net).attribute(x, baselines=torch.full_like(x, settings.baseline), target=target)
    return attr[0]


def guided_gradients(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Guided-backprop gradients ``(3, H, W)`` of the target logit (shared with Guided GradCAM)."""
    with attribution_copy(model, Mode.GUIDED, x) as net:
        return target_gradient(net, x, target)[0]


def run_guided_backprop(model: nn.Module, x: torch.Tensor, target: int, settings: GuidedBackpropSettings,
                        progress: Progress) -> torch.Tensor:
    return guided_gradients(model, x, target)
