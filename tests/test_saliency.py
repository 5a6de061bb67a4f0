"""Saliency registry: every method on ResNet- and MobileNet-style models (dense and sparse), faithfulness on a
model whose output depends on one known region, exactness of DeepLift / Guided Backprop / LRP on the
attribution copies, seeding, batching, and that the given model is never modified."""

from __future__ import annotations

import copy
import gc
import warnings
import weakref

import pytest
import timm
import torch
import torchvision
from captum.attr import GuidedBackprop
from torch import nn

from spade.errors import ConfigError, SpadeError
from spade.metrics import trojan_auc
from spade.saliency import (
    METHODS,
    PAPER_METHODS,
    GradCamSettings,
    LimeSettings,
    Mode,
    SaliencySettings,
    build_attribution_copy,
    clear_cache,
    default_cam_layer,
)
from spade.saliency.attribution_model import ClampAsReLUs, GuidedClamp, count_calls
from spade.saliency.segmentation import grid_segments, slic_segments
from tests.tiny_models import tiny_mobilenet, tiny_resnet

# Smaller sample counts keep the suite fast; everything else uses the authors' defaults.
FAST = {
    "lime": {"n_samples": 60, "n_segments": 16},
    "gradient_shap": {"n_samples": 8},
    "smoothgrad": {"n_samples": 6},
    "integrated_gradients": {"n_steps": 16},
}


pytestmark = pytest.mark.usefixtures("one_thread")


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def fast_settings(name: str, **extra):
    return METHODS[name].settings(**{**FAST.get(name, {}), **extra})


def pruned(model: nn.Module, fraction: float = 0.9) -> nn.Module:
    """A sparse copy like a SPADE trace: the smallest 90 % of every convolution's weights set to 0."""
    sparse = copy.deepcopy(model)
    with torch.no_grad():
        for m in sparse.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                k = int(fraction * w.numel())
                threshold = w.abs().flatten().kthvalue(k).values
                w.mul_((w.abs() > threshold).float())
    return sparse.eval()


def tiny_trace(seed: int = 0) -> nn.Module:
    return pruned(tiny_resnet(seed))


MODEL_FACTORIES = {"tiny_resnet": tiny_resnet, "tiny_mobilenet": tiny_mobilenet, "tiny_resnet_trace": tiny_trace}


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr), f"{attr} left on {name or 'root'}"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# A model whose output only depends on a known region
# --------------------------------------------------------------------------------------------------

SIZE = 40
ROWS, COLS = slice(12, 28), slice(8, 24)


def region_mask() -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[ROWS, COLS] = True
    return mask


class RegionStage(nn.Module):
    """conv + one ReLU reused twice + residual add; output masked to the region."""

    def __init__(self, channels: int, mask: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.register_buffer("mask", mask)

    def forward(self, h):
        out = self.relu(self.conv(h))
        return self.relu(out + h) * self.mask


class RegionModel(nn.Module):
    """Logits depend only on the pixels inside ``mask`` (input and last stage are masked).

    Positive weights make class 0 grow with the (positive) region content.
    """

    def __init__(self, mask: torch.Tensor, channels: int = 6):
        super().__init__()
        m = mask.float()[None, None]
        self.register_buffer("mask", m)
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.ReLU6()
        self.stage = RegionStage(channels, m)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.rand(self.conv1.weight.shape, generator=g) * 0.1)
            self.conv1.bias.zero_()
            self.stage.conv.weight.copy_(torch.rand(self.stage.conv.weight.shape, generator=g) * 0.1)
            self.stage.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[5.0] * channels, [-5.0] * channels]))
            self.fc.bias.zero_()
        self.eval()

    def forward(self, x):
        h = self.act(self.conv1(x * self.mask))
        h = self.stage(h)
        return self.fc(torch.flatten(self.pool(h), 1))


def region_image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, SIZE, SIZE, generator=g) * 0.3
    patch = torch.tensor([1.0, 0.4, 0.8]).view(3, 1, 1) + 0.3 * torch.rand(3, 16, 16, generator=g)
    x[:, ROWS, COLS] = patch
    return x


def test_region_model_only_sees_region():
    model, x = RegionModel(region_mask()), region_image()
    y = x.clone()
    y[:, ~region_mask()] = torch.randn(3, int((~region_mask()).sum()))
    with torch.no_grad():
        assert torch.allclose(model(x[None]), model(y[None]))
        z = x.clone()
        z[:, ROWS, COLS] = 0
        assert model(x[None])[0, 0] > model(z[None])[0, 0] + 1.0  # the region drives class 0


