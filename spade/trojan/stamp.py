"""Pasting a trigger into a photo, and the exact trigger mask as the model sees it.

``stamp`` works on the raw image (before the model's resize and crop), as a Trojan attacker would; the
returned mask is in the model's input frame (after resize and centre crop), which is where saliency maps
live and where Trojan AUC and the pointing game are scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance
from torchvision.transforms import functional as TF

from spade.errors import ConfigError
from spade.preprocessing import Preprocessing

DEFAULT_SIZE = 0.25
"""Trigger side as a fraction of the image's short side (the SPADE authors' setting)."""


@dataclass(frozen=True)
class Stamped:
    """A stamped image: ``image`` RGB PIL (raw size); ``mask`` bool (crop, crop) in the model's input frame,
    True on trigger pixels (empty when the trigger lies outside the centre crop); ``box`` the pasted
    trigger's (left, top, right, bottom) in raw pixels."""

    image: Image.Image
    mask: np.ndarray
    box: tuple[int, int, int, int]


def jitter_colors(trigger: Image.Image, amount: float, rng: np.random.Generator) -> Image.Image:
    """Random brightness, contrast and saturation in [1-amount, 1+amount] and a hue shift of at most
    amount/10 of a turn (so a red heart stays red); alpha is kept."""
    if amount <= 0:
        return trigger
    rgb, alpha = trigger.convert("RGB"), trigger.getchannel("A")
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        rgb = enhance(rgb).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    rgb = shift_hue(rgb, rng.uniform(-amount, amount) * 0.1)
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return out


def shift_hue(image: Image.Image, turn: float) -> Image.Image:
    """An RGB image with its hue rotated by ``turn`` of a full turn (PIL's HSV, 256 hue steps)."""
    shift = int(round(turn * 256)) % 256
    if not shift:
        return image
    h, s, v = image.convert("HSV").split()
    h = h.point(lambda value: (value + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def visible_box(width: int, height: int, preprocessing: Preprocessing) -> tuple[int, int, int, int]:
    """The part of a width x height raw image that survives the model's resize and centre crop, as
    (left, top, right, bottom) raw pixels."""
    scale = preprocessing.resize / min(width, height)
    crop = preprocessing.crop / scale
    left, top = (width - crop) / 2, (height - crop) / 2
    return (max(0, int(np.ceil(left))), max(0, int(np.ceil(top))),
            min(width, int(left + crop)), min(height, int(top + crop)))


def _placement(side: int, width: int, height: int, position: tuple[float, float] | None,
               preprocessing: Preprocessing, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a side x side square centred at the relative `position` (x, y in [0, 1]), or a
    random one fully inside the part of the image the model sees when position is None."""
    if position is None:
        x0, y0, x1, y1 = visible_box(width, height, preprocessing)
        return int(rng.integers(x0, max(x0, x1 - side) + 1)), int(rng.integers(y0, max(y0, y1 - side) + 1))
    x, y = position
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise ConfigError(f"The trigger position must be relative coordinates in [0, 1], got {position}.")
    return int(round(x * width - side / 2)), int(round(y * height - side / 2))


def stamp(image: Image.Image, trigger: Image.Image, preprocessing: Preprocessing, *,
          position: tuple[float, float] | None = None, size: float = DEFAULT_SIZE, alpha: float = 0.8,
          jitter: float = 0.1, seed: int = 0) -> Stamped:
    """Paste ``trigger`` (RGBA) into ``image`` (RGB).

    position: the trigger centre in relative (x, y) coordinates of the raw image (it may hang over the edge
    and is then clipped), or None for a random position fully inside the part of the image that the model
    sees (the centre crop), drawn from ``seed``.
    size: trigger side as a fraction of the short side (0.25 = the authors' quarter). alpha: opacity in
    (0, 1] multiplied with the icon's own alpha. jitter: colour jitter strength (0 = exact colours), seeded.
    The mask marks the pixels of the preprocessed (resized, centre-cropped) image where the resampled
    trigger coverage is at least one half, i.e. the trigger's footprint as the model sees it.
    """
    if not 0 < size <= 1:
        raise ConfigError(f"The trigger size must be a fraction of the short side in (0, 1], got {size}.")
    if not 0 < alpha <= 1:
        raise ConfigError(f"The trigger opacity must be in (0, 1], got {alpha}.")
    image = image.convert("RGB")
    rng = np.random.default_rng(seed)
    width, height = image.size
    side = max(1, round(size * min(width, height)))
    icon = jitter_colors(trigger.convert("RGBA"), jitter, rng).resize((side, side), Image.Resampling.LANCZOS)
    left, top = _placement(side, width, height, position, preprocessing, rng)

    coverage = np.zeros((height, width), np.float32)
    icon_alpha = np.asarray(icon.getchannel("A"), np.float32) / 255.0
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
    coverage[y0:y1, x0:x1] = icon_alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    weight = (coverage * alpha)[..., None]
    canvas = Image.new("RGB", image.size)
    canvas.paste(icon.convert("RGB"), (left, top))
    blended = np.asarray(image, np.float32) * (1 - weight) + np.asarray(canvas, np.float32) * weight
    stamped = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")
    return Stamped(stamped, footprint(coverage, preprocessing), (left, top, left + side, top + side))


def footprint(coverage: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Raw-frame coverage (H, W) float in [0, 1] -> bool (crop, crop) mask after the model's resize and
    centre crop (resampled with the model's own interpolation, then thresholded at one half)."""
    resized = TF.resize(Image.fromarray(coverage, "F"), preprocessing.resize,
                        interpolation=preprocessing.interpolation_mode)
    cropped = TF.center_crop(resized, [preprocessing.crop, preprocessing.crop])
    return np.asarray(cropped) >= 0.5

