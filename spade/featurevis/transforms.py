"""Random transforms applied to the image at every optimisation step (Lucid's "transformation robustness").

A visualization that still excites the neuron after random padding, jitter, scaling and rotation is made
of features the network really detects rather than of adversarial pixel patterns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spade.errors import ConfigError


@dataclass(frozen=True)
class TransformConfig:
    """Random transforms, in this order: constant pad (grey), jitter, scale + rotation, jitter.

    pad, jitter: fractions of the image size (Lucid's 12 px pad and 8 px jitter on a 128 px image);
    the second jitter is half the first. scale: (min, max) zoom factor. rotate: maximum angle in degrees.
    """

    pad: float = 0.09
    jitter: float = 0.06
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0

    def __post_init__(self):
        if self.pad < 0 or self.jitter < 0 or self.rotate < 0:
            raise ConfigError("Transform pad, jitter and rotation must be >= 0.")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"Transform scale must be (min, max) with 0 < min <= max, got {self.scale}.")


def _jitter(x: torch.Tensor, amount: int, generator: torch.Generator) -> torch.Tensor:
    if amount <= 0:
        return x
    oy, ox = torch.randint(0, amount + 1, (2,), generator=generator).tolist()
    h, w = x.shape[-2] - amount, x.shape[-1] - amount
    return x[..., oy:oy + h, ox:ox + w]


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_transform(images: torch.Tensor, cfg: TransformConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> transformed (B, 3, H', W') (differentiable; the same random draw
    for the whole batch). All random numbers come from the CPU ``generator``; H' = H + 2 pad - 1.5 jitter."""
    size = images.shape[-1]
    pad = round(cfg.pad * size)
    jitter = round(cfg.jitter * size)
    x = F.pad(images, (pad, pad, pad, pad), value=0.5) if pad else images
    x = _jitter(x, jitter, generator)
    s = _uniform(*cfg.scale, generator)
    angle = math.radians(_uniform(-cfg.rotate, cfg.rotate, generator))
    if s != 1.0 or angle != 0.0:
        cos, sin = math.cos(angle) / s, math.sin(angle) / s
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _jitter(x, jitter // 2, generator)
