"""Safe image loading (any common format/mode -> RGB PIL image) and the bundled example photos.

`load_image` accepts a path, bytes or a binary file-like and either returns a fully decoded RGB
image or raises `ImageLoadError` with a one-sentence message; no other exception type escapes.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from spade.errors import ImageLoadError

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

MAX_PIXELS = 50_000_000
"""Largest accepted image (width * height), checked from the header before any decoding."""

MIN_SIDE = 32
"""Smallest accepted width and height in pixels."""

# Only these PIL plugins may open user data (the JPEG one also opens camera MPO files); this keeps
# exotic decoders (e.g. EPS, which runs Ghostscript) away from untrusted input.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_FORMATS_TEXT = "PNG, JPEG, WebP, BMP, TIFF or GIF"

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "images"
_EXAMPLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
_EXAMPLE_ORDER = ("cat", "coffee", "grace_hopper", "astronaut", "rocket", "china", "flower", "camera")

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255, 255)


def load_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode `source` into an RGB PIL image (mode "RGB", uint8, fully loaded, EXIF orientation applied).

    source: a path (str / os.PathLike), the encoded bytes, or a binary file-like object (read from its
    current position; not closed). Accepted formats: PNG, JPEG, WebP, BMP, TIFF, GIF (first frame).
    Transparent pixels are composited on white; 16-bit images are scaled by 255/65535; 32-bit integer
    and float images are linearly stretched to 0..255 unless they already lie in 0..255 (or 0..1 for
    float). Raises ImageLoadError for anything refused: missing/empty input, not an image, truncated or
    corrupt data, more than `max_pixels` pixels, a side shorter than `min_side`, a float image with NaN or
    infinite pixels, or an image whose pixels all have the same colour (nothing to classify or explain).
    """
    label, opener = _open_source(source)
    try:
        with opener() as fp:
            return _decode(fp, label, max_pixels, min_side)
    except ImageLoadError:
        raise
    except Exception as exc:  # a decoder bug or an unusual file must not crash the caller
        logger.debug("unexpected error while loading %s", label, exc_info=True)
        raise ImageLoadError(f"{label} could not be read as an image ({type(exc).__name__}: {_detail(exc)}).") from exc


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """Copy of `image` shrunk (aspect kept, never enlarged) so that its long side is at most `size` px."""
    out = image.copy()
    out.thumbnail((size, size), Image.Resampling.LANCZOS)
    return out


def bundled_examples() -> dict[str, Path]:
    """The example photos shipped in assets/images: name (file stem, e.g. "cat") -> file path.

    Ordered with the best-known examples first (cat, coffee, ...), then any other files by name.
    Licences and sources are listed in assets/README.md.
    """
    if not ASSETS_DIR.is_dir():
        logger.warning("bundled example folder %s is missing", ASSETS_DIR)
        return {}
    files = {p.stem: p for p in sorted(ASSETS_DIR.iterdir()) if p.suffix.lower() in _EXAMPLE_SUFFIXES}
    ordered = {name: files[name] for name in _EXAMPLE_ORDER if name in files}
    ordered.update({name: path for name, path in files.items() if name not in ordered})
    return ordered


