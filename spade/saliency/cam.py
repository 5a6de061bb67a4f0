"""GradCAM and Guided GradCAM (Captum's LayerGradCam on a plain copy; guided gradients from ``backprop``).

The layer is a module name of the model (callers pass the model spec's ``last_conv_stage``, e.g.
``"layer4"`` for a ResNet, ``"blocks"`` for EfficientNet-Lite). Without one, :func:`default_cam_layer`
picks the last top-level child that contains a convolution with a spatial kernel (larger than 1x1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy
from spade.saliency.backprop import guided_gradients


@dataclass(frozen=True)
class GradCamSettings:
    """layer: module name (None: :func:`default_cam_layer`); relu: keep positive evidence only (the GradCAM paper);
    interpolate_mode: how the coarse map is upsampled to the input size."""

    layer: str | None = None
    relu: bool = True
    interpolate_mode: str = "bilinear"


@dataclass(frozen=True)
class GuidedGradCamSettings:
    """Guided backprop times the upsampled GradCAM of ``layer``; Captum's defaults (ReLU, nearest upsampling)."""

    layer: str | None = None
    interpolate_mode: str = "nearest"


def default_cam_layer(model: nn.Module) -> str:
    """Name of the last top-level child holding a convolution with a kernel larger than 1x1 (found by type)."""
    chosen = None
    for name, child in model.named_children():
        for m in child.modules():
            if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
                chosen = name
                break
    if chosen is None:
        raise ConfigError(f"{type(model).__name__} has no convolutional stage for GradCAM; pass a layer name.")
    return chosen


def resolve_cam_layer(net: nn.Module, name: str | None) -> nn.Module:
    """The submodule ``name`` of ``net`` (None: :func:`default_cam_layer`), for the CAM methods."""
    name = default_cam_layer(net) if name is None else name
    try:
        return net.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(f"The model has no module named {name!r} for a class activation map.") from exc


def gradcam(model: nn.Module, x: torch.Tensor, target: int, layer: str | None, relu: bool,
            interpolate_mode: str) -> torch.Tensor:
    """GradCAM map upsampled to the input: ``(1, H, W)``."""
    with attribution_copy(model, Mode.PLAIN, x) as net:
        cam = LayerGradCam(net, resolve_cam_layer(net, layer)).attribute(x, target=target, relu_attributions=relu)
    if cam.dim() != 4:
        raise ConfigError("The GradCAM layer must output a (N, C, H, W) feature map; choose a convolutional stage.")
    up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode=interpolate_mode)
    return up[0]


def run_gradcam(model: nn.Module, x: torch.Tensor, target: int, settings: GradCamSettings,
                progress: Progress) -> torch.Tensor:
    return gradcam(model, x, target, settings.layer, settings.relu, settings.interpolate_mode)


def run_guided_gradcam(model: nn.Module, x: torch.Tensor, target: int, settings: GuidedGradCamSettings,
                       progress: Progress) -> torch.Tensor:
    cam = gradcam(model, x, target, settings.layer, True, settings.interpolate_mode)
    return guided_gradients(model, x, target) * cam
