"""A model's evaluation preprocessing: resize, centre crop, normalization, and the inverse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing of a classifier.

    resize: the short side is resized to this many pixels; crop: centre crop (square) size;
    interpolation: "bilinear" | "bicubic" | "nearest"; mean/std: per-channel normalization of
    [0, 1] RGB values.
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def interpolation_mode(self) -> InterpolationMode:
        return _INTERPOLATION[self.interpolation]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 3, H, W] float in [0, 1] -> normalized float tensor of the same shape."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of normalize: normalized [..., 3, H, W] -> [0, 1] range (not clipped)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x * std + mean

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """Resize the short side to `resize` and centre-crop to `crop` (PIL in, PIL out)."""
        image = TF.resize(image, self.resize, interpolation=self.interpolation_mode)
        return TF.center_crop(image, [self.crop, self.crop])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalized float32 tensor of shape (3, crop, crop)."""
        return self.normalize(TF.to_tensor(self.resize_crop(image.convert("RGB"))))

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Normalized (3, H, W) tensor -> displayable uint8 array of shape (H, W, 3)."""
        img = self.denormalize(x.detach().float().cpu()).clamp(0, 1)
        return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