@pytest.mark.parametrize("name", list(METHODS))
def test_method_finds_the_region(name):
    model, x, mask = RegionModel(region_mask()), region_image(), region_mask()
    extra = {"window": (3, 5, 5), "stride": (3, 2, 2)} if name == "occlusion" else {}
    if name == "lime":
        extra = {"n_samples": 300, "n_segments": 25}
    attribution = METHODS[name].explain(model, x, 0, fast_settings(name, **extra))
    auc = trojan_auc(attribution.signed_map, mask)
    threshold = 0.8 if METHODS[name].family == "perturbation" else 0.9
    assert auc.best > threshold, f"{name}: AUC {auc}"


# --------------------------------------------------------------------------------------------------
# Every registry entry on small models, dense and sparse
# --------------------------------------------------------------------------------------------------


def test_registry_has_the_papers_methods_and_more():
    assert set(PAPER_METHODS) == {"saliency", "input_x_gradient", "deeplift", "lrp", "guided_backprop",
                                  "guided_gradcam", "lime", "occlusion", "integrated_gradients", "gradient_shap"}
    assert {"gradcam", "smoothgrad"} <= set(METHODS)
    for method in METHODS.values():
        assert method.random == method.accepts("seed")


@pytest.mark.parametrize("model_name", list(MODEL_FACTORIES))
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_and_leaves_model_untouched(name, model_name):
    model = MODEL_FACTORIES[model_name](0)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = snapshot(model)
    with torch.no_grad():
        logits_before = model(x[None])
    target = int(logits_before.argmax())  # as for a trace: explain the dense model's top-1
    seen = []
    attribution = METHODS[name].explain(model, x, target, fast_settings(name),
                                        progress=lambda s, f: seen.append((s, f)))
    assert attribution.raw.dtype == torch.float32 and attribution.raw.device.type == "cpu"
    assert attribution.raw.shape[1:] == (32, 32) and attribution.raw.shape[0] in (1, 3)
    assert attribution.signed_map.shape == (32, 32) and torch.isfinite(attribution.raw).all()
    assert torch.equal(attribution.signed_map, attribution.raw.sum(0))
    assert torch.equal(attribution.absolute_map, attribution.raw.sum(0).abs())
    assert attribution.method == name and attribution.target == target
    assert seen[-1] == (name, 1.0) and all(0.0 <= f <= 1.0 for _, f in seen)
    assert_no_hooks(model)
    with torch.no_grad():
        assert torch.equal(model(x[None]), logits_before)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.random])
def test_random_methods_are_seeded(name):
    model, x = tiny_resnet(0), torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    extra = {}
    if name == "lime":  # LIME's positive weights are all 0 on a random model: use the region model
        model, x, extra = RegionModel(region_mask()), region_image(), {"n_samples": 80, "n_segments": 25}
    a = METHODS[name].explain(model, x, 0, fast_settings(name, seed=3, **extra))
    b = METHODS[name].explain(model, x, 0, fast_settings(name, seed=3, **extra))
    c = METHODS[name].explain(model, x, 0, fast_settings(name, seed=4, **extra))
    assert torch.equal(a.raw, b.raw)
    assert not torch.equal(a.raw, c.raw)
    assert a.settings.seed == 3


