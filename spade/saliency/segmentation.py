"""Superpixels for LIME without extra dependencies: a small SLIC (k-means in CIELAB + position) and a grid.

SLIC here is Achanta et al.'s clustering without the final connectivity step: cluster centres start on
a regular grid of ``n_segments`` cells, pixels are assigned to the nearest centre in
``d = ||lab_p - lab_c||^2 + (compactness * ||xy_p - xy_c|| / S)^2`` (S = grid spacing), for a fixed
number of iterations. A segment may therefore be split into a few pieces; LIME does not need connected
segments. Labels are consecutive integers from 0.
"""

from __future__ import annotations

import math

import torch

from spade.errors import ConfigError


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(3, H, W)`` -> CIELAB (D65), ``(3, H, W)`` with L in [0, 100]."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor([[0.412453, 0.357580, 0.180423],
                      [0.212671, 0.715160, 0.072169],
                      [0.019334, 0.119193, 0.950227]], dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,jhw->ihw", m, linear)
    white = torch.tensor([0.950456, 1.0, 1.088754], dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    t = xyz / white
    f = torch.where(t > 0.008856, t.clamp(min=1e-12) ** (1 / 3), 7.787 * t + 16 / 116)
    lightness = 116 * f[1] - 16
    return torch.stack([lightness, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _relabel(labels: torch.Tensor) -> torch.Tensor:
    _, inverse = torch.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape)


def grid_segments(height: int, width: int, n_segments: int = 100) -> torch.Tensor:
    """``(H, W)`` long tensor: about ``n_segments`` square cells, labelled row by row."""
    if n_segments < 1:
        raise ConfigError("n_segments must be at least 1.")
    side = max(1, round(math.sqrt(height * width / n_segments)))
    rows = torch.arange(height) // side
    cols = torch.arange(width) // side
    n_cols = int(cols.max()) + 1
    return rows[:, None] * n_cols + cols[None, :]


def slic_segments(rgb: torch.Tensor, n_segments: int = 100, compactness: float = 10.0,
                  n_iter: int = 10) -> torch.Tensor:
    """SLIC superpixels of an image ``(3, H, W)`` in [0, 1] -> ``(H, W)`` long labels (CPU)."""
    if n_segments < 1:
        raise ConfigError("n_segments must be at least 1.")
    rgb = rgb.detach().float().cpu()
    _, height, width = rgb.shape
    lab = rgb_to_lab(rgb).reshape(3, -1).T  # (P, 3)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)  # (P, 2)
    step = math.sqrt(height * width / n_segments)
    cy = torch.arange(step / 2, height, step)
    cx = torch.arange(step / 2, width, step)
    centre_pos = torch.cartesian_prod(cy, cx)
    idx = centre_pos.round().long()
    idx[:, 0].clamp_(0, height - 1)
    idx[:, 1].clamp_(0, width - 1)
    centre_lab = lab[idx[:, 0] * width + idx[:, 1]]
    weight = (compactness / step) ** 2
    labels = torch.zeros(pos.shape[0], dtype=torch.long)
    for _ in range(n_iter):
        dist = torch.cdist(lab, centre_lab) ** 2 + weight * torch.cdist(pos, centre_pos) ** 2
        labels = dist.argmin(dim=1)
        counts = torch.bincount(labels, minlength=len(centre_pos)).clamp(min=1).float()[:, None]
        new_lab = torch.zeros_like(centre_lab).index_add_(0, labels, lab) / counts
        new_pos = torch.zeros_like(centre_pos).index_add_(0, labels, pos) / counts
        used = torch.bincount(labels, minlength=len(centre_pos)) > 0
        centre_lab = torch.where(used[:, None], new_lab, centre_lab)
        centre_pos = torch.where(used[:, None], new_pos, centre_pos)
    return _relabel(labels.reshape(height, width))
