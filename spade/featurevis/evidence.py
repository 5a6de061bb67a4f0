"""Neuron evidence on the sample itself: where the neuron fires on the image, and which views excite it most."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from spade.augment import AugmentConfig, augment
from spade.defaults import default_augmentations
from spade.devices import model_device
from spade.errors import ConfigError
from spade.featurevis.objectives import (
    ChannelMean,
    Neuron,
    Objective,
    capture,
    check_layers,
    evaluate,
    objective_values,
)
from spade.featurevis.optimize import network_for
from spade.preprocessing import Preprocessing
from spade.progress import Progress

#: Views for the evidence: crops and flips only, so that the patches show the image's real colours.
EVIDENCE_AUGMENT = AugmentConfig(count=default_augmentations("evidence"), brightness=0.0, hue=0.0)


@dataclass(frozen=True, eq=False)
class NeuronEvidence:
    """The neuron on one image.

    image: (H, W, 3) float32 in [0, 1], the model's view of the image (resized, centre-cropped).
    activation_map: (H, W) float32, the neuron's map upsampled (bilinear) to the image; see ``map_kind``.
    value: the objective on the image. views: (k, H, W, 3) float32 in [0, 1], the augmented views (random
    crops of the image) with the highest objective, best first; view_values: (k,) their objective values;
    view_indices: (k,) their index in the augmented batch; all_view_values: (N,) objective on every view.
    """

    image: np.ndarray
    activation_map: np.ndarray
    map_kind: str
    value: float
    views: np.ndarray
    view_values: np.ndarray
    view_indices: np.ndarray
    all_view_values: np.ndarray


@contextmanager
def _capture_output(model: nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Store module ``layer``'s full output under "out" (the model continues with a copy, so in-place
    operations after the layer cannot change the stored tensor). The hook is always removed."""
    modules = dict(model.named_modules())
    check_layers(modules, {layer})
    store: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"Layer {layer} does not output a tensor.")
        store["out"] = output
        return output.clone()

    handle = modules[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def last_spatial_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module (in execution order) whose output is a (B, C, h, w) map with h * w > 1 for
    input ``x``: the feature map that global pooling feeds to the classifier (e.g. ResNet ``layer4``)."""
    names: list[str] = []
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                def hook(mod, inputs, output, _name=name):
                    if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
                        names.append(_name)
                handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not names:
        raise ConfigError("This model has no spatial feature map to show the class evidence on.")
    return names[-1]


def _upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def _term_map(model: nn.Module, x: torch.Tensor, objective: Objective, feature_layer: str | None
              ) -> tuple[torch.Tensor, str]:
    size = tuple(x.shape[-2:])
    if isinstance(objective, (ChannelMean, Neuron)):
        with torch.no_grad(), capture(model, objective.keys()) as store:
            model(x)
        a = store[(objective.layer, objective.channel)]
        if a.dim() == 3:
            return _upsample(a[0], size), f"activation of {objective.layer}:{objective.channel}"
    # a class logit or a non-spatial unit: its contributions at a spatial feature map
    layer = feature_layer or last_spatial_layer(model, x)
    x = x.detach().clone().requires_grad_(True)  # a graph even for a model whose parameters are frozen
    with torch.enable_grad(), _capture_output(model, layer) as feat, capture(model, objective.keys()) as store:
        value = evaluate([objective], model(x), store)[0, 0]
        features = feat.get("out")
        if features is None or features.dim() != 4:
            raise ConfigError(f"Layer {layer} does not output a (batch, channels, h, w) feature map.")
        (grad,) = torch.autograd.grad(value, [features], allow_unused=True)
    if grad is None:
        raise ConfigError(f"{objective.describe()} does not depend on layer {layer}; pick an earlier feature layer.")
    # gradient x activation summed over channels: for a global-average-pool + linear head this is the
    # class activation map (its positions sum to the logit minus the bias)
    return (_upsample((grad * features).sum(1)[0].detach(), size),
            f"how much each place adds to {objective.describe()} (gradient × activation at layer {layer})")


def activation_map(model: nn.Module, x: torch.Tensor, objective: Objective, feature_layer: str | None = None
                   ) -> tuple[np.ndarray, str]:
    """The objective's map over one normalized input ``x`` (1, 3, H, W) -> ((H, W) float32, description).

    A channel (mean or single neuron) of a spatial layer: that channel's activation, upsampled. A class
    logit (or a unit without spatial extent): gradient x activation summed over channels at
    ``feature_layer`` (default: `last_spatial_layer`). A weighted sum: the weighted sum of its terms' maps.
    """
    total, kinds = None, []
    for weight, term in objective.terms():
        m, kind = _term_map(model, x, term, feature_layer)
        total = weight * m if total is None else total + weight * m
        kinds.append(kind if weight == 1.0 else f"{weight:g} x {kind}")
    return total.float().cpu().numpy(), " + ".join(kinds)


def _to_display(x: torch.Tensor, pre: Preprocessing) -> np.ndarray:
    """Normalized (..., 3, H, W) -> (..., H, W, 3) float32 numpy in [0, 1]."""
    return pre.denormalize(x.detach().float().cpu()).clamp(0, 1).movedim(-3, -1).numpy()


def neuron_evidence(model: nn.Module, image: Image.Image, objective: Objective, *,
                    preprocessing: Preprocessing, augment_config: AugmentConfig = EVIDENCE_AUGMENT,
                    top_k: int = 4, feature_layer: str | None = None, batch_size: int = 16,
                    progress: Progress | None = None) -> NeuronEvidence:
    """Activation map of ``objective`` on the RGB ``image`` and its ``top_k`` most exciting augmented views.

    The model (dense or a trace's) is read only, on its own device; hooks are removed on return or error.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}.")
    pre = getattr(preprocessing, "preprocessing", preprocessing)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        if progress is not None:
            progress("evidence", 0.0)  # the activation map and the augmentations come first
        x = pre(image).unsqueeze(0).to(device)
        amap, kind = activation_map(model, x, objective, feature_layer)
        views = augment(image, augment_config, pre)
        values = []
        with network_for(model, [objective], x) as net, torch.inference_mode():
            value = float(objective_values(net, x, [objective])[0, 0])
            for i in range(0, views.shape[0], batch_size):
                values.append(objective_values(net, views[i:i + batch_size].to(device), [objective])[:, 0].cpu())
                if progress is not None:
                    progress("evidence", min(views.shape[0], i + batch_size) / views.shape[0])
    finally:
        model.train(was_training)
    all_values = torch.cat(values).float()
    top = all_values.topk(min(top_k, all_values.numel()))
    return NeuronEvidence(
        image=_to_display(x[0], pre), activation_map=amap, map_kind=kind, value=value,
        views=_to_display(views[top.indices], pre), view_values=top.values.numpy(),
        view_indices=top.indices.numpy(), all_view_values=all_values.numpy())