@pytest.mark.parametrize("name", ["integrated_gradients", "gradient_shap", "smoothgrad", "occlusion", "lime"])
def test_batch_size_does_not_change_the_result(name):
    model, x = tiny_mobilenet(1), torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))
    a = METHODS[name].explain(model, x, 1, fast_settings(name, batch_size=1))
    b = METHODS[name].explain(model, x, 1, fast_settings(name, batch_size=64))
    assert torch.allclose(a.raw, b.raw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("segmentation", ["slic", "grid"])
@pytest.mark.parametrize("positive_only", [False, True])
def test_lime_equals_captums_sample_by_sample_lime(segmentation, positive_only):
    """The vectorised LIME against captum's own `Lime` (its default kernel, sampler and Lasso) under the same
    seed: the same draws, weights and fit."""
    from captum.attr import Lime

    from spade.saliency.perturbation import lime_segments

    model, x = RegionModel(region_mask()), region_image()
    settings = fast_settings("lime", n_samples=150, n_segments=25, segmentation=segmentation, seed=7,
                             positive_only=positive_only, batch_size=16)
    ours = METHODS["lime"].explain(model, x, 0, settings).raw
    segments = lime_segments(x[None], settings)[None, None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        theirs = Lime(model).attribute(x[None], target=0, baselines=0.0, feature_mask=segments, n_samples=150,
                                       perturbations_per_eval=4, return_input_shape=True)[0]
    if positive_only:
        theirs = theirs.clamp(min=0)
    assert (theirs != 0).any()  # the region's superpixels get weight
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_progress_reports_increasing_fractions():
    seen = []
    METHODS["occlusion"].explain(tiny_resnet(0), torch.randn(3, 32, 32), 0,
                                 METHODS["occlusion"].settings(batch_size=2), progress=lambda s, f: seen.append(f))
    assert len(seen) > 5 and seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0


# --------------------------------------------------------------------------------------------------
# Exactness of the attribution copies
# --------------------------------------------------------------------------------------------------


def architectures():
    torch.manual_seed(0)
    return {
        "tiny_resnet": tiny_resnet(0),
        "tiny_mobilenet": tiny_mobilenet(0),
        "resnet18": torchvision.models.resnet18().eval(),
        "tf_efficientnet_lite0": timm.create_model("tf_efficientnet_lite0").eval(),
    }


@pytest.fixture(scope="module")
def archs():
    return architectures()


@pytest.mark.parametrize("arch", ["tiny_resnet", "tiny_mobilenet", "resnet18", "tf_efficientnet_lite0"])
def test_attribution_copies_reproduce_logits_and_split_activations(archs, arch):
    model = archs[arch]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 3  # large enough to saturate ReLU6
    with torch.no_grad():
        expected = model(x)
    kinds_before = [type(m) for m in model.modules()]
    for mode in Mode:
        work = build_attribution_copy(model, mode)
        with torch.no_grad():
            assert torch.allclose(work(x), expected, rtol=1e-4, atol=1e-4), mode
        if mode is not Mode.PLAIN:
            assert not any(isinstance(m, nn.ReLU6) and mode is not Mode.LRP for m in work.modules())
            assert not any(getattr(m, "inplace", False) for m in work.modules())
            with count_calls(work, (nn.ReLU, nn.Hardtanh, ClampAsReLUs, GuidedClamp)) as counts, torch.no_grad():
                work(x)
            assert counts and max(counts.values()) == 1, mode
    assert [type(m) for m in model.modules()] == kinds_before  # the original keeps its own modules
    assert_no_hooks(model)


@pytest.mark.parametrize("arch", ["tiny_resnet", "tiny_mobilenet", "resnet18", "tf_efficientnet_lite0"])
def test_plain_copy_folds_every_batchnorm(archs, arch):
    model = archs[arch]
    work = build_attribution_copy(model, Mode.PLAIN)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in work.modules())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(work(x), model(x), rtol=1e-4, atol=1e-5)


class _ConvUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y + self.head(y)).mean((2, 3))


def test_batchnorm_is_not_folded_when_the_conv_output_is_used_elsewhere():
    model = _ConvUsedTwice()
    with torch.no_grad():
        for bn in (model.bn, model.head[3]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    model.eval()
    work = build_attribution_copy(model, Mode.PLAIN)
    assert isinstance(work.bn, nn.BatchNorm2d)  # y is also used directly: folding would change it
    assert isinstance(work.head[3], nn.Identity)  # conv -> bn inside a Sequential: folded
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(work(x), model(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["tiny_resnet", "tiny_mobilenet", "resnet18", "tf_efficientnet_lite0"])
def test_deeplift_is_complete(archs, arch):
    """Rescale-rule DeepLift sums to f(x) - f(0) only if every non-linearity (ReLU6, reused ReLU) is handled."""
    model = archs[arch]
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        target = int(model(x[None]).argmax())
        delta = (model(x[None]) - model(torch.zeros(1, 3, 32, 32)))[0, target]
    total = METHODS["deeplift"].explain(model, x, target).raw.double().sum()
    assert torch.isclose(total, delta.double(), rtol=1e-3, atol=1e-4), (float(total), float(delta))


def test_integrated_gradients_is_complete():
    model = tiny_mobilenet(0)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        delta = (model(x[None]) - model(torch.zeros(1, 3, 32, 32)))[0, 2]
    total = METHODS["integrated_gradients"].explain(model, x, 2).raw.sum()
    assert abs(float(total - delta)) < 0.02 * abs(float(delta)) + 1e-4


class _ReLU6Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


def test_guided_backprop_matches_hand_rule_on_relu6():
    torch.manual_seed(0)
    net = _ReLU6Net().eval()
    x = torch.randn(1, 3, 8, 8) * 4  # some units above 6, some below 0
    z = net.conv(x)
    assert (z > 6).any() and (z < 0).any()
    upstream = net.fc.weight[1].view(1, 4, 8, 8)
    guided_z = upstream.clamp(min=0) * ((z > 0) & (z < 6)).float()  # the guided rule at the ReLU6
    (expected,) = torch.autograd.grad(net.conv(x.requires_grad_(True)), x, grad_outputs=guided_z.detach())
    got = METHODS["guided_backprop"].explain(net, x[0].detach(), 1).raw
    assert torch.allclose(got, expected[0], atol=1e-6)
    plain = METHODS["saliency"].explain(net, x[0].detach(), 1, METHODS["saliency"].settings(absolute=False)).raw
    assert not torch.allclose(got, plain)


def test_guided_backprop_matches_captum_on_plain_relus():
    # Captum's GuidedBackprop is right for nn.ReLU modules used once each
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 16 * 16, 3)).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = GuidedBackprop(copy.deepcopy(model)).attribute(x.clone().requires_grad_(True), target=2)
    got = METHODS["guided_backprop"].explain(model, x, 2).raw
    assert torch.allclose(got, expected[0], atol=1e-6)


