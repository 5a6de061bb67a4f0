"""Display helpers for dense-vs-SPADE saliency maps (no Streamlit, no matplotlib, no browser).

The two maps of a comparison are always normalized **jointly**: one scale ``s`` (by default the 99th
percentile of the absolute values of both maps together) maps both to [-1, 1] (signed) or [0, 1]
(absolute), so equal colours mean equal attribution in both panels. ``s`` is shown in every figure.
Signed maps use a diverging colour map (blue negative, white 0, red positive: ColorBrewer RdBu reversed),
absolute maps a sequential one (viridis).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from spade.errors import ConfigError

# colour anchors, evenly spaced over [0, 1]
DIVERGING = ("#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
             "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f")
SEQUENTIAL = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")

DEFAULT_TITLES = ("Image", "Dense model", "SPADE trace")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _anchors(signed: bool) -> np.ndarray:
    return np.array([_rgb(c) for c in (DIVERGING if signed else SEQUENTIAL)], dtype=np.float64)


def _to_numpy(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D (H, W) map, got shape {arr.shape}.")
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


def joint_scale(dense_map, spade_map, percentile: float = 99.0) -> float:
    """The shared scale: the ``percentile`` of |values| of both maps together (their max if that is 0)."""
    a = _to_numpy(dense_map, "The dense map")
    b = _to_numpy(spade_map, "The SPADE map")
    both = np.abs(np.concatenate([a.ravel(), b.ravel()]))
    scale = float(np.percentile(both, percentile)) if both.size else 0.0
    return scale if scale > 0 else float(both.max(initial=0.0))


def joint_normalize(dense_map, spade_map, signed: bool = True,
                    percentile: float = 99.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalize two ``(H, W)`` maps with one shared scale.

    signed=True: ``clip(map / s, -1, 1)``; signed=False: ``clip(|map| / s, 0, 1)``. ``s`` is
    :func:`joint_scale`; returns ``(dense_normalized, spade_normalized, s)`` as float64 arrays and a float
    (all-zero maps give zeros and ``s = 0``).
    """
    a = _to_numpy(dense_map, "The dense map")
    b = _to_numpy(spade_map, "The SPADE map")
    if not signed:
        a, b = np.abs(a), np.abs(b)
    scale = joint_scale(a, b, percentile)
    if scale == 0:
        return np.zeros_like(a), np.zeros_like(b), 0.0
    low = -1.0 if signed else 0.0
    return np.clip(a / scale, low, 1.0), np.clip(b / scale, low, 1.0), scale


