"""``create_study``: everything a study shows, computed once when the researcher creates it.

Per image: the model's view of it (resize + centre crop), the neuron (a class logit; default the dense
model's prediction), the ground-truth map on the dense model (Score-CAM, the paper's choice, unless configured
otherwise), the two patches (``spade_study.design.choose_patches``), and one feature visualization per
condition (method ``VisualizationSettings.method``): on the dense model (computed once per distinct neuron, since
it does not depend on the image) and on the image's SPADE trace (``spade.featurevis.visualization_trace``, by
default a class logit's: only the classifier at 0.95).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import torch
from PIL import Image
from torch import nn

from spade.augment import AugmentConfig
from spade.devices import model_device
from spade.errors import ConfigError
from spade.featurevis import ClassLogit, FeatureVisConfig, visualization_trace
from spade.featurevis.side_by_side import visualize_each
from spade.layers import LayerSelection
from spade.preprocessing import Preprocessing
from spade.progress import Progress
from spade.saliency import METHODS
from spade.solver import SolverConfig
from spade_study.design import (
    Patch,
    Study,
    StudyConfig,
    StudyImage,
    StudyItem,
    VisualizationSettings,
    choose_patches,
    crop,
    patch_side,
    png_bytes,
)

log = logging.getLogger(__name__)

OVERALL = "study"
"""Progress stage of the whole creation (fraction of images done); the other stages are "<image>: <step>"."""


def new_study_id() -> str:
    """A short random id, safe in a URL."""
    return secrets.token_urlsafe(6).replace("-", "x").replace("_", "y")


def ground_truth_map(model: nn.Module, x: torch.Tensor, target: int, method: str, cam_layer: str | None,
                     progress: Progress | None = None) -> np.ndarray:
    """The dense model's map of class ``target`` on ``x`` (normalized (3, H, W)): (H, W) float64, >= 0.

    The class-activation-map methods (Score-CAM, GradCAM) keep their rectified map (positive evidence); other
    methods give their absolute map."""
    if method not in METHODS:
        raise ConfigError(f"Unknown ground-truth method {method!r}; choose one of {', '.join(METHODS)}.")
    entry = METHODS[method]
    settings = entry.settings(layer=cam_layer) if entry.accepts("layer") and cam_layer else None
    attribution = entry.explain(model, x, target, settings, progress=progress)
    saliency = attribution.signed_map if entry.family == "layer" else attribution.absolute_map
    return saliency.clamp_min(0).double().numpy()


def create_study(model: nn.Module, images: Sequence[StudyImage], config: StudyConfig = StudyConfig(), *,
                 preprocessing: Preprocessing, class_names: Sequence[str] | None = None,
                 cam_layer: str | None = None, selection: LayerSelection = LayerSelection(),
                 solver: SolverConfig = SolverConfig(), model_name: str = "", study_id: str | None = None,
                 progress: Progress | None = None) -> Study:
    """Build a study for ``model`` (dense, eval mode, on its device) from ``images``.

    images: the real images, plus training images (``StudyImage.training``) when ``config.training_tasks``.
    cam_layer: the layer of a CAM-type ground truth, Score-CAM or GradCAM (e.g. ``ModelSpec.last_conv_stage``; None:
    the last convolutional stage found by type). selection: the layers SPADE prunes (``ModelSpec.layer_selection``).
    solver: the SPADE traces' solver (the app passes the model's default, ``ModelSpec.default_solver``, as its Neurons
    page does).
    progress(stage, fraction): stage ``"study"`` for the whole, ``"<image name>: <step>"`` for each step.
    The model is never modified. Raises ConfigError for an unusable choice (no real image, a neuron that does
    not exist, more training tasks than training images, ...).
    """
    if not any(not im.training for im in images):
        raise ConfigError("Choose at least one image for the real tasks.")
    if config.training_tasks and not any(im.training for im in images):
        raise ConfigError("Training tasks need at least one training image (or set the training tasks to 0).")
    n_training_images = sum(im.training for im in images)
    if config.training_tasks > n_training_images:
        raise ConfigError(f"{config.training_tasks} training tasks need {config.training_tasks} training images, got "
                          f"{n_training_images}: a participant would see a practice photo twice and know its answer.")
    names = [im.name for im in images]
    if len(set(names)) != len(names):
        raise ConfigError("Each image of a study needs its own name.")
    report = progress or (lambda stage, fraction: None)
    device = model_device(model)
    vis = config.visualization
    fv_config = FeatureVisConfig(steps=vis.steps, size=vis.size, seed=vis.seed, parameterization=vis.method)
    start = time.perf_counter()
    dense_cache: dict[int, np.ndarray] = {}
    items = []
    report(OVERALL, 0.0)
    for done, study_image in enumerate(images):
        def step(stage: str, fraction: float, prefix=study_image.name) -> None:
            report(f"{prefix}: {stage}", fraction)

        items.append(_item(model, study_image, config, fv_config, preprocessing, class_names, cam_layer, selection,
                           solver, device, dense_cache, step))
        report(OVERALL, (done + 1) / len(images))
    log.info("study with %d images created in %.1f s", len(items), time.perf_counter() - start)
    return Study(id=study_id or new_study_id(), config=config, items=tuple(items), model=model_name,
                 created=datetime.now(UTC))


VISUALIZATION_STAGES = {"dense": "dense visualization", "spade": "SPADE visualization"}
"""The progress stage of each condition's picture, by condition."""