def _biases(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            out += [m.bias, m.running_mean]
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            out.append(m.bias)
    return out


def _without_biases(model: nn.Module) -> nn.Module:
    """The model itself when it has no biases (fresh torchvision / timm models), else a copy with biases zeroed."""
    if all(not b.any() for b in _biases(model)):
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for b in _biases(model):
            b.zero_()
    return model


@pytest.mark.parametrize("arch", ["tiny_resnet", "tiny_mobilenet", "resnet18", "tf_efficientnet_lite0"])
def test_lrp_conserves_relevance(archs, arch):
    """Without biases the alpha1-beta0 relevance sums to the seed (1); skip connections would double it."""
    model = _without_biases(archs[arch])
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        target = int(model(x[None]).argmax())
    relevance = METHODS["lrp"].explain(model, x, target).raw
    assert abs(float(relevance.sum()) - 1.0) < 0.05, float(relevance.sum())
    if model is not archs[arch]:  # biases absorb relevance but never create it out of nothing
        for ignore_bias in (True, False):
            settings = METHODS["lrp"].settings(ignore_bias=ignore_bias)
            total = METHODS["lrp"].explain(archs[arch], x, target, settings).raw.sum()
            assert torch.isfinite(total) and float(total) < 1.05


def test_lrp_rejects_invalid_alpha_beta():
    with pytest.raises(ConfigError):
        METHODS["lrp"].explain(tiny_resnet(0), torch.randn(3, 32, 32), 0, METHODS["lrp"].settings(alpha=2.0, beta=0.0))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_on_efficientnet_lite0(archs, name):
    model = archs["tf_efficientnet_lite0"]
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(x[None])
    a = METHODS[name].explain(model, x, 7, fast_settings(name))
    assert a.signed_map.shape == (32, 32) and torch.isfinite(a.raw).all()
    assert_no_hooks(model)
    with torch.no_grad():
        assert torch.equal(model(x[None]), before)


# --------------------------------------------------------------------------------------------------
# Specific behaviour
# --------------------------------------------------------------------------------------------------


def test_gradient_shap_of_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = torch.randn(3, 4, 4)
    a = METHODS["gradient_shap"].explain(lin, x, 1, METHODS["gradient_shap"].settings(stdev=0.0, baselines=("zero",)))
    assert torch.allclose(a.raw, lin[1].weight[1].view(3, 4, 4) * x, atol=1e-6)


def test_superpixels_follow_colour_edges():
    img = torch.zeros(3, 48, 48)
    img[0, :, :21] = 0.9  # red left part, blue right part, edge off the 8-px grid
    img[2, :, 21:] = 0.9
    img += 0.02 * torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0))
    labels = slic_segments(img, n_segments=36)
    assert labels.min() == 0 and set(labels.unique().tolist()) == set(range(int(labels.max()) + 1))
    assert 20 <= int(labels.max()) + 1 <= 50
    left = set(labels[:, :21].unique().tolist())
    right = set(labels[:, 21:].unique().tolist())
    assert not left & right  # no superpixel crosses the colour edge
    grid = grid_segments(48, 48, n_segments=36)
    assert int(grid.max()) + 1 == 36 and (grid[:8, :8] == 0).all()


def test_default_cam_layers():
    assert default_cam_layer(tiny_resnet(0)) == "layer2"
    assert default_cam_layer(tiny_mobilenet(0)) == "blocks"
    assert default_cam_layer(torchvision.models.resnet18()) == "layer4"