def _open_source(source: ImageSource):
    """Validate `source` and return (label for messages, zero-argument opener of a binary stream)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = f"Image file '{path}'"
        try:
            if not path.exists():
                raise ImageLoadError(f"{label} does not exist; check the path.")
            if path.is_dir():
                raise ImageLoadError(f"'{path}' is a folder, not an image file.")
            if path.stat().st_size == 0:
                raise ImageLoadError(f"{label} is empty (0 bytes).")
        except OSError as exc:
            raise ImageLoadError(f"{label} cannot be accessed ({exc.strerror or exc}).") from exc

        def open_path():
            try:
                return open(path, "rb")
            except OSError as exc:
                raise ImageLoadError(f"{label} cannot be opened ({exc.strerror or exc}).") from exc

        return label, open_path

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = "The image data"
    elif hasattr(source, "read"):
        name = getattr(source, "name", None)
        label = f"Image '{os.path.basename(name)}'" if isinstance(name, str) and name else "The uploaded image"
        try:
            data = source.read()
        except Exception as exc:
            raise ImageLoadError(f"{label} could not be read ({_detail(exc)}).") from exc
        if isinstance(data, str):
            raise ImageLoadError(f"{label} was opened in text mode; open the file in binary mode ('rb').")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageLoadError(f"{label} returned {type(data).__name__} instead of bytes when read.")
        data = bytes(data)
    else:
        raise ImageLoadError(
            f"Cannot load an image from a {type(source).__name__}; pass a file path, bytes or a binary file object."
        )
    if not data:
        raise ImageLoadError(f"{label} is empty (0 bytes).")
    return label, lambda: io.BytesIO(data)


def _decode(fp: BinaryIO, label: str, max_pixels: int, min_side: int) -> Image.Image:
    with warnings.catch_warnings():
        # PIL's own bomb guard warns (or raises) while opening; turn it into our refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp, formats=SUPPORTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(
                f"{label} has more pixels than the {max_pixels / 1e6:.0f}-megapixel limit (refused before decoding "
                "as a possible decompression bomb); downscale it first."
            ) from exc
        except Image.UnidentifiedImageError as exc:
            raise ImageLoadError(f"{label} is not a supported image (expected {_FORMATS_TEXT}).") from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
            raise ImageLoadError(f"{label} has a corrupt header and could not be opened ({_detail(exc)}).") from exc

        _check_size(img.size, label, max_pixels, min_side)  # header size, before decoding any pixels
        try:
            img.load()  # full decode: a truncated or corrupt file fails here, not later
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(
                f"{label} exceeds the pixel limit when decoded ({_detail(exc)}); downscale it first."
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
            raise ImageLoadError(f"{label} is truncated or corrupt and could not be decoded ({_detail(exc)}).") from exc
    _check_size(img.size, label, max_pixels, min_side)  # some formats only know their final size after load

    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not cost the user the image itself
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", label, exc)
        oriented = img
    rgb = _to_rgb(oriented if oriented is not None else img, label)
    _check_not_constant(rgb, label)
    return rgb if rgb is not img else img.copy()


def _detail(exc: BaseException) -> str:
    """An exception's text for use inside a sentence (no trailing full stop, never empty)."""
    return str(exc).strip().rstrip(".") or type(exc).__name__


def _check_size(size: tuple[int, int], label: str, max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{label} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), more than the "
            f"{max_pixels / 1e6:.0f}-megapixel limit; downscale it first."
        )
    if min(width, height) < min_side:
        raise ImageLoadError(
            f"{label} is too small ({width}x{height} pixels); it must be at least {min_side} pixels on each side."
        )


def _check_not_constant(rgb: Image.Image, label: str) -> None:
    """Refuse an RGB image whose pixels all have one colour: a model's answer on it says nothing about a photo."""
    if all(low == high for low, high in rgb.getextrema()):
        colour = ", ".join(str(low) for low, _ in rgb.getextrema())
        raise ImageLoadError(f"{label} has the same colour (RGB {colour}) in every pixel, so there is nothing to "
                             "classify or explain; use a photo.")


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth_to_l(img, label)
        if isinstance(img.info.get("transparency"), int):  # tRNS colour key of a 16-bit grey PNG
            mask = np.asarray(img) == img.info["transparency"]
            gray = Image.fromarray(np.where(mask, 255, np.asarray(gray)).astype(np.uint8), "L")
        return gray.convert("RGB")
    try:
        if mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", img.size, _WHITE)
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode == "RGB":
            return img
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(
            f"{label} uses the colour mode {mode}, which cannot be converted to RGB ({_detail(exc)})."
        ) from exc


def _high_depth_to_l(img: Image.Image, label: str) -> Image.Image:
    """16-bit / 32-bit integer / float single-channel image -> 8-bit "L" without clipping; ImageLoadError for a
    float image with NaN or infinite pixels (there is no colour to give them)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr * (255.0 / 65535.0)
    else:
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ImageLoadError(f"{label} has {bad} of {arr.size} pixels that are not finite numbers (NaN or "
                                 "infinite); save it with finite values.")
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo))  # hi > lo here: the range exceeds 0..255
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