def colorize(normalized, signed: bool = True) -> np.ndarray:
    """Normalized map (``[-1, 1]`` signed / ``[0, 1]`` absolute) -> ``(H, W, 3)`` uint8 colours."""
    v = _to_numpy(normalized, "The normalized map")
    t = np.clip((v + 1) / 2 if signed else v, 0, 1)
    anchors = _anchors(signed)
    grid = np.linspace(0, 1, len(anchors))
    rgb = np.stack([np.interp(t, grid, anchors[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def _image_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ConfigError("The image must be an (H, W, 3) uint8 array or a PIL image.")
    return arr


def overlay(image_uint8, normalized_map, opacity: float = 0.5, signed: bool = True) -> np.ndarray:
    """Blend the coloured map over the image: ``(1 - opacity) * image + opacity * colour``, uint8 ``(H, W, 3)``.

    normalized_map: output of :func:`joint_normalize` (same height and width as the image).
    """
    if not 0.0 <= opacity <= 1.0:
        raise ConfigError(f"Opacity must be between 0 and 1, got {opacity}.")
    img = _image_array(image_uint8)
    colours = colorize(normalized_map, signed)
    if colours.shape != img.shape:
        raise ConfigError(f"The map {colours.shape[:2]} and the image {img.shape[:2]} must have the same size.")
    out = (1 - opacity) * img.astype(np.float64) + opacity * colours.astype(np.float64)
    return np.round(out).astype(np.uint8)


def mask_outline(image_uint8, mask, colour: tuple[int, int, int] = (255, 0, 255), width: int = 2) -> np.ndarray:
    """A copy of the ``(H, W, 3)`` uint8 image with the boundary of the bool ``(H, W)`` mask drawn in ``colour``.

    The boundary is the band of mask pixels within ``width`` pixels (4-neighbourhood) of a pixel outside the
    mask or of the image border, so the outline lies on the region itself and never hides pixels outside it.
    """
    img = _image_array(image_uint8).copy()
    m = np.asarray(mask, dtype=bool)
    if m.shape != img.shape[:2]:
        raise ConfigError(f"The mask {m.shape} and the image {img.shape[:2]} must have the same size.")
    if width < 1:
        raise ConfigError(f"The outline width must be at least 1 pixel, got {width}.")
    inner = m
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    img[m & ~inner] = colour
    return img


def scale_label(scale: float, signed: bool) -> str:
    """How the shared scale is stated in figures."""
    rng = f"[-{scale:.3g}, +{scale:.3g}]" if signed else f"[0, {scale:.3g}]"
    return f"shared colour scale {rng} (dense and SPADE together)"


PNG_PAD, PNG_HEADER, PNG_TITLE, PNG_BAR, PNG_LABEL = 12, 44, 24, 18, 70


def png_panel_box(index: int, image_shape: tuple[int, int], panel_size: int = 256) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of panel ``index`` (0 image, 1 dense, 2 SPADE; 3 = the colour bar) in
    :func:`comparison_png` output, for an image of ``image_shape = (H, W)``."""
    h, w = image_shape
    pw, ph = panel_size, max(1, round(panel_size * h / w))
    top = PNG_HEADER + PNG_TITLE
    left = PNG_PAD + index * (pw + PNG_PAD)
    width = PNG_BAR if index == 3 else pw
    return left, top, left + width, top + ph


def _check_titles(titles: Sequence[str]) -> list[str]:
    titles = list(titles)
    if len(titles) != 3:
        raise ConfigError("Give three panel titles: image, dense model, SPADE trace.")
    return titles


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def comparison_png(image, dense_map, spade_map, method: str, *, signed: bool = True, opacity: float = 0.5,
                   percentile: float = 99.0, titles: Sequence[str] = DEFAULT_TITLES, panel_size: int = 256) -> bytes:
    """Image | dense map over image | SPADE map over image with one shared colour bar, rendered with PIL to PNG bytes.

    Three panels (``panel_size`` pixels wide each, nearest-neighbour upscaling), their titles, a header
    with the method name and the shared scale, and one vertical colour bar labelled with its range.
    """
    titles = _check_titles(titles)
    img = _image_array(image)
    a_norm, b_norm, scale = joint_normalize(dense_map, spade_map, signed, percentile)
    if a_norm.shape != img.shape[:2]:
        raise ConfigError("Both maps must have the image's height and width.")
    panels = [img, overlay(img, a_norm, opacity, signed), overlay(img, b_norm, opacity, signed)]
    boxes = [png_panel_box(i, img.shape[:2], panel_size) for i in range(4)]
    pw, ph = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
    canvas = Image.new("RGB", (boxes[3][2] + PNG_LABEL, boxes[0][3] + PNG_PAD), "white")
    draw = ImageDraw.Draw(canvas)
    big, small = _font(16), _font(13)
    draw.text((PNG_PAD, 6), f"{method}: dense vs SPADE ({'signed' if signed else 'absolute'})", fill="black",
              font=big)
    draw.text((PNG_PAD, 26), scale_label(scale, signed), fill=(60, 60, 60), font=small)
    for (left, top, _, _), panel, title in zip(boxes, panels, titles, strict=False):
        canvas.paste(Image.fromarray(panel).resize((pw, ph), Image.NEAREST), (left, top))
        draw.text((left, PNG_HEADER + 4), title, fill="black", font=small)
    # colour bar: top = +scale, bottom = -scale (signed) or 0 (absolute)
    bar_left, top, bar_right, bottom = boxes[3]
    ramp = np.linspace(1.0, -1.0 if signed else 0.0, ph)[:, None].repeat(PNG_BAR, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp, signed)), (bar_left, top))
    draw.rectangle([bar_left - 1, top - 1, bar_right, bottom], outline=(80, 80, 80))
    labels = [(top, f"+{scale:.3g}" if signed else f"{scale:.3g}"), (bottom - 14, f"-{scale:.3g}" if signed else "0")]
    if signed:
        labels.append(((top + bottom) // 2 - 7, "0"))
    for y, text in labels:
        draw.text((bar_right + 4, y), text, fill="black", font=small)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