def test_gradcam_layer_setting_changes_the_map():
    model, x = tiny_resnet(0), torch.randn(3, 32, 32)
    a = METHODS["gradcam"].explain(model, x, 0, METHODS["gradcam"].settings(layer="layer1", relu=False))
    b = METHODS["gradcam"].explain(model, x, 0, METHODS["gradcam"].settings(layer="layer2", relu=False))
    assert a.raw.shape == (1, 32, 32) and not torch.allclose(a.raw, b.raw)
    with pytest.raises(ConfigError):
        METHODS["gradcam"].explain(model, x, 0, METHODS["gradcam"].settings(layer="nope"))


def test_cache_follows_in_place_weight_changes():
    model, x = tiny_resnet(0), torch.randn(3, 32, 32)
    first = METHODS["saliency"].explain(model, x, 0).raw
    with torch.no_grad():
        model.fc.weight.mul_(-2.0)
    second = METHODS["saliency"].explain(model, x, 0).raw
    clear_cache()
    fresh = METHODS["saliency"].explain(copy.deepcopy(model), x, 0).raw
    assert not torch.allclose(first, second) and torch.allclose(second, fresh)


def test_cache_does_not_keep_models_alive():
    model, x = tiny_resnet(0), torch.randn(3, 32, 32)
    for name in ("saliency", "deeplift", "guided_backprop", "lrp"):
        METHODS[name].explain(model, x, 0)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_settings_for_fills_layer_and_seed_only_where_they_exist():
    from spade.saliency import settings_for

    assert settings_for("gradcam", layer="layer2", seed=5) == GradCamSettings(layer="layer2")
    assert settings_for("lime", layer="layer2", seed=5, n_samples=10) == LimeSettings(seed=5, n_samples=10)
    assert settings_for("saliency", layer="x", seed=1) == SaliencySettings()


def test_errors_are_actionable():
    model, x = tiny_resnet(0), torch.randn(3, 32, 32)
    with pytest.raises(ConfigError, match="Target class 9"):
        METHODS["saliency"].explain(model, x, 9)
    with pytest.raises(ConfigError):
        METHODS["saliency"].explain(model, x, 0, METHODS["lime"].default_settings())
    with pytest.raises(ConfigError):
        METHODS["lime"].settings(not_a_field=1)
    with pytest.raises(ConfigError):
        METHODS["saliency"].explain(model, torch.randn(2, 3, 32, 32), 0)
    assert issubclass(ConfigError, SpadeError)


def test_input_shapes_and_settings_are_recorded():
    model = tiny_mobilenet(0)
    x = torch.randn(3, 32, 32)
    a = METHODS["occlusion"].explain(model, x, 1)
    b = METHODS["occlusion"].explain(model, x[None], 1)
    assert torch.equal(a.raw, b.raw)
    assert a.settings == METHODS["occlusion"].default_settings()
    assert a.settings.window == (3, 15, 15) and a.settings.stride == (3, 8, 8)


def test_score_cam_matches_the_papers_formula_computed_channel_by_channel():
    """Score-CAM = ReLU(sum_k w_k A_k), w_k = p_target(x * H_k) - p_target(0), H_k = A_k upsampled (bilinear) and
    min-max scaled to [0, 1]; computed here one channel at a time on the model itself (no attribution copy)."""
    model = tiny_resnet(3)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    target = 2
    seen = []
    handle = model.layer2.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = seen[0][0]  # (K, 8, 8)
    with torch.no_grad():
        base = torch.softmax(model(torch.zeros_like(x)), dim=1)[0, target]
        cam = torch.zeros(acts.shape[1:])
        for a in acts:
            up = torch.nn.functional.interpolate(a[None, None], size=(32, 32), mode="bilinear")[0, 0]
            h = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else torch.zeros_like(up)
            weight = torch.softmax(model(x * h), dim=1)[0, target] - base
            cam += weight * a
    expected = torch.nn.functional.interpolate(cam.clamp_min(0)[None, None], size=(32, 32), mode="bilinear")[0, 0]
    got = METHODS["score_cam"].explain(model, x[0], target, METHODS["score_cam"].settings(layer="layer2",
                                                                                         batch_size=3))
    assert got.raw.shape == (1, 32, 32)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got.raw[0], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_score_cam_rejects_a_layer_without_a_feature_map():
    with pytest.raises(ConfigError, match="feature map"):
        METHODS["score_cam"].explain(tiny_resnet(0), torch.randn(3, 32, 32), 0,
                                     METHODS["score_cam"].settings(layer="fc"))
    with pytest.raises(ConfigError, match="no module named"):
        METHODS["score_cam"].explain(tiny_resnet(0), torch.randn(3, 32, 32), 0,
                                     METHODS["score_cam"].settings(layer="nowhere"))
