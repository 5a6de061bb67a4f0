"""Tests of spade.images: every accepted format/mode becomes the right RGB image, every refused input
raises ImageLoadError with a useful message, and the bundled examples are valid and documented."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spade.errors import ImageLoadError
from spade.images import MAX_PIXELS, bundled_examples, load_image, thumbnail
from spade.preprocessing import Preprocessing

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SOURCE_KINDS = ("path", "str", "bytes", "bytearray", "bytesio", "open_file")


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _load_via(kind: str, data: bytes, tmp_path: Path, suffix: str) -> Image.Image:
    """load_image on the same encoded data given as a path, str, bytes, bytearray or file-like."""
    if kind in ("path", "str", "open_file"):
        path = tmp_path / f"input{suffix}"
        path.write_bytes(data)
        if kind == "open_file":
            with open(path, "rb") as fh:
                return load_image(fh)
        return load_image(path if kind == "path" else str(path))
    if kind == "bytes":
        return load_image(data)
    if kind == "bytearray":
        return load_image(bytearray(data))
    return load_image(io.BytesIO(data))


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


# Each case: encoded bytes, file suffix, expected RGB array (H, W, 3) and the allowed per-pixel error.
def _case_rgba_png():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    alpha[:, :8] = 0  # fully transparent band -> white
    alpha[:, 8:16] = 255  # opaque band -> unchanged colour
    data = _encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")
    return data, ".png", _composite_on_white(rgb, alpha), 1


def _case_la_png():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (36, 50), dtype=np.uint8)
    alpha = rng.integers(0, 256, (36, 50), dtype=np.uint8)
    alpha[0] = 0
    data = _encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG")
    return data, ".png", _composite_on_white(np.repeat(gray[..., None], 3, axis=2), alpha), 1


def _case_p_transparency_png():
    rng = np.random.default_rng(3)
    palette = np.array([[10, 20, 30], [200, 0, 0], [0, 180, 0], [0, 0, 160]], dtype=np.uint8)
    index = rng.integers(0, 4, (40, 40), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    data = _encode(image, "PNG", transparency=0)
    expected = palette[index]
    expected[index == 0] = 255  # the transparent palette entry becomes white, not (10, 20, 30)
    return data, ".png", expected, 0


def _case_l_png():
    gray = np.random.default_rng(4).integers(0, 256, (33, 70), dtype=np.uint8)
    return _encode(Image.fromarray(gray, "L"), "PNG"), ".png", np.repeat(gray[..., None], 3, axis=2), 0


def _case_one_bit_png():
    bits = np.random.default_rng(5).random((40, 64)) > 0.5
    data = _encode(Image.fromarray(bits).convert("1"), "PNG")
    return data, ".png", np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, axis=2), 0


def _sixteen_bit(fmt: str, suffix: str):
    values = np.linspace(0, 65535, 48 * 40).round().astype(np.uint16).reshape(40, 48)
    data = _encode(Image.fromarray(values), fmt)
    expected = np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    return data, suffix, np.repeat(expected[..., None], 3, axis=2), 1


def _case_float_tiff():
    values = np.linspace(0.0, 1.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    expected = np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)
    return _encode(Image.fromarray(values, "F"), "TIFF"), ".tif", np.repeat(expected[..., None], 3, axis=2), 1


def _case_colour_key_png(mode: str):
    """L or RGB PNG whose tRNS chunk makes one colour transparent."""
    rng = np.random.default_rng(11)
    gray = rng.integers(10, 256, (40, 44), dtype=np.uint8)
    gray[::3] = 0  # every third row uses the transparent key colour
    if mode == "L":
        data = _encode(Image.fromarray(gray, "L"), "PNG", transparency=0)
    else:
        data = _encode(Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB"), "PNG", transparency=(0, 0, 0))
    expected = np.repeat(np.where(gray == 0, 255, gray).astype(np.uint8)[..., None], 3, axis=2)
    return data, ".png", expected, 0


def _case_int32_tiff():
    values = np.linspace(-1000, 200000, 40 * 40).astype(np.int32).reshape(40, 40)
    data = _encode(Image.fromarray(values, "I"), "TIFF")
    lo, hi = float(values.min()), float(values.max())
    expected = np.rint((values - lo) * 255.0 / (hi - lo)).astype(np.uint8)  # linear stretch of the data range
    return data, ".tif", np.repeat(expected[..., None], 3, axis=2), 1


def _case_cmyk_jpeg():
    cmyk = np.zeros((64, 64, 4), dtype=np.uint8)
    cmyk[:32, :32] = (0, 255, 255, 0)  # red
    cmyk[:32, 32:] = (255, 0, 0, 0)  # cyan
    cmyk[32:, :32] = (0, 0, 0, 255)  # black
    cmyk[32:, 32:] = (0, 0, 0, 0)  # white
    expected = np.zeros((64, 64, 3), dtype=np.uint8)
    expected[:32, :32] = (255, 0, 0)
    expected[:32, 32:] = (0, 255, 255)
    expected[32:, 32:] = (255, 255, 255)
    return _encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95, subsampling=0), ".jpg", expected, 8


def _random_rgb(seed: int, h: int = 45, w: int = 60) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _case_lossless(fmt: str, suffix: str, **kwargs):
    rgb = _random_rgb(6)
    return _encode(Image.fromarray(rgb, "RGB"), fmt, **kwargs), suffix, rgb, 0


def _case_jpeg():
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[:, :32] = (250, 120, 10)
    rgb[:, 32:] = (20, 60, 200)
    return _encode(Image.fromarray(rgb, "RGB"), "JPEG", quality=95, subsampling=0), ".jpg", rgb, 8


def _case_mpo():
    """Multi-picture JPEG as written by many cameras: PIL reports format MPO; the first picture counts."""
    first = np.zeros((48, 64, 3), dtype=np.uint8)
    first[:, :32] = (200, 10, 10)
    first[:, 32:] = (10, 200, 10)
    frames = [Image.fromarray(first, "RGB"), Image.new("RGB", (64, 48), (0, 0, 200))]
    data = _encode(frames[0], "MPO", save_all=True, append_images=frames[1:], quality=95, subsampling=0)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    return data, ".jpg", first, 8


def _case_gif_multiframe():
    first = np.zeros((40, 50, 3), dtype=np.uint8)
    first[:, :25] = (255, 0, 0)
    first[:, 25:] = (0, 255, 0)
    frames = [Image.fromarray(first, "RGB"), Image.new("RGB", (50, 40), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    return data, ".gif", first, 0


ACCEPTED = {
    "rgba_png": _case_rgba_png,
    "la_png": _case_la_png,
    "p_transparency_png": _case_p_transparency_png,
    "l_png": _case_l_png,
    "1bit_png": _case_one_bit_png,
    "i16_png": lambda: _sixteen_bit("PNG", ".png"),
    "i16_tiff": lambda: _sixteen_bit("TIFF", ".tif"),
    "float_tiff": _case_float_tiff,
    "int32_tiff": _case_int32_tiff,
    "l_colour_key_png": lambda: _case_colour_key_png("L"),
    "rgb_colour_key_png": lambda: _case_colour_key_png("RGB"),
    "cmyk_jpeg": _case_cmyk_jpeg,
    "rgb_jpeg": _case_jpeg,
    "webp_lossless": lambda: _case_lossless("WEBP", ".webp", lossless=True),
    "bmp": lambda: _case_lossless("BMP", ".bmp"),
    "tiff_rgb": lambda: _case_lossless("TIFF", ".tif"),
    "gif_multiframe": _case_gif_multiframe,
    "mpo_jpeg": _case_mpo,
}


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_inputs_become_rgb(case, kind, tmp_path):
    data, suffix, expected, tolerance = ACCEPTED[case]()
    image = _load_via(kind, data, tmp_path, suffix)
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == (expected.shape[1], expected.shape[0])
    diff = np.abs(np.asarray(image).astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{case}: max pixel error {diff.max()}"


def test_transparent_pixel_becomes_white_and_opaque_keeps_colour():
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = (12, 34, 56)
    rgba[:20, :, 3] = 0
    rgba[20:, :, 3] = 255
    image = np.asarray(load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (image[:20] == 255).all()
    assert (image[20:] == (12, 34, 56)).all()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_maps_monotonically_onto_full_range(fmt):
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    image = np.asarray(load_image(_encode(Image.fromarray(values), fmt)))
    gray = image[..., 0].astype(int).ravel()
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    order = np.argsort(values.ravel(), kind="stable")
    assert (np.diff(gray[order]) >= 0).all(), "16-bit -> 8-bit mapping is not monotonic"
    assert gray.min() == 0 and gray.max() == 255
    assert len(np.unique(gray)) == 256  # no clipping: every 8-bit level is used
    mid = np.abs(values.astype(int) - 32768).argmin()
    assert abs(gray[mid] - 128) <= 1  # PIL's plain convert would clip this to 255


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_exif_orientation_is_applied(kind, tmp_path):
    rgb = np.zeros((40, 64, 3), dtype=np.uint8)  # 64 wide, 40 high
    rgb[:, :] = (0, 0, 255)
    rgb[:20, :32] = (255, 0, 0)  # red top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: display needs a 90-degree clockwise rotation
    data = _encode(Image.fromarray(rgb, "RGB"), "JPEG", quality=95, subsampling=0, exif=exif)
    image = _load_via(kind, data, tmp_path, ".jpg")
    assert image.size == (40, 64)  # width and height swapped
    expected = np.rot90(rgb, k=-1)
    diff = np.abs(np.asarray(image).astype(int) - expected.astype(int))
    assert diff.max() <= 8


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but that holds no pixel data (cheap bomb stand-in)."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _noise_png(size: int = 128) -> bytes:
    return _encode(Image.fromarray(_random_rgb(7, size, size), "RGB"), "PNG")


def _cat_bytes() -> bytes:
    return bundled_examples()["cat"].read_bytes()


REFUSED = {
    "random_bytes": (
        lambda: np.random.default_rng(8).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        ["not a supported image", "PNG", "JPEG"],
    ),
    "text": (lambda: b"hello, this is not an image\n" * 10, ["not a supported image"]),
    "truncated_jpeg": (lambda: _cat_bytes()[: len(_cat_bytes()) // 2], ["truncated or corrupt"]),
    "truncated_png": (lambda: _noise_png()[: len(_noise_png()) // 2], ["truncated or corrupt"]),
    "png_bad_header": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, ["image"]),
    "header_10000x6000": (lambda: _png_header_only(10000, 6000), ["10000x6000", "megapixel", "downscale"]),
    "header_10000x10000": (lambda: _png_header_only(10000, 10000), ["megapixel", "downscale"]),
    "header_20000x20000": (lambda: _png_header_only(20000, 20000), ["megapixel", "downscale"]),
    "too_small_20x500": (lambda: _encode(Image.new("RGB", (20, 500), (9, 9, 9)), "PNG"), ["too small", "20x500", "32"]),
    "too_small_500x31": (lambda: _encode(Image.new("RGB", (500, 31)), "JPEG"), ["too small", "32"]),
    "empty": (lambda: b"", ["empty"]),
    "ppm_not_supported": (lambda: _encode(Image.new("RGB", (64, 64)), "PPM"), ["not a supported image"]),
}


@pytest.mark.parametrize("kind", ["path", "bytes", "bytesio"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_inputs_raise_image_load_error(case, kind, tmp_path):
    make, fragments = REFUSED[case]
    with pytest.raises(ImageLoadError) as info:
        _load_via(kind, make(), tmp_path, ".png")
    message = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{case}: {fragment!r} missing from {message!r}"


def test_large_header_is_refused_before_decoding():
    # The header-only file has no pixel data: if the loader decoded first, it would report truncation.
    with pytest.raises(ImageLoadError, match="megapixel") as info:
        load_image(_png_header_only(10000, 6000))
    assert "truncated" not in str(info.value)


def test_pixel_limit_is_inclusive_and_pil_global_untouched():
    limit_before = Image.MAX_IMAGE_PIXELS
    before_filters = list(warnings.filters)
    data = _encode(_two_tone(64, 64), "PNG")
    assert load_image(data, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(ImageLoadError, match="megapixel"):
        load_image(data, max_pixels=64 * 64 - 1)
    for size in (10000, 20000):
        with pytest.raises(ImageLoadError):
            load_image(_png_header_only(size, size))
    assert limit_before == Image.MAX_IMAGE_PIXELS  # the global bomb limit was not changed
    assert list(warnings.filters) == before_filters
    assert MAX_PIXELS == 50_000_000


def _two_tone(width: int, height: int) -> Image.Image:
    """A black image with a white left half (load_image refuses an image of one colour)."""
    image = Image.new("RGB", (width, height))
    image.paste((255, 255, 255), (0, 0, width // 2, height))
    return image


def test_min_side_boundary():
    assert load_image(_encode(_two_tone(32, 32), "PNG")).size == (32, 32)
    with pytest.raises(ImageLoadError, match="at least 32 pixels"):
        load_image(_encode(_two_tone(31, 300), "PNG"))


def test_missing_path_and_folder_and_empty_file(tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    with pytest.raises(ImageLoadError, match="does not exist") as info:
        load_image(missing)
    assert "no_such_photo.jpg" in str(info.value)
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(str(missing))
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(empty)


def test_text_mode_file_and_wrong_type(tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(_cat_bytes())
    with open(path, encoding="latin-1") as fh, pytest.raises(ImageLoadError, match="binary mode"):
        load_image(fh)
    with pytest.raises(ImageLoadError, match="file path, bytes"):
        load_image(12345)


def test_uploaded_file_name_appears_in_message():
    upload = io.BytesIO(b"definitely not an image")
    upload.name = "holiday.heic"
    with pytest.raises(ImageLoadError, match="holiday.heic"):
        load_image(upload)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"])
def test_corrupted_files_never_raise_foreign_exceptions(fmt):
    rng = np.random.default_rng(9)
    data = _encode(Image.fromarray(_random_rgb(10, 48, 48), "RGB"), fmt)
    outcomes = {"ok": 0, "refused": 0}
    for trial in range(40):
        mutated = bytearray(data)
        if trial % 2:
            positions = rng.integers(0, len(mutated), rng.integers(1, 8))
            for pos in positions:
                mutated[pos] = int(rng.integers(0, 256))
        else:
            mutated = mutated[: int(rng.integers(1, len(mutated)))]
        try:
            image = load_image(bytes(mutated))
        except ImageLoadError as exc:
            assert str(exc).endswith(".")
            outcomes["refused"] += 1
        else:
            assert image.mode == "RGB" and min(image.size) >= 32
            outcomes["ok"] += 1
    assert outcomes["refused"] > 0


def test_returned_image_is_independent_of_source(tmp_path):
    path = tmp_path / "anim.gif"
    path.write_bytes(_case_gif_multiframe()[0])
    image = load_image(path)
    path.unlink()  # the file handle must be closed and the pixels already in memory
    assert np.asarray(image).shape == (40, 50, 3)


def test_thumbnail_keeps_aspect_and_never_enlarges():
    image = Image.new("RGB", (400, 200))
    assert thumbnail(image, 100).size == (100, 50)
    assert thumbnail(image, 1000).size == (400, 200)
    assert image.size == (400, 200)


# ---------------------------------------------------------------- bundled examples


def test_bundled_examples_all_load_and_are_small():
    examples = bundled_examples()
    assert list(examples)[:2] == ["cat", "coffee"]
    assert len(examples) >= 5
    files = sorted(p for p in (ASSETS / "images").iterdir() if p.is_file())
    assert sorted(examples.values()) == files, "every file in assets/images must be a bundled example"
    for name, path in examples.items():
        assert path.stem == name
        image = load_image(path)
        assert image.mode == "RGB"
        assert max(image.size) <= 640, f"{name} is {image.size}"
        assert min(image.size) >= 256, f"{name} is too small to be a useful example"
    assert sum(p.stat().st_size for p in files) <= 1_500_000


def test_assets_readme_documents_every_file():
    readme = (ASSETS / "README.md").read_text(encoding="utf-8")
    for path in bundled_examples().values():
        assert path.name in readme, f"assets/README.md does not mention {path.name}"
        row = next(line for line in readme.splitlines() if path.name in line and line.startswith("|"))
        assert any(word in row for word in ("CC0", "public domain", "Public domain", "CC BY")), row


def test_preprocessing_round_trip_on_bundled_image():
    pre = Preprocessing()
    image = load_image(bundled_examples()["cat"])
    x = pre(image)
    assert x.shape == (3, pre.crop, pre.crop) and str(x.dtype) == "torch.float32"
    back = pre.to_uint8(x)
    reference = np.asarray(pre.resize_crop(image))
    assert back.shape == reference.shape == (pre.crop, pre.crop, 3)
    assert np.abs(back.astype(int) - reference.astype(int)).max() <= 1
