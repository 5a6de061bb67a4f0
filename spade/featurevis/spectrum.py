"""The amplitude spectrum of natural photos, which MACO (Fel et al., NeurIPS 2023) keeps fixed while it optimises only
the phase of a visualization.

The authors' toolbox downloads an ImageNet spectrum; this one is measured offline from bundled photos (the
calibration photos, never the held-out test photos), in the decorrelated colour space the visualizations are
parameterised in. Natural spectra fall off as about 1/f, so a few photos with flips and crops give a usable mean.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from spade.errors import ConfigError
from spade.featurevis.param import COLOR_CORRELATION
from spade.images import bundled_examples, load_image

SPECTRUM_PHOTOS = ("astronaut", "camera", "grace_hopper", "rocket")
"""Bundled photos the spectrum is measured on: the calibration split (spade_lab.photos.CALIBRATION_PHOTOS)."""

_CROPS_PER_PHOTO = 8


def _views(photo: np.ndarray, size: int, generator: np.random.Generator) -> list[np.ndarray]:
    """Square crops of (H, W, 3) float [0, 1] ``photo``, each resized to size x size, and their mirror images."""
    from PIL import Image

    height, width = photo.shape[:2]
    side = min(height, width)
    views = []
    for _ in range(_CROPS_PER_PHOTO):
        crop = int(side * generator.uniform(0.5, 1.0))
        y, x = generator.integers(0, height - crop + 1), generator.integers(0, width - crop + 1)
        patch = Image.fromarray((photo[y:y + crop, x:x + crop] * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR)
        array = np.asarray(patch, dtype=np.float32) / 255
        views += [array, array[:, ::-1]]
    return views


@functools.lru_cache(maxsize=8)
def natural_amplitude(size: int) -> torch.Tensor:
    """(3, size, size // 2 + 1) float32 CPU tensor: the mean magnitude of `torch.fft.rfft2` (norm "ortho") of
    SPECTRUM_PHOTOS' decorrelated colour channels, over random square crops (seeded, so always the same), with the
    constant (DC) term set to 0 (a visualization is standardised anyway). Read-only: callers must not modify it."""
    if not 16 <= size <= 1024:
        raise ConfigError(f"Spectrum size must be between 16 and 1024 pixels, got {size}.")
    examples = bundled_examples()
    missing = [name for name in SPECTRUM_PHOTOS if name not in examples]
    if missing:
        raise ConfigError(f"The bundled photos {', '.join(missing)} are missing: the MACO spectrum needs them.")
    generator = np.random.default_rng(0)
    to_decorrelated = torch.linalg.inv(COLOR_CORRELATION)
    total = torch.zeros(3, size, size // 2 + 1)
    count = 0
    for name in SPECTRUM_PHOTOS:
        photo = np.asarray(load_image(examples[name]), dtype=np.float32) / 255
        for view in _views(photo, size, generator):
            rgb = torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1) - 0.5
            decorrelated = torch.einsum("dc,chw->dhw", to_decorrelated, rgb)
            total += torch.fft.rfft2(decorrelated, norm="ortho").abs()
            count += 1
    amplitude = total / count
    amplitude[:, 0, 0] = 0.0
    return amplitude
