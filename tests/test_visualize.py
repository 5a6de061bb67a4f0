"""Display helpers: one shared scale for dense and SPADE maps, colour maps, overlay, plotly figure and PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from spade.errors import ConfigError
from spade.visualize import (
    colorize,
    comparison_png,
    joint_normalize,
    overlay,
    png_panel_box,
)


def maps() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(16, 16))
    return dense, 3.0 * dense + rng.normal(size=(16, 16))  # the SPADE map is 3x larger


def test_joint_normalize_uses_one_scale_for_both_maps():
    dense, spade = maps()
    a, b, scale = joint_normalize(dense, spade, signed=True, percentile=99.0)
    expected = np.percentile(np.abs(np.concatenate([dense.ravel(), spade.ravel()])), 99.0)
    assert scale == pytest.approx(expected)
    assert np.allclose(a * scale, np.clip(dense, -scale, scale))
    assert np.allclose(b * scale, np.clip(spade, -scale, scale))
    assert np.abs(a).max() < np.abs(b).max()  # separate normalization would make both reach 1
    assert a.min() >= -1 and b.max() <= 1


def test_joint_normalize_absolute_and_degenerate_maps():
    dense, spade = maps()
    a, b, scale = joint_normalize(torch.tensor(dense), torch.tensor(spade), signed=False)
    assert a.min() >= 0 and b.min() >= 0 and np.allclose(a * scale, np.clip(np.abs(dense), 0, scale))
    z, _, zero_scale = joint_normalize(np.zeros((4, 4)), np.zeros((4, 4)))
    assert zero_scale == 0.0 and not z.any()
    sparse = np.zeros((10, 10))
    sparse[0, 0] = 5.0  # the 99th percentile is 0: fall back to the max
    _, b, s = joint_normalize(np.zeros((10, 10)), sparse)
    assert s == 5.0 and b[0, 0] == 1.0


def test_colour_maps():
    signed = colorize(np.array([[-1.0, 0.0, 1.0]]), signed=True)[0]
    assert tuple(signed[1]) == (0xF7, 0xF7, 0xF7)  # white-ish at zero
    assert signed[0, 2] > signed[0, 0] and signed[2, 0] > signed[2, 2]  # blue negative, red positive
    seq = colorize(np.array([[0.0, 1.0]]), signed=False)[0]
    assert tuple(seq[0]) == (0x44, 0x01, 0x54) and tuple(seq[1]) == (0xFD, 0xE7, 0x25)


def test_overlay_blends_with_opacity():
    img = np.full((4, 4, 3), 100, dtype=np.uint8)
    m = np.linspace(-1, 1, 16).reshape(4, 4)
    assert np.array_equal(overlay(img, m, opacity=0.0), img)
    assert np.array_equal(overlay(img, m, opacity=1.0), colorize(m))
    half = overlay(img, m, opacity=0.5).astype(int)
    assert np.abs(half - (img.astype(int) + colorize(m).astype(int)) / 2).max() <= 1
    with pytest.raises(ConfigError):
        overlay(img, m, opacity=1.5)
    with pytest.raises(ConfigError):
        overlay(img, np.zeros((3, 3)))


def test_comparison_png_renders_both_maps_on_the_same_scale():
    img = np.full((8, 8, 3), 128, dtype=np.uint8)
    dense = np.zeros((8, 8))
    dense[:, :4] = 1.0
    spade = np.full((8, 8), 2.0)
    spade[:, :4] = 1.0  # same value as the dense map's left half
    png = comparison_png(img, dense, spade, "Saliency", opacity=1.0, panel_size=64)
    canvas = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    (dl, dt, _, db), (sl, _, sr, _) = png_panel_box(1, (8, 8), 64), png_panel_box(2, (8, 8), 64)
    y = (dt + db) // 2
    dense_left, spade_left, spade_right = canvas[y, dl + 8], canvas[y, sl + 8], canvas[y, sr - 8]
    assert np.array_equal(dense_left, spade_left)  # equal values, equal colours
    assert not np.array_equal(spade_left, spade_right)
    bl, bt, br, bb = png_panel_box(3, (8, 8), 64)
    assert np.array_equal(canvas[bt, (bl + br) // 2], colorize(np.array([[1.0]]))[0, 0])  # bar top = +scale
    assert np.array_equal(spade_right, colorize(np.array([[1.0]]))[0, 0])  # 2.0 is the shared scale's top
    assert canvas.shape[1] > br


def test_comparison_png_refuses_mismatched_maps():
    with pytest.raises(ConfigError):
        comparison_png(np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((4, 4)), np.zeros((4, 4)), "x")
    with pytest.raises(ConfigError):
        comparison_png(np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8)), np.zeros((8, 8)), "x",
                       titles=("a", "b"))
