"""Shared types of the saliency package: the result type, the registry entry, input checks, progress.

Conventions used by every method:

* ``x`` is one normalized image, ``(3, H, W)`` or ``(1, 3, H, W)`` float, on the model's device.
* ``target`` is the class index whose output (the logit, not the softmax) is explained.
* The returned :class:`Attribution` keeps the raw signed attribution on the CPU as float32.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spade.devices import model_device
from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import num_outputs

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Attribution:
    """The result of one saliency method on one image.

    raw: float32 CPU tensor ``(C, H, W)``, the method's signed attribution in input space.
        ``C == 3`` (one value per colour channel) for every method except GradCAM, whose class
        activation map has no colour channels and is stored as ``C == 1`` (upsampled to ``H, W``).
        Methods that attribute per pixel (Occlusion, LIME) repeat the pixel's value on all 3 channels,
        exactly as Captum returns it.
    method: registry name of the method (``"integrated_gradients"``, ...).
    target: the explained class index.
    settings: the frozen settings object that was used (with its seed for random methods).
    seconds: wall-clock time of the call, including building the model's attribution copy the first time.
    """

    raw: torch.Tensor
    method: str
    target: int
    settings: Any
    seconds: float = 0.0

    @property
    def signed_map(self) -> torch.Tensor:
        """``(H, W)`` float32: the raw attribution summed over channels, sign kept (the authors' "signed")."""
        return self.raw.sum(dim=0)

    @property
    def absolute_map(self) -> torch.Tensor:
        """``(H, W)`` float32: the absolute value of the channel sum, ``|signed_map|`` (the authors' "absolute").

        Note: this is ``|sum_c raw_c|``, not ``sum_c |raw_c|``.
        """
        return self.raw.sum(dim=0).abs()

    def map(self, kind: str = "signed") -> torch.Tensor:
        """``signed_map`` for ``kind="signed"``, ``absolute_map`` for ``kind="absolute"``."""
        if kind == "signed":
            return self.signed_map
        if kind == "absolute":
            return self.absolute_map
        raise ConfigError(f"Unknown map kind {kind!r}; use 'signed' or 'absolute'.")


RunFn = Callable[[nn.Module, torch.Tensor, int, Any, Progress], torch.Tensor]


@dataclass(frozen=True)
class SaliencyMethod:
    """One registry entry.

    name: registry key; label: display name; family: "gradient" (one or a few backward passes
    through the model or a modified copy), "perturbation" (forward passes on perturbed inputs only:
    Occlusion, LIME) or "layer" (GradCAM-style, works on a layer's activations);
    settings_type: frozen dataclass of the method's settings, its defaults are the authors' settings;
    random: the method draws random numbers (its settings carry a ``seed``);
    paper: one of the ten methods evaluated in the SPADE paper.
    run: ``run(model, x, target, settings, progress) -> (C, H, W) tensor`` on any device.
    """

    name: str
    label: str
    family: str
    settings_type: type
    run: RunFn
    random: bool = False
    paper: bool = True
    description: str = ""

    def default_settings(self) -> Any:
        return self.settings_type()

    def accepts(self, field: str) -> bool:
        """Whether the method's settings have a field of this name (e.g. ``"layer"``, ``"seed"``)."""
        return field in {f.name for f in dataclasses.fields(self.settings_type)}

    def settings(self, **overrides: Any) -> Any:
        """Default settings with some fields replaced; unknown fields raise ConfigError."""
        unknown = [k for k in overrides if not self.accepts(k)]
        if unknown:
            raise ConfigError(f"{self.label} has no setting(s) {', '.join(unknown)}.")
        return dataclasses.replace(self.default_settings(), **overrides)

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: int,
        settings: Any = None,
        *,
        progress: Progress | None = None,
    ) -> Attribution:
        """Explain class ``target`` of ``model`` on image ``x`` (see module docstring). The model is never modified."""
        settings = self.default_settings() if settings is None else settings
        if not isinstance(settings, self.settings_type):
            raise ConfigError(
                f"{self.label} expects {self.settings_type.__name__}, got {type(settings).__name__}."
            )
        batch = prepare_input(x, model)
        target = check_target(target)
        start = time.perf_counter()
        n_classes = num_outputs(model, batch)  # builds the cached plain copy on the first call
        if target >= n_classes:
            raise ConfigError(f"Target class {target} does not exist; the model has {n_classes} outputs.")
        report = progress if progress is not None else _no_progress
        report(self.name, 0.0)
        raw = self.run(model, batch, target, settings, report)
        seconds = time.perf_counter() - start
        raw = raw.detach().reshape(-1, *batch.shape[-2:]).to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(raw).all():
            log.warning("%s produced non-finite values; they are set to 0.", self.name)
            raw = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        report(self.name, 1.0)
        log.debug("%s on target %d took %.3f s", self.name, target, seconds)
        return Attribution(raw=raw, method=self.name, target=target, settings=settings, seconds=seconds)


def _no_progress(stage: str, fraction: float) -> None:
    pass


def prepare_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``(3, H, W)`` or ``(1, 3, H, W)`` -> detached float32 ``(1, 3, H, W)`` on the model's device."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError("The image must be a torch tensor of shape (3, H, W) or (1, 3, H, W).")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConfigError(f"Expected one image of shape (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}.")
    # requires_grad is set so Captum does not warn about setting it; every method works on a clone of it.
    return x.detach().to(device=model_device(model), dtype=torch.float32).clone().requires_grad_(True)


def check_target(target: int) -> int:
    try:
        value = int(target)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The target class must be an integer, got {target!r}.") from exc
    if value < 0 or value != target:
        raise ConfigError(f"The target class must be a non-negative integer, got {target!r}.")
    return value


class CountingForward:
    """A forward function that reports progress from the number of examples it has evaluated.

    ``total`` is the number of examples the method is known to evaluate (e.g. ``n_steps`` for
    Integrated Gradients); the fraction is capped at 1.
    """

    def __init__(self, model: nn.Module, total: int, stage: str, progress: Progress):
        self.model = model
        self.total = max(int(total), 1)
        self.stage = stage
        self.progress = progress
        self.done = 0

    def __call__(self, inputs: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.model(inputs, *args)
        self.done += inputs.shape[0]
        self.progress(self.stage, min(1.0, self.done / self.total))
        return out


AUTO_BATCH_CPU = 8
AUTO_BATCH_GPU = 32


def check_batch_size(batch_size: int | None, device: torch.device) -> int:
    """``batch_size`` (>= 1), or for ``None`` the automatic choice: 8 images on the CPU (larger batches were
    slower per image there: big tensors cost page faults), 32 on a GPU."""
    if batch_size is None:
        return AUTO_BATCH_GPU if device.type == "cuda" else AUTO_BATCH_CPU
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    return int(batch_size)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: random draws are made on the CPU so a seed gives the same numbers on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def target_gradient(model: nn.Module, inputs: torch.Tensor, target: int) -> torch.Tensor:
    """Gradient of ``model(inputs)[:, target].sum()`` w.r.t. ``inputs`` (a batch), without touching parameter grads."""
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(inputs)
        if target >= out.shape[1]:
            raise ConfigError(f"Target class {target} does not exist; the model has {out.shape[1]} outputs.")
        (grad,) = torch.autograd.grad(out[:, target].sum(), inputs)
    return grad
