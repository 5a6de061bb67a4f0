"""Gradient methods on a plain copy: Saliency, InputXGradient, IntegratedGradients, GradientShap, SmoothGrad.

Saliency, InputXGradient and IntegratedGradients use Captum. GradientShap and SmoothGrad are written
here (same estimator as Captum's ``GradientShap`` / ``NoiseTunnel(smoothgrad)``) so that all random
numbers come from one seeded ``torch.Generator`` drawn up front: the same seed gives the same map on
every device and for every ``batch_size``, without touching the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy
from spade.saliency.base import (
    CountingForward,
    check_batch_size,
    seeded_generator,
    target_gradient,
)


@dataclass(frozen=True)
class SaliencySettings:
    """absolute: Captum's default ``abs=True`` (|gradient| per channel), as the authors used it."""

    absolute: bool = True


@dataclass(frozen=True)
class InputXGradientSettings:
    """No options: gradient times input."""


@dataclass(frozen=True)
class IntegratedGradientsSettings:
    """Captum defaults as the authors used them: 50 Gauss-Legendre steps from a baseline of 0 (normalized space).

    batch_size: path points per forward/backward pass (bounds memory; None: 8 on the CPU, 32 on a GPU).
    """

    n_steps: int = 50
    method: str = "gausslegendre"
    baseline: float = 0.0
    batch_size: int | None = None


@dataclass(frozen=True)
class GradientShapSettings:
    """The authors' settings: 50 samples, noise stdev 1e-4, baselines drawn from {0, x} (normalized space).

    Each sample draws a baseline b uniformly from ``baselines`` ("zero" and/or "input"), noise
    e ~ N(0, stdev^2) and a ~ U(0, 1); attribution = mean of grad(b + a (x + e - b)) * (x + e - b).
    """

    n_samples: int = 50
    stdev: float = 1e-4
    baselines: tuple[str, ...] = ("zero", "input")
    seed: int = 0
    batch_size: int | None = None


@dataclass(frozen=True)
class SmoothGradSettings:
    """SmoothGrad (Smilkov et al. 2017): mean gradient over noisy copies x + N(0, sigma^2).

    sigma = noise_level * (max(x) - min(x)), the paper's recommended 10-20 % of the input range.
    The signed mean gradient is returned (take the absolute map for the usual display).
    """

    n_samples: int = 25
    noise_level: float = 0.15
    seed: int = 0
    batch_size: int | None = None


def run_saliency(model: nn.Module, x: torch.Tensor, target: int, settings: SaliencySettings,
                 progress: Progress) -> torch.Tensor:
    with attribution_copy(model, Mode.PLAIN, x) as net:
        return Saliency(net).attribute(x, target=target, abs=settings.absolute)[0]


def run_input_x_gradient(model: nn.Module, x: torch.Tensor, target: int, settings: InputXGradientSettings,
                         progress: Progress) -> torch.Tensor:
    with attribution_copy(model, Mode.PLAIN, x) as net:
        return InputXGradient(net).attribute(x, target=target)[0]


def run_integrated_gradients(model: nn.Module, x: torch.Tensor, target: int, settings: IntegratedGradientsSettings,
                             progress: Progress) -> torch.Tensor:
    batch = check_batch_size(settings.batch_size, x.device)
    if settings.n_steps < 1:
        raise ConfigError("Integrated Gradients needs n_steps >= 1.")
    with attribution_copy(model, Mode.PLAIN, x) as net:
        forward = CountingForward(net, settings.n_steps, "integrated_gradients", progress)
        ig = IntegratedGradients(forward)
        attr = ig.attribute(x, baselines=torch.full_like(x, settings.baseline), target=target,
                            n_steps=settings.n_steps, method=settings.method, internal_batch_size=batch)
    return attr[0]


def _baseline_candidates(x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    table = {"zero": torch.zeros_like(x[0]), "input": x[0]}
    unknown = [n for n in names if n not in table]
    if not names or unknown:
        raise ConfigError(f"GradientShap baselines must be a non-empty subset of {sorted(table)}, got {names}.")
    return torch.stack([table[n] for n in names])


def run_gradient_shap(model: nn.Module, x: torch.Tensor, target: int, settings: GradientShapSettings,
                      progress: Progress) -> torch.Tensor:
    batch = check_batch_size(settings.batch_size, x.device)
    n = int(settings.n_samples)
    if n < 1:
        raise ConfigError("GradientShap needs n_samples >= 1.")
    candidates = _baseline_candidates(x, tuple(settings.baselines))
    gen = seeded_generator(settings.seed)
    which = torch.randint(len(candidates), (n,), generator=gen)
    noise = torch.randn((n, *x.shape[1:]), generator=gen) * settings.stdev
    alphas = torch.rand(n, generator=gen)
    total = torch.zeros_like(x[0])
    with attribution_copy(model, Mode.PLAIN, x) as net:
        for start in range(0, n, batch):
            sl = slice(start, min(n, start + batch))
            noisy = x + noise[sl].to(x.device)
            base = candidates[which[sl].to(x.device)]
            alpha = alphas[sl].to(x.device).view(-1, 1, 1, 1)
            grads = target_gradient(net, base + alpha * (noisy - base), target)
            total += (grads * (noisy - base)).sum(dim=0)
            progress("gradient_shap", sl.stop / n)
    return total / n


def run_smoothgrad(model: nn.Module, x: torch.Tensor, target: int, settings: SmoothGradSettings,
                   progress: Progress) -> torch.Tensor:
    batch = check_batch_size(settings.batch_size, x.device)
    n = int(settings.n_samples)
    if n < 1:
        raise ConfigError("SmoothGrad needs n_samples >= 1.")
    sigma = float(settings.noise_level) * float(x.detach().max() - x.detach().min())
    noise = torch.randn((n, *x.shape[1:]), generator=seeded_generator(settings.seed)) * sigma
    total = torch.zeros_like(x[0])
    with attribution_copy(model, Mode.PLAIN, x) as net:
        for start in range(0, n, batch):
            sl = slice(start, min(n, start + batch))
            total += target_gradient(net, x + noise[sl].to(x.device), target).sum(dim=0)
            progress("smoothgrad", sl.stop / n)
    return total / n
