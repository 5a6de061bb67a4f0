"""Feature visualization by optimisation: find the image that maximises an objective (Lucid on torch)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from spade.devices import model_device
from spade.errors import ConfigError
from spade.featurevis.methods import DEFAULT_METHOD
from spade.featurevis.objectives import Objective, capture, evaluate, objective_keys
from spade.featurevis.param import PARAMETERIZATIONS, frequency_scale, init_parameters, to_rgb
from spade.featurevis.spectrum import natural_amplitude
from spade.featurevis.transforms import CropsConfig, TransformConfig, random_crops, random_transform
from spade.forward_copy import forward_copy
from spade.preprocessing import Preprocessing
from spade.progress import Progress

log = logging.getLogger(__name__)


GPU_STEPS = 512
CPU_STEPS = 128  # recognisable on efficientnet_lite0 at 224 px (benchmarks/results/featurevis-full-2026-12-06/)
LEARNING_RATES = {"fourier": 0.05, "pixel": 0.05, "maco": 0.25}
"""Adam's default learning rate per parameterization. maco's is in radians of phase. The MACO authors use 1.0 over
about a thousand steps. Over this project's 128 CPU steps, 10 calibration classes that the test run does not use
(`bench_featurevis_quality.py --class-offset 10`; benchmarks/results/featurevis-maco-lr-2026-12-06/calibration/) were
recognised by the judge 0, 5, 7, 8, 10, 10, 9 and 10 times at 2.0, 1.0, 0.7, 0.5, 0.35, 0.25, 0.15 and 0.1. 256 steps
at 1.0 gave 5. 0.25 is the middle of the plateau."""


#: `visualize` reports its progress every this many optimisation steps (about 1 s on a 2-core CPU), and at the last.
PROGRESS_EVERY = 4
#: `visualize` hands its ``preview`` callback the current image every this many steps.
PREVIEW_EVERY = 16

Preview = Callable[[int, np.ndarray], None]
"""``preview(step, image)``: the image being optimised at ``step`` (1-based), (H, W, 3) uint8."""

@dataclass(frozen=True)
class FeatureVisConfig:
    """Optimisation settings.

    steps: Adam steps (None: 512 on a GPU, 128 on the CPU). size: side of the square image in pixels
    (None: the model's crop size). lr: Adam learning rate (None: LEARNING_RATES of the parameterization).
    seed: the same seed gives the same image (bit for bit on the CPU; on CUDA only closely, as grid_sample's
    backward adds atomically). parameterization: "fourier" (Lucid: 1/f-scaled spectrum), "maco" (MACO: phases
    under the natural amplitude spectrum, `spade.featurevis.param`) or "pixel"; default
    `spade.featurevis.methods.DEFAULT_METHOD`, the better one on the quality benchmark. decorrelate: optimise in
    ImageNet's decorrelated colour space. init_sd: standard deviation of the random start (fourier, pixel).
    decay_power: exponent of the 1/f scaling (fourier).
    transforms: random transforms every step (None: none).
    crops: MACO's random crops after the transforms, the objective averaged over them (None: the whole image).
    """

    steps: int | None = None
    size: int | None = None
    lr: float | None = None
    seed: int = 0
    parameterization: str = DEFAULT_METHOD
    decorrelate: bool = True
    init_sd: float = 0.01
    decay_power: float = 1.0
    transforms: TransformConfig | None = TransformConfig()
    crops: CropsConfig | None = None

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"Steps must be at least 1, got {self.steps}.")
        if self.size is not None and not 16 <= self.size <= 1024:
            raise ConfigError(f"Image size must be between 16 and 1024 pixels, got {self.size}.")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ConfigError(f"Unknown parameterization {self.parameterization!r}; "
                              f"choose one of {', '.join(PARAMETERIZATIONS)}.")
        if (self.lr is not None and not self.lr > 0) or self.init_sd < 0:
            raise ConfigError("Learning rate must be > 0 and init_sd >= 0.")

    def resolved(self, device: torch.device, crop: int) -> FeatureVisConfig:
        """A copy with steps, size and lr filled in for ``device``."""
        gpu = device.type != "cpu"
        steps = self.steps if self.steps is not None else (GPU_STEPS if gpu else CPU_STEPS)
        size = self.size if self.size is not None else crop
        lr = self.lr if self.lr is not None else LEARNING_RATES[self.parameterization]
        return replace(self, steps=steps, size=size, lr=lr)


@dataclass(frozen=True, eq=False)
class FeatureVisResult:
    """Visualizations of one batch of objectives (row i maximises objectives[i]).

    images: (B, H, W, 3) float32 numpy in [0, 1]. curves: (steps, B) float32, the objective of each row at
    each step (on that step's randomly transformed image). final_values: (B,) objective on the final,
    untransformed image. settings: resolved config + objective names + device. seconds: wall time.
    """

    images: np.ndarray
    curves: np.ndarray
    final_values: np.ndarray
    objectives: tuple[Objective, ...]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def image_uint8(self, index: int = 0) -> np.ndarray:
        """(H, W, 3) uint8 image of row ``index``."""
        return (self.images[index] * 255).round().astype(np.uint8)


def on_outputs_only(objectives: Sequence[Objective]) -> bool:
    """Whether every objective reads only the model's output (a class logit), no inner layer."""
    return all(layer is None for layer, _ in objective_keys(objectives))


@contextmanager
def network_for(model: nn.Module, objectives: Sequence[Objective], example: torch.Tensor) -> Iterator[nn.Module]:
    """The network to evaluate ``objectives`` on. For objectives on the model's output only, its forward copy
    (`spade.forward_copy`, checked on ``example``, a (1, 3, H, W) input on the model's device: BatchNorm folded,
    channels_last where that gives the same outputs; the same function with fewer, faster operators). Otherwise the
    model itself, in eval mode: folding BatchNorm into a convolution would change what a hook on that convolution
    sees. Enter it outside ``torch.inference_mode``: the copy is cached and also serves autograd."""
    if on_outputs_only(objectives):
        with forward_copy(model, example) as copy:
            yield copy
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def visualize(model: nn.Module, objectives: Objective | Sequence[Objective], *,
              preprocessing: Preprocessing, config: FeatureVisConfig = FeatureVisConfig(),
              progress: Progress | None = None, preview: Preview | None = None) -> FeatureVisResult:
    """Optimise one image per objective (all in one batch) to maximise it on ``model``.

    preview: called every PREVIEW_EVERY steps with (step, the current image of the first objective as (H, W, 3)
    uint8), e.g. to show the optimisation as it runs (one small copy to the CPU each time).

    model: any classifier, dense or a SPADE trace's ``model``; it runs on its own device, in eval mode (for class
    logits on its forward copy, `spade.forward_copy`), and is never modified (its parameters get no gradients;
    hooks are removed on return or error).
    preprocessing: the model's normalization (a ModelSpec is accepted too). The random start and the
    random transforms come from a generator seeded with ``config.seed``.
    """
    objectives = (objectives,) if isinstance(objectives, Objective) else tuple(objectives)
    if not objectives or not all(isinstance(o, Objective) for o in objectives):
        raise ConfigError("Give at least one objective (ClassLogit, ChannelMean, Neuron or a sum of them).")
    pre = getattr(preprocessing, "preprocessing", preprocessing)
    device = model_device(model)
    cfg = config.resolved(device, pre.crop)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    params = init_parameters(len(objectives), cfg.size, cfg.parameterization, cfg.init_sd, generator)
    params = params.to(device).requires_grad_(True)
    if cfg.parameterization == "maco":
        scale = natural_amplitude(cfg.size).to(device)
    else:
        scale = frequency_scale(cfg.size, cfg.size, cfg.decay_power).to(device)
    optimizer = torch.optim.Adam([params], lr=cfg.lr)
    views = 1 if cfg.crops is None else cfg.crops.count  # transformed views of each image per step
    rows = torch.arange(len(objectives) * views, device=device)
    own = rows // views  # the objective of each view
    curves = torch.empty(cfg.steps, len(objectives), device=device)  # stays on the device: no sync per step

    def render() -> torch.Tensor:
        return to_rgb(params, cfg.size, cfg.parameterization, cfg.decorrelate, scale)

    example = torch.zeros(1, 3, cfg.size, cfg.size, device=device)
    with network_for(model, objectives, example) as net, capture(net, objective_keys(objectives)) as store, \
            torch.enable_grad():
        for step in range(cfg.steps):
            rendered = images = render()
            if cfg.transforms is not None:
                images = random_transform(images, cfg.transforms, generator)
            if cfg.crops is not None:
                images = random_crops(images, cfg.crops, generator)
            store.clear()
            values = evaluate(objectives, net(pre.normalize(images)), store)[rows, own]
            values = values.view(len(objectives), views).mean(1)
            # grad only w.r.t. the image parameters: the model's parameters are left alone
            (grad,) = torch.autograd.grad(-values.sum(), [params])
            params.grad = grad
            optimizer.step()
            curves[step] = values.detach()
            if progress is not None and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == cfg.steps):
                progress("visualize", (step + 1) / cfg.steps)
            if preview is not None and (step + 1) % PREVIEW_EVERY == 0:
                preview(step + 1, (rendered[0].detach().clamp(0, 1).movedim(0, -1) * 255).round()
                        .to(torch.uint8).cpu().numpy())
        with torch.no_grad():
            images = render()
            store.clear()
            final = evaluate(objectives, net(pre.normalize(images)), store).diagonal()
    seconds = time.perf_counter() - start
    log.info("visualized %d objective(s), %d steps at %d px in %.1fs", len(objectives), cfg.steps, cfg.size, seconds)
    settings = {**asdict(cfg), "objectives": [o.describe() for o in objectives], "device": str(device)}
    return FeatureVisResult(
        images=images.permute(0, 2, 3, 1).float().cpu().numpy(),
        curves=curves.float().cpu().numpy(), final_values=final.float().cpu().numpy(), objectives=objectives,
        settings=settings, seconds=seconds)