def item_visualizations(model: nn.Module, image: Image.Image, neuron: int, conditions: Sequence[str],
                        vis: VisualizationSettings, fv_config: FeatureVisConfig, *, preprocessing: Preprocessing,
                        selection: LayerSelection, solver: SolverConfig = SolverConfig(),
                        dense_cache: dict[int, np.ndarray] | None = None, progress: Progress | None = None
                        ) -> tuple[dict[str, np.ndarray], dict]:
    """The class-``neuron`` visualization of each condition for one RGB ``image``: ({condition: (H, W, 3) uint8},
    details of the trace). "dense" is looked up in / added to ``dense_cache`` (it does not depend on the image);
    "spade" solves the image's visualization trace (``vis``: augmentations, sparsity, decision, seed; ``solver``)
    first; the details name the solver. The pictures still to make are optimised side by side
    (`spade.featurevis.side_by_side.visualize_each`), with progress stages `VISUALIZATION_STAGES`.
    fv_config: the optimisation (its method and seed come from ``vis`` in `create_study`)."""
    step = progress or (lambda stage, fraction: None)
    cache = {} if dense_cache is None else dense_cache
    models: dict[str, nn.Module] = {}
    details: dict = {}
    if "dense" in conditions and neuron not in cache:
        models["dense"] = model
    if "spade" in conditions:
        trace = visualization_trace(model, image, preprocessing=preprocessing,
                                    augment=AugmentConfig(count=vis.augmentations, seed=vis.seed),
                                    sparsity=vis.sparsity, selection=selection, solver=solver,
                                    keep_decision=vis.keep_decision, objective=ClassLogit(neuron), progress=step)
        models["spade"] = trace.model
        sparsity = trace.settings.get("sparsity")
        details.update(trace_top1_agrees=bool(trace.top1_agrees), trace_logit_cosine=float(trace.logit_cosine),
                       trace_sparsity=sparsity if isinstance(sparsity, (int, float)) else (sparsity or {}).get("name"),
                       trace_solver=solver.mode)
    results = visualize_each(models, ClassLogit(neuron), preprocessing=preprocessing, config=fv_config,
                             progress=lambda stage, fraction: step(VISUALIZATION_STAGES[stage.split()[0]], fraction)
                             ) if models else {}
    if "dense" in results:
        cache[neuron] = results["dense"].image_uint8(0)
    pictures: dict[str, np.ndarray] = {}
    if "dense" in conditions:
        pictures["dense"] = cache[neuron]
    if "spade" in conditions:
        pictures["spade"] = results["spade"].image_uint8(0)
    return pictures, details


def _item(model: nn.Module, study_image: StudyImage, config: StudyConfig, fv_config: FeatureVisConfig,
          preprocessing: Preprocessing, class_names: Sequence[str] | None, cam_layer: str | None,
          selection: LayerSelection, solver: SolverConfig, device: torch.device,
          dense_cache: dict[int, np.ndarray], step: Progress) -> StudyItem:
    vis = config.visualization
    image = study_image.image.convert("RGB")
    x = preprocessing(image).to(device)
    with torch.no_grad():
        logits = model(x.unsqueeze(0))[0]
    predicted = int(logits.argmax())
    neuron = predicted if study_image.neuron is None else int(study_image.neuron)
    if not 0 <= neuron < logits.shape[0]:
        raise ConfigError(f"{study_image.name}: class {neuron} does not exist; the model has {logits.shape[0]}.")
    view = preprocessing.to_uint8(x)

    saliency = ground_truth_map(model, x, neuron, config.ground_truth, cam_layer,
                                lambda stage, fraction: step(config.ground_truth, fraction))
    side = patch_side(*saliency.shape, config.patch_fraction)
    truth_box, distractor_box = choose_patches(saliency, side)
    peak = float(saliency.max())
    if peak <= 0:
        log.warning("%s: the %s map is zero everywhere; the patches are arbitrary", study_image.name,
                    config.ground_truth)
    scaled = saliency / peak if peak > 0 else saliency

    def patch(box) -> Patch:
        return Patch(box=box, png=png_bytes(crop(view, box)), score=float(crop(scaled, box).mean()))

    details: dict = {"predicted": predicted, "map_peak": peak, "patch_side": side}
    pictures, trace_details = item_visualizations(model, image, neuron, config.conditions, vis, fv_config,
                                                  preprocessing=preprocessing, selection=selection, solver=solver,
                                                  dense_cache=dense_cache, progress=step)
    visualizations = {condition: png_bytes(picture) for condition, picture in pictures.items()}
    details.update(trace_details)
    name = class_names[neuron] if class_names is not None and neuron < len(class_names) else str(neuron)
    return StudyItem(name=study_image.name, image_png=png_bytes(view), neuron=neuron, neuron_name=name,
                     truth=patch(truth_box), distractor=patch(distractor_box), visualizations=visualizations,
                     training=study_image.training, details=details)
