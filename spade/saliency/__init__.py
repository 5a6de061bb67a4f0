"""Saliency methods, one registry keyed by name; the same call explains a dense model or a SPADE trace.

>>> from spade.saliency import METHODS
>>> attribution = METHODS["integrated_gradients"].explain(model, x, target)   # x: normalized (3, H, W)
>>> attribution.signed_map, attribution.absolute_map                          # (H, W) float32 CPU

Each entry's settings default to the SPADE authors' settings (``METHODS[name].default_settings()``);
override with ``METHODS[name].settings(n_samples=200, ...)``. The model is never modified: every method
works on a private attribution copy (see ``spade.saliency.attribution_model``).

A dense and a SPADE attribution of one image, scored against a mask or by insertion / deletion:

>>> pair = attribution_pair("integrated_gradients", model, trace, x, target)     # an AttributionPair
>>> pair.scores(mask, model=model).spade.mask.trojan_auc

Layout (like Captum's ``attr/_core``): ``base`` (types), ``attribution_model`` (copies), ``gradient``,
``backprop``, ``lrp``, ``cam``, ``score_cam``, ``perturbation`` (+ ``segmentation``), ``compare``
(:class:`AttributionPair`),
``takeaway`` (what SPADE changed in one comparison, as numbers and one sentence: :class:`Takeaway`).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy, build_attribution_copy, clear_cache
from spade.saliency.backprop import DeepLiftSettings, GuidedBackpropSettings, run_deeplift, run_guided_backprop
from spade.saliency.base import Attribution, SaliencyMethod
from spade.saliency.cam import (
    GradCamSettings,
    GuidedGradCamSettings,
    default_cam_layer,
    run_gradcam,
    run_guided_gradcam,
)
from spade.saliency.gradient import (
    GradientShapSettings,
    InputXGradientSettings,
    IntegratedGradientsSettings,
    SaliencySettings,
    SmoothGradSettings,
    run_gradient_shap,
    run_input_x_gradient,
    run_integrated_gradients,
    run_saliency,
    run_smoothgrad,
)
from spade.saliency.lrp import LRPSettings, run_lrp
from spade.saliency.perturbation import LimeSettings, OcclusionSettings, run_lime, run_occlusion
from spade.saliency.score_cam import ScoreCamSettings, run_score_cam

_ENTRIES = (
    SaliencyMethod("saliency", "Saliency", "gradient", SaliencySettings, run_saliency,
                   description="Absolute input gradient of the target logit (Simonyan et al.)."),
    SaliencyMethod("input_x_gradient", "InputXGradient", "gradient", InputXGradientSettings, run_input_x_gradient,
                   description="Input times gradient."),
    SaliencyMethod("deeplift", "DeepLift", "gradient", DeepLiftSettings, run_deeplift,
                   description="DeepLift rescale rule from a zero baseline."),
    SaliencyMethod("lrp", "LRP", "gradient", LRPSettings, run_lrp,
                   description="Layer-wise relevance propagation, alpha=1 beta=0 rule (zennit)."),
    SaliencyMethod("guided_backprop", "GuidedBackprop", "gradient", GuidedBackpropSettings, run_guided_backprop,
                   description="Gradient where activations only pass positive gradient."),
    SaliencyMethod("guided_gradcam", "GuidedGradCam", "gradient", GuidedGradCamSettings, run_guided_gradcam,
                   description="Guided backprop times the upsampled GradCAM of the last stage."),
    SaliencyMethod("lime", "LIME", "perturbation", LimeSettings, run_lime, random=True,
                   description="Sparse linear surrogate over superpixels, positive weights."),
    SaliencyMethod("occlusion", "Occlusion", "perturbation", OcclusionSettings, run_occlusion,
                   description="Output drop when a sliding 15x15 window is set to 0."),
    SaliencyMethod("integrated_gradients", "IntegratedGradients", "gradient", IntegratedGradientsSettings,
                   run_integrated_gradients, description="Path integral of gradients from a zero baseline."),
    SaliencyMethod("gradient_shap", "GradientShap", "gradient", GradientShapSettings, run_gradient_shap,
                   random=True, description="Expected gradients over noisy inputs and random baselines."),
    SaliencyMethod("gradcam", "GradCAM", "layer", GradCamSettings, run_gradcam, paper=False,
                   description="Class activation map of the last stage from its gradients."),
    SaliencyMethod("score_cam", "Score-CAM", "layer", ScoreCamSettings, run_score_cam, paper=False,
                   description="Class activation map of the last stage, each channel weighted by how much it "
                               "raises the class's softmax score when used as a mask on the image."),
    SaliencyMethod("smoothgrad", "SmoothGrad", "gradient", SmoothGradSettings, run_smoothgrad, random=True,
                   paper=False, description="Mean gradient over noisy copies of the input."),
)

METHODS: dict[str, SaliencyMethod] = {m.name: m for m in _ENTRIES}
"""All saliency methods by registry name, in the paper's order (its ten first, then GradCAM, Score-CAM and
SmoothGrad)."""

PAPER_METHODS: tuple[str, ...] = tuple(m.name for m in _ENTRIES if m.paper)


def get_method(name: str) -> SaliencyMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"Unknown saliency method {name!r}; choose from {', '.join(METHODS)}.") from None


def settings_for(name: str, *, layer: str | None = None, seed: int | None = None, **overrides: Any) -> Any:
    """Default settings of method ``name`` with the model's CAM ``layer`` (e.g. ``spec.last_conv_stage``) and a
    ``seed`` filled in where the method has such a field (ignored otherwise), plus explicit ``overrides``."""
    method = get_method(name)
    extra = {k: v for k, v in (("layer", layer), ("seed", seed)) if v is not None and method.accepts(k)}
    return method.settings(**extra, **overrides)


def explain(name: str, model: nn.Module, x: torch.Tensor, target: int, settings: Any = None, *,
            progress: Progress | None = None) -> Attribution:
    """``METHODS[name].explain(...)``."""
    return get_method(name).explain(model, x, target, settings, progress=progress)


# spade.metrics, which compare uses, imports this package's submodules: compare is imported on first use.
_LAZY = {name: "spade.saliency.compare"
         for name in ("AttributionPair", "MapScores", "MaskScores", "PairScores", "attribution_pair", "mask_scores")}
_LAZY.update({name: "spade.saliency.takeaway" for name in ("Takeaway", "compare_maps")})


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spade.saliency' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "PAPER_METHODS",
    "Attribution",
    "AttributionPair",
    "DeepLiftSettings",
    "GradCamSettings",
    "GradientShapSettings",
    "GuidedBackpropSettings",
    "GuidedGradCamSettings",
    "InputXGradientSettings",
    "IntegratedGradientsSettings",
    "LRPSettings",
    "LimeSettings",
    "MapScores",
    "MaskScores",
    "Mode",
    "OcclusionSettings",
    "PairScores",
    "Progress",
    "SaliencyMethod",
    "SaliencySettings",
    "ScoreCamSettings",
    "SmoothGradSettings",
    "Takeaway",
    "attribution_copy",
    "attribution_pair",
    "build_attribution_copy",
    "clear_cache",
    "compare_maps",
    "default_cam_layer",
    "explain",
    "get_method",
    "mask_scores",
    "settings_for",
]
