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


@dataclass(frozen=True)
class CropsConfig:
    """MACO's transforms (Fel et al., NeurIPS 2023): every step the objective is the mean over `count` random square
    crops of the image, each resized to the image size, with added Gaussian and uniform noise.

    size: (min, max) side of a crop as a fraction of the image side; centres are drawn around the image centre with
    standard deviation `spread` (fraction of the side) and clamped so every crop lies inside the image. noise: the
    noise's standard deviation and the uniform noise's width, in [0, 1] pixel units.
    """

    count: int = 4
    size: tuple[float, float] = (0.4, 0.8)
    spread: float = 0.15
    noise: float = 0.05

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"Crops per step must be at least 1, got {self.count}.")
        if not 0 < self.size[0] <= self.size[1] <= 1:
            raise ConfigError(f"Crop size must be (min, max) with 0 < min <= max <= 1, got {self.size}.")
        if self.spread < 0 or self.noise < 0:
            raise ConfigError("Crop spread and noise must be >= 0.")


def random_crops(images: torch.Tensor, cfg: CropsConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B * count, 3, H, W): rows b * count .. b * count + count - 1 are crops of
    image b (the same boxes for every image), differentiable. All random numbers come from the CPU ``generator``."""
    b, _, h, w = images.shape
    sides = cfg.size[0] + (cfg.size[1] - cfg.size[0]) * torch.rand(cfg.count, generator=generator)
    centres = 0.5 + cfg.spread * torch.randn(cfg.count, 2, generator=generator)
    centres = torch.minimum(torch.maximum(centres, sides.unsqueeze(1) / 2), 1 - sides.unsqueeze(1) / 2)
    # affine_grid maps the output's [-1, 1] square onto [centre - side / 2, centre + side / 2] of the input
    theta = torch.zeros(cfg.count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = sides
    theta[:, :, 2] = centres.flip(1) * 2 - 1  # (x, y)
    theta = theta.to(images).repeat(b, 1, 1)
    grid = F.affine_grid(theta, [b * cfg.count, 3, h, w], align_corners=False)
    crops = F.grid_sample(images.repeat_interleave(cfg.count, dim=0), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
    if cfg.noise:
        gaussian = torch.randn(crops.shape, generator=generator).to(crops)
        uniform = torch.rand(crops.shape, generator=generator).to(crops) - 0.5
        crops = crops + cfg.noise * (gaussian + uniform)
    return crops
