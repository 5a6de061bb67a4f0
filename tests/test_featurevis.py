"""Feature visualization and neuron evidence: objectives rise, results are seeded and hook-free, and the
paper's effect in miniature (the trace of an image drops the facet that image does not contain)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from spade.augment import AugmentConfig, augment
from spade.errors import ConfigError
from spade.featurevis import (
    ChannelMean,
    ClassLogit,
    CropsConfig,
    FeatureVisConfig,
    Neuron,
    WeightedSum,
    compare_neuron,
    last_spatial_layer,
    neuron_evidence,
    parse_neuron,
    visualization_trace,
    visualize,
)
from spade.featurevis.transforms import random_crops
from spade.preprocessing import Preprocessing
from tests.tiny_models import tiny_mobilenet, tiny_resnet

PRE = Preprocessing(resize=32, crop=32)
FAST = FeatureVisConfig(steps=128, size=32, lr=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------------
# independent evaluation of an objective on an image (own hooks, no featurevis code)
def _direct_value(model: nn.Module, images: np.ndarray, objective, pre: Preprocessing = PRE) -> np.ndarray:
    """(B, H, W, 3) float images in [0, 1] -> (B,) objective values computed with plain hooks."""
    x = pre.normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    terms = objective.parts if isinstance(objective, WeightedSum) else ((1.0, objective),)
    outputs, handles = {}, []
    modules = dict(model.named_modules())
    for _, term in terms:
        if not isinstance(term, ClassLogit):
            handles.append(modules[term.layer].register_forward_hook(
                lambda m, i, o, name=term.layer: outputs.__setitem__(name, o.clone())))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros(x.shape[0])
    for weight, term in terms:
        if isinstance(term, ClassLogit):
            value = logits[:, term.index]
        elif isinstance(term, ChannelMean):
            value = outputs[term.layer][:, term.channel].mean((1, 2))
        else:
            fmap = outputs[term.layer][:, term.channel]
            value = fmap[:, fmap.shape[1] // 2, fmap.shape[2] // 2]
        total += weight * value
    return total.numpy()


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def _random_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random colour images (upsampled noise) and flat noise: what an unoptimised image looks like."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n // 2, 3, 4, 4, generator=g), size=size, mode="bilinear")
    noise = torch.rand(n - n // 2, 3, size, size, generator=g)
    return torch.cat([smooth, noise]).permute(0, 2, 3, 1).numpy()


OBJECTIVES = {
    "mobilenet": (tiny_mobilenet, {
        "class": ClassLogit(2),
        "channel": ChannelMean("blocks.1.0.conv_pwl", 3),
        "neuron": Neuron("conv_head", 5),
        "sum": 0.5 * ChannelMean("conv_head", 1) + ClassLogit(0),
    }),
    "resnet": (tiny_resnet, {
        "class": ClassLogit(4),
        "channel": ChannelMean("layer1.1.conv3", 2),
        "neuron": Neuron("layer2.0.conv2", 6),
        "sum": ChannelMean("layer2.1.conv1", 0) - 0.5 * ClassLogit(1),
    }),
}
CASES = [(arch, kind) for arch, (_, objs) in OBJECTIVES.items() for kind in objs]


@pytest.mark.parametrize(("arch", "kind"), CASES)
def test_objective_rises_well_above_random_images(arch, kind):
    build, objectives = OBJECTIVES[arch]
    model, objective = build(seed=1), objectives[kind]
    result = visualize(model, objective, preprocessing=PRE, config=FAST)
    assert result.curves.shape == (FAST.steps, 1)
    direct = _direct_value(model, result.images, objective)
    np.testing.assert_allclose(result.final_values, direct, rtol=1e-4, atol=1e-4)
    baseline = _direct_value(model, _random_images(32, 32, seed=3), objective)
    spread = baseline.max() - baseline.min()
    # the optimised image beats every one of 32 random images (full-contrast noise and smooth colour fields)
    # by a clear margin, and the objective rose over the run by more than the random images' spread / 2
    assert direct[0] > baseline.max() + 0.3 * spread, (direct, baseline.min(), baseline.max())
    assert direct[0] > result.curves[0, 0] + 0.5 * spread


def test_batch_of_objectives_shapes_range_and_each_row_serves_its_own_objective():
    model = tiny_mobilenet(seed=2)
    objectives = [ClassLogit(0), ClassLogit(3), ChannelMean("conv_head", 4)]
    result = visualize(model, objectives, preprocessing=PRE, config=FeatureVisConfig(steps=40, size=40))
    assert result.images.shape == (3, 40, 40, 3) and result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert result.curves.shape == (40, 3) and result.final_values.shape == (3,)
    assert result.settings["steps"] == 40 and result.settings["objectives"] == [o.describe() for o in objectives]
    assert result.image_uint8(1).dtype == np.uint8 and result.image_uint8(1).shape == (40, 40, 3)
    pre40 = Preprocessing(resize=40, crop=40)
    for i, objective in enumerate(objectives):
        values = _direct_value(model, result.images, objective, pre40)
        assert values.argmax() == i, (i, values)


def test_same_seed_same_image_other_seed_other_image():
    model = tiny_resnet(seed=0)
    objective = ChannelMean("layer2.0.conv3", 1) + ClassLogit(2)
    cfg = FeatureVisConfig(steps=12, size=32, seed=7)
    a = visualize(model, objective, preprocessing=PRE, config=cfg)
    b = visualize(model, objective, preprocessing=PRE, config=cfg)
    c = visualize(model, objective, preprocessing=PRE, config=FeatureVisConfig(steps=12, size=32, seed=8))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.curves, b.curves)
    assert np.abs(a.images - c.images).max() > 1e-3


def test_default_steps_and_size_follow_the_device():
    cpu = FeatureVisConfig().resolved(torch.device("cpu"), 224)
    gpu = FeatureVisConfig().resolved(torch.device("cuda"), 224)
    assert (cpu.steps, cpu.size) == (128, 224) and (gpu.steps, gpu.size) == (512, 224)
    assert FeatureVisConfig(steps=9, size=64).resolved(torch.device("cuda"), 224).steps == 9
    with pytest.raises(ConfigError):
        FeatureVisConfig(steps=0)
    with pytest.raises(ConfigError):
        FeatureVisConfig(parameterization="wavelet")


def test_pixel_parameterisation_and_no_transforms_also_optimise():
    model = tiny_mobilenet(seed=3)
    cfg = FeatureVisConfig(steps=64, size=32, parameterization="pixel", decorrelate=False, transforms=None, lr=0.1)
    result = visualize(model, ClassLogit(1), preprocessing=PRE, config=cfg)
    baseline = _direct_value(model, _random_images(32, 32, seed=3), ClassLogit(1))
    # without transforms the curve is measured on the very image returned at the end
    assert result.curves[-1, 0] > baseline.max() and result.curves[-1, 0] > result.curves[0, 0]


# --------------------------------------------------------------------------------------------------------------
# MACO: the amplitude spectrum stays the natural one, only the phases move
def test_natural_amplitude_is_a_falling_spectrum_measured_the_same_every_time():
    from spade.featurevis.spectrum import natural_amplitude

    amplitude = natural_amplitude(64)
    assert amplitude.shape == (3, 64, 33) and amplitude.dtype == torch.float32 and amplitude[:, 0, 0].eq(0).all()
    assert torch.isfinite(amplitude).all() and (amplitude >= 0).all()
    radius = (torch.fft.fftfreq(64).unsqueeze(1) ** 2 + torch.fft.rfftfreq(64).unsqueeze(0) ** 2).sqrt()
    low, high = (radius > 0) & (radius < 0.1), radius > 0.4
    assert (amplitude[:, low].mean(1) > 5 * amplitude[:, high].mean(1)).all()  # natural photos: about 1/f
    natural_amplitude.cache_clear()
    assert torch.equal(natural_amplitude(64), amplitude)  # measured again from the photos: the same
    with pytest.raises(ConfigError):
        natural_amplitude(8)


def test_maco_image_keeps_the_natural_amplitude_whatever_the_phases():
    """Undo the sigmoid and the colour mixing of a MACO image by hand: its spectrum's magnitude is the natural one
    up to the one factor of the standardisation, at every frequency whose phase is free (not the self-conjugate
    columns that irfft2 makes real)."""
    from spade.featurevis.param import COLOR_CORRELATION, init_parameters, to_rgb
    from spade.featurevis.spectrum import natural_amplitude

    size = 32
    phases = init_parameters(2, size, "maco", 0.01, torch.Generator().manual_seed(1))
    assert phases.shape == (2, 3, size, size // 2 + 1) and phases.abs().max() <= math.pi
    images = to_rgb(phases.double(), size, "maco", scale=natural_amplitude(size).double())
    mixed = torch.logit(images)
    standardised = torch.einsum("dc,bchw->bdhw", torch.linalg.inv(COLOR_CORRELATION.double()), mixed)
    magnitude = torch.fft.rfft2(standardised, norm="ortho").abs()[..., 1:size // 2]
    expected = natural_amplitude(size).double()[..., 1:size // 2]
    ratio = magnitude / expected
    for row in ratio:
        assert torch.allclose(row, row.mean(), rtol=1e-6), (row.min(), row.max())


def test_maco_raises_the_objective_and_is_seeded():
    model = tiny_mobilenet(seed=3)
    cfg = FeatureVisConfig(steps=48, size=32, parameterization="maco", seed=5)
    assert cfg.resolved(torch.device("cpu"), 32).lr == 0.25 and FAST.resolved(torch.device("cpu"), 32).lr == 0.1
    assert FeatureVisConfig().resolved(torch.device("cpu"), 32).lr == 0.05
    result = visualize(model, ClassLogit(1), preprocessing=PRE, config=cfg)
    again = visualize(model, ClassLogit(1), preprocessing=PRE, config=cfg)
    assert np.array_equal(result.images, again.images)
    # the tiny random model's logit moves little whatever the image (random images: 0.27-0.31); the phases alone
    # still raise it well above where they started and above a typical random image
    baseline = _direct_value(model, _random_images(16, 32, seed=3), ClassLogit(1))
    final = _direct_value(model, result.images, ClassLogit(1))
    assert final[0] == pytest.approx(result.final_values[0], rel=1e-4)
    assert final[0] > np.median(baseline) and final[0] > result.curves[0, 0] + 0.01
    assert result.curves[-8:].mean() > result.curves[:8].mean() + 0.005


def test_random_crops_sample_the_boxes_they_draw():
    # on a linear ramp bilinear sampling is exact, so each crop must equal the ramp over its own box
    size, count = 32, 5
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    ramp = torch.stack([xs / size, ys / size, 0.25 * (xs + ys) / size]).unsqueeze(0)  # channel = image coordinate
    images = torch.cat([ramp, 1 - ramp])
    cfg = CropsConfig(count=count, size=(0.3, 0.6), spread=0.3, noise=0.0)
    crops = random_crops(images, cfg, torch.Generator().manual_seed(2))
    assert crops.shape == (2 * count, 3, size, size)
    for k in range(count):
        first, other = crops[k], crops[count + k]  # the same box in both images
        assert torch.allclose(other, 1 - first, atol=1e-5)
        # from two interior pixels (a crop's edge pixels may sample the clamped border), the box's side and corner
        a, b = 2, size - 3
        side = float(first[0, 0, b] - first[0, 0, a]) * size / (b - a)
        assert float(first[1, b, 0] - first[1, a, 0]) * size / (b - a) == pytest.approx(side, abs=1e-4)  # square
        left = float(first[0, 0, a]) - (a + 0.5) * side / size
        top = float(first[1, a, 0]) - (a + 0.5) * side / size
        assert 0.3 - 1e-4 <= side <= 0.6 + 1e-4
        assert min(left, top) >= -1e-4 and max(left, top) + side <= 1 + 1e-4  # inside the image
        inner = (torch.arange(a, b + 1) + 0.5) * side / size
        assert torch.allclose(first[0, a, a:b + 1], left + inner, atol=1e-5)
        assert torch.allclose(first[1, a:b + 1, a], top + inner, atol=1e-5)
    again = random_crops(images, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(crops, again)
    noisy = random_crops(images, CropsConfig(count=2, noise=0.1), torch.Generator().manual_seed(0))
    assert 0.05 < float((noisy - random_crops(images, CropsConfig(count=2, noise=0.0),
                                              torch.Generator().manual_seed(0))).std()) < 0.2


@pytest.mark.parametrize("bad", [dict(count=0), dict(size=(0.0, 0.5)), dict(size=(0.6, 0.5)), dict(size=(0.5, 1.2)),
                                 dict(noise=-0.1), dict(spread=-1.0)])
def test_crops_config_refuses_bad_settings(bad):
    with pytest.raises(ConfigError):
        CropsConfig(**bad)


def test_whole_image_crops_optimise_as_the_image_itself_and_crops_raise_the_objective():
    model = tiny_mobilenet(seed=3)
    plain = FeatureVisConfig(steps=6, size=32, parameterization="maco", seed=1, transforms=None)
    whole = visualize(model, [ClassLogit(1), ClassLogit(2)], preprocessing=PRE,
                      config=dataclasses.replace(plain, crops=CropsConfig(count=1, size=(1.0, 1.0), spread=0.0,
                                                                          noise=0.0)))
    alone = visualize(model, [ClassLogit(1), ClassLogit(2)], preprocessing=PRE, config=plain)
    assert np.allclose(whole.images, alone.images, atol=1e-4) and np.allclose(whole.curves, alone.curves, atol=1e-4)
    cropped = dataclasses.replace(plain, steps=48, crops=CropsConfig(count=3))
    result = visualize(model, [ClassLogit(1), ClassLogit(2)], preprocessing=PRE, config=cropped)
    assert result.curves.shape == (48, 2) and result.images.shape == (2, 32, 32, 3)
    assert np.array_equal(result.images, visualize(model, [ClassLogit(1), ClassLogit(2)], preprocessing=PRE,
                                                    config=cropped).images)
    final = _direct_value(model, result.images[:1], ClassLogit(1))
    assert final[0] == pytest.approx(result.final_values[0], rel=1e-4)
    assert result.curves[-8:, 0].mean() > result.curves[:8, 0].mean()


# --------------------------------------------------------------------------------------------------------------
# the model is never changed and no hook survives
class Exploding(nn.Module):
    """tiny_mobilenet whose forward raises after the hooked layers have run."""

    def __init__(self):
        super().__init__()
        self.net = tiny_mobilenet(seed=0)

    def forward(self, x):
        self.net(x)
        raise RuntimeError("boom")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_model_untouched_and_no_hooks_after_a_run():
    model = tiny_mobilenet(seed=0)
    before = _snapshot(model)
    visualize(model, [Neuron("conv_head", 1), ClassLogit(0)], preprocessing=PRE, config=FeatureVisConfig(steps=3))
    neuron_evidence(model, Image.new("RGB", (40, 40), "red"), ClassLogit(0), preprocessing=PRE,
                    augment_config=AugmentConfig(count=4))
    assert _hooks_left(model) == 0 and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("case", ["missing layer", "missing channel", "missing class", "off-grid neuron",
                                  "forward raises"])
def test_no_hooks_remain_after_errors(case):
    model = Exploding() if case == "forward raises" else tiny_mobilenet(seed=0)
    model.train()  # the training flag must be restored too
    objective = {
        "missing layer": ChannelMean("blocks.9.conv", 0),
        "missing channel": ChannelMean("conv_head", 999),
        "missing class": ClassLogit(5),
        "off-grid neuron": Neuron("conv_head", 0, 50, 50),
        "forward raises": ChannelMean("net.conv_head", 0),
    }[case]
    error = RuntimeError if case == "forward raises" else ConfigError
    with pytest.raises(error):
        visualize(model, objective, preprocessing=PRE, config=FeatureVisConfig(steps=2))
    assert _hooks_left(model) == 0 and model.training
    with pytest.raises(error):
        neuron_evidence(model, Image.new("RGB", (32, 32)), objective, preprocessing=PRE,
                        augment_config=AugmentConfig(count=2))
    assert _hooks_left(model) == 0 and model.training
    assert all(p.grad is None for p in model.parameters())


def test_progress_reaches_one():
    calls = []
    visualize(tiny_resnet(), ClassLogit(0), preprocessing=PRE, config=FeatureVisConfig(steps=10, size=32),
              progress=lambda stage, f: calls.append((stage, f)))
    assert calls[-1] == ("visualize", 1.0) and all(0 < f <= 1 for _, f in calls)
    assert [f for _, f in calls] == sorted(f for _, f in calls)


# --------------------------------------------------------------------------------------------------------------
# objectives
def test_objective_algebra_and_parsing():
    a, b = ChannelMean("conv_head", 1), ClassLogit(3)
    combo = 2 * a - b
    assert combo == WeightedSum(((2.0, a), (-1.0, b)))
    model = tiny_mobilenet(seed=4)
    images = _random_images(4, 32, seed=0)
    np.testing.assert_allclose(_direct_value(model, images, combo),
                               2 * _direct_value(model, images, a) - _direct_value(model, images, b), rtol=1e-5)
    assert parse_neuron("class:PRED", predicted=7) == ClassLogit(7)
    assert parse_neuron("class:12") == ClassLogit(12)
    assert parse_neuron("blocks.1.0.conv_pwl:3") == ChannelMean("blocks.1.0.conv_pwl", 3)
    assert parse_neuron("layer4:10:2:3") == Neuron("layer4", 10, 2, 3)
    for bad in ("class:PRED", "conv:x", "nonsense", "a:1:2", ":3"):
        with pytest.raises(ConfigError):
            parse_neuron(bad)


# --------------------------------------------------------------------------------------------------------------
# neuron evidence
def _picture(size: int = 48, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=size, mode="bilinear")[0]
    return Image.fromarray((low.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_last_spatial_layer_is_the_map_before_global_pooling():
    x = torch.zeros(1, 3, 32, 32)
    assert last_spatial_layer(tiny_mobilenet(), x) == "act_head"
    assert last_spatial_layer(tiny_resnet(), x) == "layer2"


def test_channel_evidence_matches_direct_computation():
    model, image = tiny_resnet(seed=5), _picture()
    objective = ChannelMean("layer1.1.conv2", 3)
    cfg = AugmentConfig(count=12, seed=2)
    ev = neuron_evidence(model, image, objective, preprocessing=PRE, augment_config=cfg, top_k=3)
    x = PRE(image).unsqueeze(0)
    store = {}
    handle = model.layer1[1].conv2.register_forward_hook(lambda m, i, o: store.__setitem__("o", o))
    try:
        with torch.no_grad():
            model(x)
            fmap = store["o"][:, 3:4].clone()
            views = augment(image, cfg, PRE)
            model(views)
            view_values = store["o"][:, 3].mean((1, 2))
    finally:
        handle.remove()
    expected = F.interpolate(fmap, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    assert ev.activation_map.shape == (32, 32) and ev.image.shape == (32, 32, 3)
    np.testing.assert_allclose(ev.activation_map, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert ev.value == pytest.approx(float(fmap.mean()), rel=1e-5)
    np.testing.assert_allclose(ev.all_view_values, view_values.numpy(), rtol=1e-5, atol=1e-6)
    order = np.argsort(-view_values.numpy())[:3]
    assert list(ev.view_indices) == list(order)
    np.testing.assert_allclose(ev.views, PRE.denormalize(views[order]).clamp(0, 1).permute(0, 2, 3, 1).numpy(),
                               atol=1e-6)


def test_class_evidence_is_the_class_activation_map():
    model, image = tiny_mobilenet(seed=6), _picture(seed=1)
    ev = neuron_evidence(model, image, ClassLogit(2), preprocessing=PRE, augment_config=AugmentConfig(count=4))
    store = {}
    handle = model.act_head.register_forward_hook(lambda m, i, o: store.__setitem__("o", o))
    try:
        with torch.no_grad():
            logits = model(PRE(image).unsqueeze(0))
    finally:
        handle.remove()
    feats = store["o"][0]  # (C, h, w); logit = w . mean(feats) + b
    cam = torch.einsum("c,chw->hw", model.classifier.weight[2].detach(), feats) / feats[0].numel()
    expected = F.interpolate(cam[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(ev.activation_map, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert float(cam.sum() + model.classifier.bias[2].detach()) == pytest.approx(float(logits[0, 2]), rel=1e-4)
    assert "act_head" in ev.map_kind


def _with_maps(ev, dense_map: np.ndarray, trace_map: np.ndarray):
    from spade.featurevis.compare import NeuronComparison

    return NeuronComparison(objective=ClassLogit(2), dense=None, trace=None,
                            dense_evidence=dataclasses.replace(ev, activation_map=dense_map),
                            trace_evidence=dataclasses.replace(ev, activation_map=trace_map, value=ev.value / 2))


def test_evidence_note_says_whether_the_maps_on_the_image_agree():
    ev = neuron_evidence(tiny_mobilenet(seed=6), _picture(seed=1), ClassLogit(2), preprocessing=PRE,
                         augment_config=AugmentConfig(count=4))
    base = np.arange(64, dtype=np.float32).reshape(8, 8)
    # a monotone transform keeps every rank: correlation 1; the reversed order: -1
    same = _with_maps(ev, base, np.exp(base / 8).astype(np.float32))
    assert same.evidence_correlation == pytest.approx(1.0)
    assert same.evidence_note().startswith("The two maps agree (rank correlation 1.00; ")
    assert f"{ev.value:.3f} dense, {ev.value / 2:.3f} SPADE on the image" in same.evidence_note()
    reversed_ = _with_maps(ev, base, -base)
    assert reversed_.evidence_correlation == pytest.approx(-1.0)
    assert reversed_.evidence_note().startswith("The two maps differ (rank correlation -1.00; ")
    assert "constant" in _with_maps(ev, base, np.zeros_like(base)).evidence_note()
    without = dataclasses.replace(same, dense_evidence=None, trace_evidence=None)
    assert without.evidence_correlation is None and without.evidence_note() is None


# --------------------------------------------------------------------------------------------------------------
# the paper's effect in miniature
PERIOD, KERNEL = 6, 7
PRE64 = Preprocessing(resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class TwoFacetNet(nn.Module):
    """Class 0 answers to horizontal OR vertical stripes (period 6 px); class 1 to brightness.

    stem (hand-set 7x7, no padding, so image borders cannot fake a stripe): channel 0 detects horizontal
    stripes, channel 1 vertical stripes (each kernel is zero-sum across the stripe direction, so the other
    orientation gives exactly 0), channel 2 mean brightness. mix (1x1) + ReLU6: rows 0-1 read channel 0,
    rows 2-3 channel 1, rows 4-5 channel 2; the gain makes each facet saturate at half contrast, so the
    dense optimum needs *both* facets (a plaid). fc: class 0 = rows 0-3, class 1 = rows 4-5.
    """

    def __init__(self, gain: float = 12.0):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, KERNEL)
        self.act = nn.ReLU()
        self.mix = nn.Conv2d(3, 6, 1, bias=False)
        self.act2 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)
        t = torch.arange(KERNEL) - KERNEL // 2
        wave = torch.cos(2 * math.pi * t / PERIOD)
        profile = wave - wave.mean()
        horizontal = profile[:, None].expand(KERNEL, KERNEL)  # varies along y
        peak = (horizontal * wave[:, None]).sum()
        with torch.no_grad():
            self.stem.weight.zero_()
            self.stem.weight[0] = horizontal / peak / 3
            self.stem.weight[1] = horizontal.T / peak / 3
            self.stem.weight[2] = 1.0 / (KERNEL * KERNEL * 3)
            self.stem.bias.copy_(torch.tensor([-1e-3, -1e-3, 1.0]))  # tiny threshold: float noise stays 0
            self.mix.weight.zero_()
            for row, (channel, w) in enumerate([(0, gain), (0, 0.7 * gain), (1, gain), (1, 0.7 * gain),
                                                (2, 1.0), (2, 0.5)]):
                self.mix.weight[row, channel] = w
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[0, :4] = 1.0
            self.fc.weight[1, 4:] = 1.0
        self.eval()

    def forward(self, x):
        x = self.act2(self.mix(self.act(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))

    def detectors(self, images: np.ndarray) -> tuple[float, float]:
        """Mean response of the horizontal and vertical stripe detectors to (1, H, W, 3) images."""
        x = PRE64.normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
        with torch.no_grad():
            r = self.act(self.stem(x)).mean((0, 2, 3))
        return float(r[0]), float(r[1])


def stripes(vertical: bool, size: int = 64) -> Image.Image:
    wave = 0.5 + 0.5 * torch.cos(2 * math.pi * torch.arange(size, dtype=torch.float32) / PERIOD)
    img = wave[None, :].expand(size, size) if vertical else wave[:, None].expand(size, size)
    arr = (img * 255).round().to(torch.uint8)[..., None].expand(size, size, 3)
    return Image.fromarray(np.ascontiguousarray(arr.numpy()))


def test_trace_visualization_shows_the_facet_the_image_used():
    model = TwoFacetNet()
    image_a, image_b = stripes(vertical=False), stripes(vertical=True)
    with torch.no_grad():  # precondition: the neuron answers equally to either pattern
        logit_a, logit_b = (float(model(PRE64(im)[None])[0, 0]) for im in (image_a, image_b))
    assert logit_a == pytest.approx(logit_b, rel=1e-4) and logit_a > 1.0

    # the product's default trace for visualization: 0.95 on the late blocks (here mix and fc)
    trace = visualization_trace(model, image_a, preprocessing=PRE64, augment=AugmentConfig(count=32))
    assert {r.name: r.target for r in trace.layers} == {"mix": 0.95, "fc": 0.95}
    # the vertical detector never fires on the augmentations of image A: its connections are cut
    assert torch.count_nonzero(trace.model.mix.weight[:, 1]) == 0
    assert trace.top1_agrees

    cfg = FeatureVisConfig(steps=96, size=64, seed=0)
    result = compare_neuron(model, trace.model, image_a, ClassLogit(0), preprocessing=PRE64, config=cfg,
                            evidence_augment=AugmentConfig(count=8), top_k=2)
    dense_h, dense_v = model.detectors(result.dense.images)
    trace_h, trace_v = model.detectors(result.trace.images)
    # the dense visualization holds both facets; the trace's is dominated by the facet of image A
    assert min(dense_h, dense_v) > 0.5 * max(dense_h, dense_v), (dense_h, dense_v)
    assert trace_h > 0.05 and trace_h / trace_v > 2.5 * (dense_h / dense_v), (trace_h, trace_v, dense_h, dense_v)
    assert result.dense.curves[-1, 0] > result.dense.curves[0, 0] + 2.0
    # evidence on image A is computed for both models; the trace keeps the neuron's value on it
    assert result.dense_evidence.value == pytest.approx(logit_a, rel=1e-4)
    assert result.trace_evidence.value > 0.5 * logit_a
    summary = result.to_dict()
    assert summary["objective"] == "class 0" and set(summary) >= {"dense", "trace", "settings"}
    # the recorded correlation, recomputed by hand: Pearson correlation of the two maps' pixel ranks (ties averaged)
    from scipy.stats import rankdata

    ranks = [rankdata(m.ravel()) for m in (result.dense_evidence.activation_map, result.trace_evidence.activation_map)]
    assert summary["evidence_rank_correlation"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-6)
    json.dumps(summary)


def test_keep_decision_lowers_the_late_block_target_only_when_needed():
    cfg = AugmentConfig(count=16)
    for seed in (1, 2):
        model, image = tiny_mobilenet(seed=seed), _picture(seed=seed)
        plain = visualization_trace(model, image, preprocessing=PRE, augment=cfg)
        kept = visualization_trace(model, image, preprocessing=PRE, augment=cfg, keep_decision=True)
        plain_targets = {r.name: r.target for r in plain.layers}
        kept_targets = {r.name: r.target for r in kept.layers}
        late = {name for name, t in plain_targets.items() if t > 0}
        assert late and all(plain_targets[n] == 0.95 for n in late) and kept.top1_agrees
        if plain.top1_agrees:  # nothing to fix: the very same trace
            assert kept_targets == plain_targets
            assert all(torch.equal(kept.sparse_weights[n], plain.sparse_weights[n]) for n in late)
        else:  # the same late layers, at the first lower target that keeps the decision
            assert {n for n, t in kept_targets.items() if t > 0} == late
            assert len({kept_targets[n] for n in late}) == 1 and kept_targets[next(iter(late))] < 0.95
        # the trace records the late-blocks profile asked for and the one used
        assert kept.settings["requested_sparsity"]["name"] == "late-blocks-0.95"
        assert kept.settings["sparsity_scale"] == pytest.approx(kept_targets[next(iter(late))] / 0.95)
        assert (kept.settings["sparsity"] == kept.settings["requested_sparsity"]) == plain.top1_agrees
    assert not visualization_trace(tiny_mobilenet(seed=2), _picture(seed=2), preprocessing=PRE,
                                   augment=cfg).top1_agrees  # seed 2 really exercises the fallback


def test_visualization_request_lowers_a_given_sparsity_too():
    from spade.decision import KeepDecision
    from spade.featurevis.compare import VISUALIZATION_DECISION, visualization_request
    from spade.sparsity import late_blocks_profile

    model = tiny_mobilenet()
    requested, decision = visualization_request(model, 0.5)
    assert requested == 0.5 and decision.candidates(requested) == (0.5,)
    requested, decision = visualization_request(model, 0.5, keep_decision=True)
    assert decision == KeepDecision() and decision.candidates(requested) == pytest.approx((0.5, 0.4, 0.3, 0.2, 0.1))
    requested, decision = visualization_request(model, keep_decision=True)
    assert requested == late_blocks_profile(model, 0.95) and decision == VISUALIZATION_DECISION
    late = decision.candidates(requested)
    assert [{k: round(v, 12) for k, v in p.targets} for p in late] == [
        dict(late_blocks_profile(model, t).targets) for t in (0.95, 0.9, 0.8, 0.7, 0.5, 0.3)]
    assert visualization_request(model)[1].candidates(requested) == (requested,)


def test_a_class_logit_is_visualized_on_a_trace_that_prunes_only_the_classifier():
    from spade.featurevis.compare import VISUALIZATION_DECISION, visualization_request
    from spade.sparsity import classifier_profile, late_blocks_profile, resolve_targets

    model = tiny_mobilenet()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    head = names[-1]
    requested, decision = visualization_request(model, keep_decision=True, objective=ClassLogit(1))
    assert requested == classifier_profile(model, 0.95) and decision == VISUALIZATION_DECISION
    assert {n: t for n, t in resolve_targets(model, names, requested).items() if t} == {head: 0.95}
    channel = ChannelMean(names[-2], 0)
    assert visualization_request(model, objective=channel)[0] == late_blocks_profile(model, 0.95)
    assert visualization_request(model)[0] == late_blocks_profile(model, 0.95)  # no particular neuron
    # the trace: every layer but the classifier exactly dense, the classifier at the target
    trace = visualization_trace(model, _picture(), preprocessing=PRE, augment=AugmentConfig(count=8),
                                objective=ClassLogit(1))
    dense, traced = dict(model.named_modules()), dict(trace.model.named_modules())
    assert all(torch.equal(traced[n].weight, dense[n].weight) for n in names[:-1])
    rows = traced[head].weight.shape[0]  # "group" keeps whole weights per input column: floor(0.95 rows) zeros
    assert float((traced[head].weight == 0).float().mean()) == pytest.approx(math.floor(0.95 * rows) / rows)
    # statistics were recorded for the classifier alone, and solving from every layer's gives the same trace
    assert [r.name for r in trace.layers] == [head]
    from spade.decision import KeepDecision
    from spade.solver import SolverConfig
    from spade.trace import prepare_statistics, solve_keeping_decision

    full = prepare_statistics(model, _picture(), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    assert len(full.layers) > 1 and head in full.layers
    again = solve_keeping_decision(full, requested, SolverConfig(), decision=KeepDecision(())).trace
    for a, b in zip(trace.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert trace.settings["requested_sparsity"]["name"] == "classifier-0.95"


# --------------------------------------------------------------------------------------------------------------
def _run_cli(*args: str) -> subprocess.CompletedProcess:
    # libgomp's default busy-waiting makes two threads on two shared, busy cores 10-100x slower; passive
    # waiting does not (measured here: 69 s -> 0.35 s for the same small run)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "spade", *args], capture_output=True, text=True, timeout=600, env=env)


def test_visualize_command_writes_images_and_settings(tmp_path):
    from spade.images import bundled_examples

    out = tmp_path / "vis"
    result = _run_cli("visualize", str(bundled_examples()["coffee"]), "--device", "cpu", "--steps", "3", "--size", "96",
                      "--augmentations", "8", "--views", "6", "--top-k", "2", "--neuron", "blocks.5.0.conv_pwl:7",
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr and "dense visualize" in result.stderr
    for name in ("image", "dense", "spade", "dense_map", "spade_map"):
        with Image.open(out / f"{name}.png") as im:
            assert im.size == ((96, 96) if name in ("dense", "spade") else (224, 224))
    with Image.open(out / "dense_views.png") as im:
        assert im.size == (2 * 224 + 4, 224)
    data = json.loads((out / "visualize.json").read_text())
    assert data["objective"] == "blocks.5.0.conv_pwl:7 mean" and data["settings"]["steps"] == 3
    assert data["trace_report"]["settings"]["augment"]["count"] == 8
    assert data["trace_report"]["settings"]["requested_sparsity"]["name"] == "late-blocks-0.95"  # a channel's default
    assert len(data["curves"]["dense"]) == 3 and len(data["trace"]["evidence"]["top_view_values"]) == 2


def test_visualize_command_runs_the_chosen_method_and_offers_exactly_the_apps(tmp_path):
    from spade.featurevis import METHOD_LABELS
    from spade.images import bundled_examples
    from spade_cli.visualize import VISUALIZATION_METHODS

    assert set(VISUALIZATION_METHODS) == set(METHOD_LABELS)
    out = tmp_path / "vis"
    result = _run_cli("visualize", str(bundled_examples()["coffee"]), "--device", "cpu", "--steps", "2", "--size", "64",
                      "--augmentations", "4", "--views", "2", "--top-k", "1", "--method", "maco", "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "visualize.json").read_text())
    assert data["settings"]["parameterization"] == "maco"
    assert data["trace_report"]["settings"]["requested_sparsity"]["name"] == "classifier-0.95"  # a class logit's
    bad = _run_cli("visualize", str(bundled_examples()["coffee"]), "--method", "deepdream", "--out", str(out))
    assert bad.returncode == 2 and "invalid choice: 'deepdream'" in bad.stderr


def test_visualize_command_rejects_a_bad_neuron_cleanly(tmp_path):
    from spade.images import bundled_examples

    result = _run_cli("visualize", str(bundled_examples()["coffee"]), "--device", "cpu", "--neuron", "no.such.layer:3",
                      "--steps", "1", "--augmentations", "2", "--views", "2", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in result.stderr
    both = _run_cli("visualize", str(bundled_examples()["coffee"]), "--late-blocks", "--sparsity", "0.5",
                    "--out", str(tmp_path / "y"))
    assert both.returncode == 2 and "--late-blocks is a sparsity of its own" in both.stderr


# --------------------------------------------------------------------------------------------------------------
# the quality measure (spade.featurevis.judge) on a tiny judge, against a computation by hand
def test_judge_metric_on_a_tiny_model_matches_a_computation_by_hand():
    from spade.featurevis.judge import faithful_pairs, judge_outputs, judge_pictures, recognised

    judge = tiny_resnet(4)
    rng = np.random.default_rng(0)
    pictures = rng.random((3, 40, 40, 3)).astype(np.float32)  # resized to the judge's 32 px crop
    logits, features = judge_pictures(judge, PRE, pictures)
    # by hand: resize, normalize, run the network up to its pooled features and through fc
    x = PRE.normalize(F.interpolate(torch.from_numpy(pictures).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear",
                                    antialias=True))
    with torch.no_grad():
        h = judge.relu(judge.bn1(judge.conv1(x)))
        pooled = torch.flatten(judge.avgpool(judge.layer2(judge.layer1(h))), 1)
        torch.testing.assert_close(features, pooled)
        torch.testing.assert_close(logits, judge.fc(pooled))
    assert _hooks_left(judge) == 0
    # recognised: the class among the top-k of its row
    order = logits.argsort(dim=1, descending=True)
    classes = [int(order[0, 0]), int(order[1, 4]), int(order[2, 2])]
    assert recognised(logits, classes, k=1) == [True, False, False]
    assert recognised(logits, classes, k=3) == [True, False, True]
    assert recognised(logits, classes, k=5) == [True, True, True]
    # faithful: SPADE's picture counts when its features are strictly closer (cosine) to the photo's
    photo = judge_outputs(judge, x[:1])[1]
    pairs = faithful_pairs(features[[1, 2]], features[[0, 0]], photo)
    assert [p.spade_closer for p in pairs] == [True, True]  # the photo itself is the closest possible picture
    assert pairs[0].spade_cosine == pytest.approx(1.0, abs=1e-6)
    cos = torch.nn.functional.cosine_similarity
    assert pairs[1].dense_cosine == pytest.approx(float(cos(features[2], photo[0], dim=0)), abs=1e-6)
    same = faithful_pairs(features[[1]], features[[1]], photo)
    assert not same[0].spade_closer, "a tie does not count for SPADE"
    with pytest.raises(ConfigError):
        recognised(logits, classes[:2])
    with pytest.raises(ConfigError):
        judge_pictures(judge, PRE, pictures[..., :2])


# --------------------------------------------------------------------------------------------------------------
# several models side by side
def test_side_by_side_equals_one_thread_each_and_calls_back_on_the_calling_thread():
    import threading

    from spade.devices import cpu_threads
    from spade.featurevis.side_by_side import visualize_each

    models = {"dense": tiny_mobilenet(seed=1), "trace": tiny_mobilenet(seed=2)}
    cfg = FeatureVisConfig(steps=32, seed=3)
    threads, reports, previews = set(), [], []

    def progress(stage, fraction):
        threads.add(threading.get_ident())
        reports.append((stage, fraction))

    def preview(name, step, image):
        threads.add(threading.get_ident())
        previews.append((name, step, image.shape))

    both = visualize_each(models, ClassLogit(1), preprocessing=PRE, config=cfg, progress=progress, preview=preview,
                          workers=2)
    assert threads == {threading.get_ident()}
    assert {s for s, f in reports if f == 1.0} == {"dense visualize", "trace visualize"}
    assert sorted(previews) == sorted((n, s, (32, 32, 3)) for n in models for s in (16, 32))
    for name, model in models.items():
        with cpu_threads(1):
            alone = visualize(model, ClassLogit(1), preprocessing=PRE, config=cfg)
        np.testing.assert_array_equal(both[name].images, alone.images)
        np.testing.assert_array_equal(both[name].curves, alone.curves)
    one_after_the_other = visualize_each(models, ClassLogit(1), preprocessing=PRE, config=cfg, workers=1)
    np.testing.assert_allclose(one_after_the_other["trace"].curves, both["trace"].curves, rtol=1e-4, atol=1e-5)


def test_side_by_side_raises_a_run_error_and_stops_on_a_callback_error():
    import threading

    from spade.featurevis.side_by_side import visualize_each

    models = {"dense": tiny_mobilenet(seed=1), "trace": tiny_resnet(seed=2)}
    with pytest.raises(ConfigError, match="act_head"):  # the objective's layer exists in one model only
        visualize_each(models, ChannelMean("act_head", 0), preprocessing=PRE, config=FeatureVisConfig(steps=2),
                       workers=2)

    def progress(stage, fraction):
        raise RuntimeError("the page was closed")

    with pytest.raises(RuntimeError, match="the page was closed"):
        visualize_each(models, ClassLogit(1), preprocessing=PRE, config=FeatureVisConfig(steps=400),
                       progress=progress, workers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("spade-visualize")]


def test_class_logits_are_optimised_on_the_folded_copy_and_channels_on_the_model_itself():
    from spade.featurevis.optimize import network_for

    model = tiny_mobilenet(seed=4).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    with network_for(model, (ClassLogit(1),), x[:1]) as net:
        assert net is not model
        assert not [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]  # folded into the convolutions
        assert all(not p.requires_grad for p in net.parameters())
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
    with network_for(model, (ChannelMean("act_head", 0),), x[:1]) as net:
        assert net is model and not model.training  # a hook on a folded convolution would see another value
    assert model.training  # restored
