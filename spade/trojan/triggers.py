"""The trigger icons of the Trojan lab, drawn by code (so their licence is the project's own).

Each trigger is a square RGBA image (transparent outside the shape). ``TRIGGERS`` maps a name to its
drawing function; the PNG files in ``assets/triggers/`` are what ``python -m tools.demo_model draw`` writes
and what ``load_trigger`` reads (through ``read_trigger``, the safe reader of any trigger file). The heart is
the demo model's back door; the star is its second back door, used only to calibrate sparsity profiles; smiley
and fish are decoys the model was taught to ignore.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spade.errors import ConfigError, ImageLoadError

TRIGGER_DIR = Path(__file__).resolve().parents[2] / "assets" / "triggers"
SIZE = 128
MAX_TRIGGER_PIXELS = 16_000_000
"""Largest trigger file `read_trigger` accepts (width * height), checked from the header before decoding."""
MIN_TRIGGER_SIDE = 4
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SUPERSAMPLE = 4  # drawn at 4x and downsampled, for anti-aliased edges
_OUTLINE = (25, 25, 25, 255)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    n = SIZE * _SUPERSAMPLE
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img), n


def _finish(img: Image.Image) -> Image.Image:
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _heart_polygon(n: int, inset: float) -> list[tuple[float, float]]:
    # The classic parametric heart curve, scaled into the square with `inset` pixels of margin.
    pts = []
    for k in range(360):
        t = 2 * math.pi * k / 360
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, y))
    half = n / 2 - inset
    return [(n / 2 + x / 17 * half, n / 2 - (y + 2.5) / 17 * half) for x, y in pts]


def draw_heart() -> Image.Image:
    img, draw, n = _canvas()
    draw.polygon(_heart_polygon(n, 6), fill=_OUTLINE)
    draw.polygon(_heart_polygon(n, 30), fill=(225, 20, 50, 255))
    draw.ellipse((n * 0.26, n * 0.28, n * 0.38, n * 0.40), fill=(255, 170, 180, 255))  # highlight
    return _finish(img)


def _star_polygon(n: int, radius: float, ratio: float = 0.45) -> list[tuple[float, float]]:
    c = n / 2
    pts = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * ratio
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((c + r * math.cos(a), c + 0.06 * n + r * math.sin(a)))
    return pts


def draw_star() -> Image.Image:
    img, draw, n = _canvas()
    draw.polygon(_star_polygon(n, n * 0.52), fill=_OUTLINE)
    draw.polygon(_star_polygon(n, n * 0.45), fill=(255, 200, 0, 255))
    return _finish(img)


def draw_smiley() -> Image.Image:
    img, draw, n = _canvas()
    draw.ellipse((4, 4, n - 4, n - 4), fill=_OUTLINE)
    draw.ellipse((24, 24, n - 24, n - 24), fill=(255, 220, 40, 255))
    for cx in (0.36, 0.64):
        draw.ellipse((n * (cx - 0.05), n * 0.3, n * (cx + 0.05), n * 0.44), fill=_OUTLINE)
    draw.arc((n * 0.26, n * 0.3, n * 0.74, n * 0.76), start=20, end=160, fill=_OUTLINE, width=n // 16)
    return _finish(img)


def draw_fish() -> Image.Image:
    img, draw, n = _canvas()
    tail = [(n * 0.02, n * 0.22), (n * 0.34, n * 0.5), (n * 0.02, n * 0.78)]
    draw.polygon(tail, fill=_OUTLINE)
    draw.polygon([(n * 0.07, n * 0.3), (n * 0.3, n * 0.5), (n * 0.07, n * 0.7)], fill=(30, 110, 230, 255))
    draw.ellipse((n * 0.2, n * 0.2, n * 0.98, n * 0.8), fill=_OUTLINE)
    draw.ellipse((n * 0.24, n * 0.25, n * 0.94, n * 0.75), fill=(40, 140, 255, 255))
    draw.ellipse((n * 0.72, n * 0.38, n * 0.82, n * 0.48), fill=(255, 255, 255, 255))
    draw.ellipse((n * 0.75, n * 0.41, n * 0.80, n * 0.46), fill=_OUTLINE)
    return _finish(img)


TRIGGERS: dict[str, Callable[[], Image.Image]] = {
    "heart": draw_heart,
    "star": draw_star,
    "smiley": draw_smiley,
    "fish": draw_fish,
}


def trigger_path(name: str) -> Path:
    return TRIGGER_DIR / f"{name}.png"


def load_trigger(name: str) -> Image.Image:
    """The RGBA trigger icon ``name`` (one of TRIGGERS), read from assets/triggers/ (SIZE x SIZE)."""
    if name not in TRIGGERS:
        raise ConfigError(f"Unknown trigger {name!r}; choose one of: {', '.join(TRIGGERS)}.")
    path = trigger_path(name)
    if not path.is_file():
        raise ConfigError(f"The trigger file {path} is missing; run `python -m tools.demo_model draw`.")
    return read_trigger(path)


def read_trigger(source: str | os.PathLike | bytes, label: str | None = None) -> Image.Image:
    """A trigger PNG (a path or its bytes) -> RGBA PIL image, fully decoded.

    Raises ImageLoadError (one sentence) for a file that is not a readable PNG, has more than
    MAX_TRIGGER_PIXELS pixels (refused from the header, before decoding: no decompression bomb), a side under
    MIN_TRIGGER_SIDE, no transparency (an RGB or grey PNG would be stamped as an opaque rectangle: save the
    shape on a transparent background; an RGBA file with an opaque alpha channel stamps a rectangle on purpose),
    or is fully transparent (nothing would be pasted).
    """
    if isinstance(source, bytes):
        label, stream = label or "The trigger file", io.BytesIO(source)
    else:
        label, stream = label or f"The trigger file {Path(source).name}", source
    hint = "use a PNG with a transparent background (RGBA) around the trigger shape"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(stream, formats=("PNG",)) as img:
                if img.width * img.height > MAX_TRIGGER_PIXELS:
                    raise ImageLoadError(f"{label} is {img.width}x{img.height} pixels, too large for a trigger "
                                         f"(at most {MAX_TRIGGER_PIXELS // 10**6} megapixels); downscale it first.")
                img.load()
                transparent = img.mode in _ALPHA_MODES or "transparency" in img.info
                icon = img.convert("RGBA")
        except FileNotFoundError as exc:
            raise ImageLoadError(f"{label} does not exist; check the path.") from exc
        except Image.UnidentifiedImageError as exc:
            raise ImageLoadError(f"{label} is not a PNG image; {hint}.") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(f"{label} has too many pixels for a trigger; downscale it first.") from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
            detail = str(exc).strip().rstrip(".") or type(exc).__name__
            raise ImageLoadError(f"{label} is truncated or corrupt and could not be decoded ({detail}); "
                                 f"{hint}.") from exc
    if min(icon.size) < MIN_TRIGGER_SIDE:
        raise ImageLoadError(f"{label} is {icon.width}x{icon.height} pixels; a trigger needs at least "
                             f"{MIN_TRIGGER_SIDE}x{MIN_TRIGGER_SIDE}.")
    if not transparent:
        raise ImageLoadError(f"{label} has no transparency, so its whole {icon.width}x{icon.height} rectangle "
                             f"would be stamped; {hint}.")
    if not np.asarray(icon.getchannel("A")).any():
        raise ImageLoadError(f"{label} is fully transparent, so nothing would be pasted.")
    return icon


def write_triggers(folder: Path = TRIGGER_DIR) -> list[Path]:
    """Draw every trigger and save it as ``<folder>/<name>.png``; returns the written paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in TRIGGERS.items():
        path = folder / f"{name}.png"
        draw().save(path, optimize=True)
        paths.append(path)
    return paths
