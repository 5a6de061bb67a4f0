"""The SPADE trace end to end: augmentations, profiles, the trace report, save/load, determinism."""

import dataclasses
import json
import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from spade.augment import AugmentConfig, augment
from spade.devices import cpu_threads
from spade.errors import ConfigError
from spade.layers import blocks, prunable_layers
from spade.preprocessing import Preprocessing
from spade.solver import SOLVERS, SolverConfig
from spade.sparsity import PROFILE_DIR, PROFILES, SparsityProfile, load_profile, method_profiles, resolve_targets
from spade.trace import SpadeTrace, prepare_statistics, solve, solve_many, spade_trace
from tests.tiny_models import tiny_mobilenet, tiny_resnet

PRE = Preprocessing(resize=40, crop=32, interpolation="bilinear")


def photo(seed=0, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- augmentations ---------------------------------------------------------------------------

def test_augment_is_seeded_and_leaves_global_rng_alone():
    img = photo()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = augment(img, AugmentConfig(count=6, seed=1), PRE)
    assert torch.equal(torch.get_rng_state(), before)
    b = augment(img, AugmentConfig(count=6, seed=1), PRE)
    c = augment(img, AugmentConfig(count=6, seed=2), PRE)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # views differ from each other


@pytest.mark.parametrize("workers", [1, 3])
def test_augment_equals_torchvision_views_whatever_the_threads(workers):
    """Parameters drawn up front, views rendered by threads: the same batch as calling the torchvision transform
    once per view under the same seed (the plain way), bit for bit."""
    from torchvision.transforms import v2

    from spade.augment import _view_transform

    img = photo(size=(61, 47))
    cfg = AugmentConfig(count=20, seed=4)
    transform = _view_transform(cfg, PRE)
    raw = v2.functional.pil_to_tensor(img)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        expected = PRE.normalize(torch.stack([transform(raw) for _ in range(cfg.count)]))
    assert torch.equal(augment(img, cfg, PRE, workers=workers), expected)


def test_augment_without_randomness_is_the_resized_image():
    img = photo(size=(32, 32))
    cfg = AugmentConfig(count=2, min_scale=1.0, flip=False, brightness=0.0, hue=0.0)
    views = augment(img, cfg, Preprocessing(resize=32, crop=32))
    # full-area crop of a square image at its own size: only the aspect ratio jitter may resample
    expected = Preprocessing(resize=32, crop=32)(img)
    close = [(v - expected).abs().max() < 1e-5 for v in views]
    assert any(close) or all((v - expected).abs().mean() < 0.3 for v in views)


def test_augment_options_take_effect():
    img = photo()
    base = augment(img, AugmentConfig(count=4, seed=0), PRE)
    noisy = augment(img, AugmentConfig(count=4, seed=0, noise=0.5), PRE)
    assert (noisy - base).std() == pytest.approx(0.5, rel=0.1)
    erased = augment(img, AugmentConfig(count=8, seed=0, erasing=1.0), PRE)
    assert any((v == 0).all(dim=0).float().mean() > 0.01 for v in erased)  # an erased (zero) patch


@pytest.mark.parametrize("bad", [dict(count=0), dict(min_scale=0.0), dict(hue=0.7), dict(erasing=2.0)])
def test_augment_config_validates(bad):
    with pytest.raises(ConfigError):
        AugmentConfig(**bad)


# --- blocks and profiles ---------------------------------------------------------------------

def test_blocks_found_from_module_structure():
    assert list(blocks(tiny_resnet())) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"]
    assert list(blocks(tiny_mobilenet())) == ["blocks.0.0", "blocks.1.0", "blocks.1.1", "conv_head", "classifier"]
    layers = prunable_layers(tiny_mobilenet())
    assert "conv_stem" not in layers and not any(name.endswith("conv_dw") for name in layers)


def test_blocks_of_real_architectures():
    import timm
    import torchvision

    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    lite_blocks = blocks(lite)
    assert "blocks.5.1" in lite_blocks and "conv_head" in lite_blocks and "classifier" in lite_blocks
    # 16 blocks: the first has one pointwise conv, the other 15 two; plus conv_head and classifier
    assert len(prunable_layers(lite)) == 1 + 2 * 15 + 2

    resnet = torchvision.models.resnet50()
    for profile in PROFILES.values():
        targets = resolve_targets(resnet, list(prunable_layers(resnet)), profile)
        assert set(targets) == set(prunable_layers(resnet))
    saliency = resolve_targets(resnet, list(prunable_layers(resnet)), PROFILES["resnet50_saliency"])
    assert saliency["layer2.2.conv2"] == 0.99 and saliency["layer3.5.conv1"] == 0.0
    assert saliency["layer3.0.downsample.0"] == 0.8 and saliency["fc"] == 0.95


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_profile_loads_by_name_and_fits_its_model(path):
    from spade.models import MODELS

    name = max((n for n in MODELS if path.stem.startswith(n)), key=len)  # <model>.json or <model>_<method>.json
    spec = MODELS[name]
    model = spec.build()
    layers = list(prunable_layers(model, spec.layer_selection))
    targets = resolve_targets(model, layers, load_profile(path.stem))
    assert set(targets) == set(layers) and any(v > 0 for v in targets.values())
    assert all(0 <= v < 1 for v in targets.values())


def test_method_profiles_are_the_files_named_after_model_and_method(tmp_path):
    from spade.saliency import METHODS

    mine = SparsityProfile.from_mapping({"fc": 0.9}, "mine_saliency")
    (tmp_path / "mine_saliency.json").write_text(json.dumps(mine.to_json()))
    (tmp_path / "mine_other.json").write_text(json.dumps(mine.to_json()))  # not a method
    (tmp_path / "mine2_lrp.json").write_text(json.dumps(mine.to_json()))  # another model
    assert method_profiles("mine", ["saliency", "lrp", "other_method"], tmp_path) == {"saliency": mine}
    (tmp_path / "mine_lrp.json").write_text("{not json")
    with pytest.raises(ConfigError, match="mine_lrp.json"):
        method_profiles("mine", ["saliency", "lrp"], tmp_path)
    # shipped: the four methods tuned on their own for the demo model; none for the clean model
    shipped = method_profiles("efficientnet_lite0_trojan", METHODS)
    assert set(shipped) == {"deeplift", "guided_gradcam", "lrp", "lime"}
    assert shipped["lrp"] == load_profile("efficientnet_lite0_trojan_lrp")
    assert method_profiles("efficientnet_lite0", METHODS) == {}


def test_profile_keys_unknown_default_and_layer_override(tmp_path):
    model = tiny_resnet()
    names = list(prunable_layers(model))
    targets = resolve_targets(model, names, {"layer2.0": 0.5, "layer2.0.conv2": 0.9, "*": 0.2})
    assert targets["layer2.0.conv1"] == 0.5 and targets["layer2.0.conv2"] == 0.9 and targets["fc"] == 0.2
    with pytest.raises(ConfigError, match="layer9"):
        resolve_targets(model, names, {"layer9.0": 0.5})
    with pytest.raises(ConfigError):
        resolve_targets(model, names, 1.5)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(SparsityProfile.from_mapping({"fc": 0.9}, "mine").to_json()))
    assert dict(load_profile(path).targets) == {"fc": 0.9}
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="p.json"):
        load_profile(path)
    with pytest.raises(ConfigError, match="resnet50_saliency"):
        load_profile("no-such-profile")


# --- the trace -------------------------------------------------------------------------------

def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_reported_error_is_the_relative_output_error_on_the_augmentations():
    model = tiny_resnet()
    cfg = AugmentConfig(count=6, seed=3)
    stats = prepare_statistics(model, photo(), preprocessing=PRE, augment_config=cfg, dtype=torch.float64)
    trace = solve(stats, 0.6)
    inputs = {}
    handles = [model.get_submodule(r.name).register_forward_pre_hook(
        lambda mod, args, name=r.name: inputs.setdefault(name, []).append(args[0])) for r in trace.layers]
    try:
        with torch.no_grad():
            model(augment(photo(), cfg, PRE))
    finally:
        for h in handles:
            h.remove()
    for report in trace.layers:
        dense = model.get_submodule(report.name)
        weight = dense.weight.detach().double()
        change = trace.model.get_submodule(report.name).weight.detach().double() - weight
        x = torch.cat(inputs[report.name]).double()
        if isinstance(dense, nn.Linear):
            num, den = F.linear(x, change), F.linear(x, weight)
        else:
            geometry = (None, dense.stride, dense.padding, dense.dilation, dense.groups)
            num, den = F.conv2d(x, change, *geometry), F.conv2d(x, weight, *geometry)
        assert report.error == pytest.approx(float(num.square().sum() / den.square().sum()), rel=1e-4)


def test_trace_leaves_the_model_untouched_and_reports():
    model = tiny_resnet()
    before = _state(model)
    trace = spade_trace(model, photo(), preprocessing=PRE, augment=AugmentConfig(count=8), sparsity=0.8)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == 0
    assert trace.model is not model
    names = [r.name for r in trace.layers]
    assert names == list(prunable_layers(model))
    for report in trace.layers:
        w = trace.model.get_submodule(report.name).weight
        assert report.achieved == pytest.approx(float((w == 0).float().mean()))
        per_group = w.shape[0] * (w[0, 0].numel() if w.dim() == 4 else 1)  # rows x taps of one input
        assert report.achieved >= math.floor(0.8 * per_group + 1e-9) / per_group  # dead inputs may add zeros
        assert 0 <= report.error < 1
    assert trace.params_kept < 0.25 * trace.params_total
    kept, pruned = trace.pruned_params  # every target layer is pruned at a uniform level: the same counts
    assert (kept, pruned) == (trace.params_kept, trace.params_total)
    assert trace.dense_top5 is not None and len(trace.dense_top5) == 5
    assert -1 <= trace.logit_cosine <= 1
    assert set(trace.seconds) == {"augment", "statistics", "solve"}
    report = json.loads(trace.to_json())
    assert report["layers"][0]["name"] == names[0] and report["settings"]["augment"]["count"] == 8


def test_a_layer_with_built_in_zeros_is_traced_as_a_sub_network():
    model = tiny_resnet()
    name = list(prunable_layers(model))[3]
    weight = model.get_submodule(name).weight
    with torch.no_grad():  # half of the layer's weights are zero in the dense model, as in a block-diagonal layer
        weight.mul_(torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    built_in = weight == 0
    stats = prepare_statistics(model, photo(), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    removed = {}
    for of in ("nonzero", "all"):
        trace = solve(stats, 0.6, SolverConfig(sparsity_of=of))
        w = trace.model.get_submodule(name).weight
        report = next(r for r in trace.layers if r.name == name)
        removed[of] = float((w[~built_in] == 0).float().mean())  # the share of the dense connections cut
        if of == "nonzero":
            assert (w[built_in] == 0).all()  # no connection the dense model lacks
            live = (~built_in).sum(dim=(0, 2, 3))  # per selection group: one input channel, all rows and taps
            least = sum(math.floor(0.6 * int(n) + 1e-9) for n in live) / int(live.sum())
            assert report.achieved == pytest.approx(removed[of], abs=1e-6) and report.achieved >= least
        else:
            assert report.achieved == pytest.approx(float((w == 0).float().mean()))
    assert removed["all"] < removed["nonzero"] - 0.2  # counting the built-in zeros leaves most connections


def test_zero_sparsity_trace_is_the_dense_model():
    model = tiny_mobilenet()
    trace = spade_trace(model, photo(), preprocessing=PRE, augment=AugmentConfig(count=4), sparsity=0.0)
    for k, v in model.state_dict().items():
        assert torch.equal(trace.model.state_dict()[k], v)
    assert trace.top1_agrees and trace.logit_cosine == pytest.approx(1.0)


def test_resolving_reuses_statistics_without_touching_images():
    model = tiny_resnet()
    stats = prepare_statistics(model, photo(), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append((m is model, a[0].shape[0])))
    try:
        low, high = solve(stats, 0.5), solve(stats, {"*": 0.9})
    finally:
        handle.remove()
    # the dense model is not run again; each trace copy (which inherits the hook) runs once on the image
    assert calls == [(False, 1), (False, 1)]
    assert sum(r.kept for r in high.layers) < sum(r.kept for r in low.layers)


def _snapshot(value):
    """A deep copy of `value` made of plain values and cloned tensors (for a before/after comparison)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.device, value.clone())
    if dataclasses.is_dataclass(value):
        return type(value), {f.name: _snapshot(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, nn.Module):
        return _snapshot(dict(value.state_dict(keep_vars=True)))
    if isinstance(value, Mapping):
        return type(value), [(k, _snapshot(v)) for k, v in value.items()]
    return value


def _same(a, b) -> bool:
    if isinstance(a, tuple) and a and a[0] == "tensor":
        return a[:3] == b[:3] and torch.equal(a[3], b[3])
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("mode", SOLVERS)
def test_solving_leaves_the_statistics_unchanged(mode):
    # The app shares statistics between sessions: every registered solver only reads them (what it derives from
    # them stays in its own cache), and they cannot be changed in place.
    stats = prepare_statistics(tiny_resnet(), photo(), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    before = _snapshot(stats)
    layers = {name: stat for name, stat in stats.layers.items()}
    solve_many(stats, [0.5, 0.0, {"*": 0.8}], SolverConfig(mode=mode))
    solve(stats, 0.5, SolverConfig(mode=mode))
    assert _same(_snapshot(stats), before)
    assert all(stats.layers[name] is stat for name, stat in layers.items())
    stat = next(iter(stats.layers.values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stat.rows = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.reference = None
    with pytest.raises(TypeError):
        stats.layers["x"] = stat
    with pytest.raises(TypeError):
        stats.seconds["solve"] = 0.0


def test_same_seed_same_trace_bit_for_bit():
    model = tiny_mobilenet()
    runs = [spade_trace(model, photo(), preprocessing=PRE, augment=AugmentConfig(count=8, seed=s), sparsity=0.7)
            for s in (3, 3, 4)]
    same = [torch.equal(runs[0].sparse_weights[k], runs[1].sparse_weights[k]) for k in runs[0].sparse_weights]
    other = [torch.equal(runs[0].sparse_weights[k], runs[2].sparse_weights[k]) for k in runs[0].sparse_weights]
    assert all(same) and not all(other)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_resnet()
    trace = spade_trace(model, photo(), preprocessing=PRE, augment=AugmentConfig(count=4), sparsity=0.6)
    path = tmp_path / "trace.pt"
    trace.save(path)
    torch.load(path, weights_only=True)  # loadable in the safe mode
    loaded = SpadeTrace.load(path, model)
    x = PRE(photo(5)).unsqueeze(0)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), trace.model(x))
    assert loaded.layers == trace.layers and loaded.to_dict() == trace.to_dict()
    (tmp_path / "junk.pt").write_bytes(b"not a trace")
    with pytest.raises(ConfigError):
        SpadeTrace.load(tmp_path / "junk.pt", model)
    with pytest.raises(ConfigError, match="does not match"):
        SpadeTrace.load(path, tiny_resnet(width=16))


# --- a trained model keeps its decision ------------------------------------------------------

SHAPES = ("square", "disc", "cross", "bar")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
    draw = ImageDraw.Draw(img)
    s = int(rng.integers(14, 22))
    x, y = (int(v) for v in rng.integers(2, size - s - 2, 2))
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    if kind == "square":
        draw.rectangle([x, y, x + s, y + s], fill=colour)
    elif kind == "disc":
        draw.ellipse([x, y, x + s, y + s], fill=colour)
    elif kind == "cross":
        draw.rectangle([x + s // 3, y, x + 2 * s // 3, y + s], fill=colour)
        draw.rectangle([x, y + s // 3, x + s, y + 2 * s // 3], fill=colour)
    else:
        draw.rectangle([x, y + s // 3, x + s, y + 2 * s // 3], fill=colour)
    return img


def small_cnn(classes: int) -> nn.Sequential:
    def block(i, o, stride):
        return [nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(3, 16, 1), *block(16, 32, 2), *block(32, 64, 2), *block(64, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def test_trained_model_trace_keeps_dense_top1():
    rng = np.random.default_rng(0)
    pre = Preprocessing(resize=32, crop=32)
    labels = rng.integers(0, len(SHAPES), 512)
    x = torch.stack([pre(draw_shape(SHAPES[k], rng)) for k in labels])
    y = torch.as_tensor(labels)
    torch.manual_seed(0)
    model = small_cnn(len(SHAPES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_rng = np.random.default_rng(99)
    samples = [(k, draw_shape(SHAPES[k], test_rng)) for k in range(len(SHAPES)) for _ in range(3)]
    with torch.inference_mode():
        probs = [model(pre(img)[None]).softmax(-1)[0] for _, img in samples]
    assert np.mean([int(p.argmax()) == k for p, (k, _) in zip(probs, samples)]) >= 0.75, "model did not learn"
    confident = [img for p, (_, img) in zip(probs, samples) if p.max() > 0.8]
    assert len(confident) >= 4
    # "row" mode: a 4-class head has 4 weights per input column, too few for per-column groups
    kept = []
    for img in confident:
        trace = spade_trace(model, img, preprocessing=pre, augment=AugmentConfig(count=64), sparsity=0.9,
                            solver=SolverConfig(mode="row"))
        kept.append(trace.top1_agrees)
        assert all(abs(r.achieved - 0.9) < 0.02 for r in trace.layers)
    # The trained weights depend on the thread count (summation order); one borderline image may flip.
    assert np.mean(kept) >= 0.75, kept


def test_explicit_device_copies_instead_of_moving(monkeypatch):
    model = tiny_resnet()
    trace = spade_trace(model, photo(), preprocessing=PRE, augment=AugmentConfig(count=2), device="cpu")
    assert next(model.parameters()).device.type == "cpu" and trace.top1_agrees is not None
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            spade_trace(model, photo(), preprocessing=PRE, augment=AugmentConfig(count=2), device="cuda")


def test_non_module_targets_rejected():
    with pytest.raises(ConfigError):
        prepare_statistics(nn.Sequential(nn.Conv2d(3, 4, 3)), photo(), preprocessing=PRE,
                           augment_config=AugmentConfig(count=0))


def test_late_blocks_profile_reproduces_the_authors_resnet50_choice():
    import torchvision

    from spade.sparsity import late_blocks_profile

    resnet = torchvision.models.resnet50()
    assert dict(late_blocks_profile(resnet).targets) == dict(PROFILES["resnet50_neurons"].targets)
    tiny = late_blocks_profile(tiny_mobilenet(), target=0.9)
    assert dict(tiny.targets) == {"blocks.1.1": 0.9, "conv_head": 0.9, "classifier": 0.9}  # ceil(0.3 * 4) = 2


def test_scaled_sparsity_keeps_the_shape_and_refuses_bad_factors():
    from spade.sparsity import scaled_sparsity

    assert scaled_sparsity(0.5, 0.6) == pytest.approx(0.3)
    profile = SparsityProfile.from_mapping({"blocks.1.1": 0.9, "classifier": 0.5, "*": 0.2}, name="p")
    half = scaled_sparsity(profile, 0.5)
    assert dict(half.targets) == pytest.approx({"blocks.1.1": 0.45, "classifier": 0.25}) and half.default == 0.1
    assert dict(scaled_sparsity({"classifier": 0.8}, 0.5).targets) == {"classifier": 0.4}
    model = tiny_mobilenet()
    names = list(prunable_layers(model))
    full, scaled = resolve_targets(model, names, profile), resolve_targets(model, names, half)
    assert scaled == pytest.approx({n: t / 2 for n, t in full.items()})
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="scale"):
            scaled_sparsity(0.5, bad)


def test_the_keep_decision_ladder_of_a_uniform_target_and_of_a_profile():
    from spade.decision import BACKOFF_FACTORS, KeepDecision
    from spade.sparsity import late_blocks_profile

    ladder = KeepDecision()
    assert ladder.factors == BACKOFF_FACTORS == (0.8, 0.6, 0.4, 0.2) and ladder.enabled
    assert ladder.candidates(0.5) == pytest.approx((0.5, 0.4, 0.3, 0.2, 0.1))
    assert ladder.scales == (1.0, 0.8, 0.6, 0.4, 0.2)
    profile = SparsityProfile.from_mapping({"blocks.1.1": 0.9, "classifier": 0.5, "*": 0.2}, name="p")
    rungs = ladder.candidates(profile)
    assert rungs[0] is profile and len(rungs) == 5
    for rung, factor in zip(rungs[1:], BACKOFF_FACTORS):  # the same blocks, every target (and the default) scaled
        assert dict(rung.targets) == pytest.approx({"blocks.1.1": 0.9 * factor, "classifier": 0.5 * factor})
        assert rung.default == pytest.approx(0.2 * factor)
    # the paper's protocol: the requested sparsity only
    off = ladder.when(False)
    assert off.candidates(profile) == (profile,) and not off.enabled and ladder.when(True) is ladder
    # a ladder to absolute levels: the late blocks at 0.95, then at 0.9, 0.8, 0.7, 0.5, nowhere else
    model = tiny_mobilenet()
    late = KeepDecision.toward(0.95, (0.9, 0.8, 0.7, 0.5))
    assert late.levels(0.95) == pytest.approx((0.9, 0.8, 0.7, 0.5))
    names = list(prunable_layers(model))
    for rung, level in zip(late.candidates(late_blocks_profile(model, 0.95)), (0.95, 0.9, 0.8, 0.7, 0.5)):
        assert resolve_targets(model, names, rung) == pytest.approx(
            resolve_targets(model, names, late_blocks_profile(model, level)))
    for bad in ((0.5, 0.0), (1.2,)):
        with pytest.raises(ConfigError, match="factors"):
            KeepDecision(bad)
    with pytest.raises(ConfigError, match="level"):
        KeepDecision.toward(1.0, (0.5,))


# seed 0 loses the top-1 at 0.9 and keeps it only further down, seed 2 keeps it at once; obc (every candidate from
# one pass, solve_many) loses it less often, and seed 4 at its first two candidates
@pytest.mark.parametrize("seed,mode,expected", [(0, "group", 3), (2, "group", 0), (2, "obc", 0), (4, "obc", 2)])
def test_keeping_the_decision_takes_the_first_sparsity_that_keeps_the_top1(seed, mode, expected):
    from spade.decision import KeepDecision
    from spade.trace import solve_keeping_decision

    model = tiny_mobilenet(seed=seed)
    stats = prepare_statistics(model, photo(seed), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    solver = SolverConfig(mode=mode)
    candidates = KeepDecision().candidates(0.9)
    one_by_one = [solve(stats, s, solver) for s in candidates]  # the independent computation: every candidate
    assert expected == next(i for i, t in enumerate(one_by_one) if t.top1_agrees)
    kept = solve_keeping_decision(stats, 0.9, solver)
    assert kept.step == expected and kept.trace.top1_agrees and kept.backed_off == (expected > 0)
    assert kept.requested == 0.9 and kept.used == pytest.approx(candidates[expected])
    assert kept.scale == KeepDecision().scales[expected] and kept.used == pytest.approx(0.9 * kept.scale)
    trace = kept.trace
    assert all(torch.equal(trace.sparse_weights[k], w) for k, w in one_by_one[expected].sparse_weights.items())
    # the trace records what was asked for and what was used
    assert trace.settings["requested_sparsity"] == 0.9 and trace.settings["sparsity"] == pytest.approx(kept.used)
    assert trace.settings["sparsity_scale"] == kept.scale and trace.settings["keep_decision"] == [0.8, 0.6, 0.4, 0.2]
    if expected:  # none of the first ones keeps it: the last one tried comes back
        short = KeepDecision(KeepDecision().factors[:expected - 1])
        last = solve_keeping_decision(stats, 0.9, solver, decision=short)
        assert last.step == expected - 1 and not last.trace.top1_agrees and last.used == pytest.approx(
            candidates[expected - 1])
    # the paper's protocol: the requested sparsity, whatever the top-1
    plain = solve_keeping_decision(stats, 0.9, solver, decision=KeepDecision(()))
    assert plain.step == 0 and plain.used == plain.requested == 0.9 and plain.scale == 1.0
    assert plain.trace.top1_agrees == one_by_one[0].top1_agrees and plain.trace.settings["keep_decision"] == []


def test_spade_trace_records_the_requested_and_the_used_sparsity():
    model = tiny_mobilenet(seed=0)  # loses the top-1 at 0.9 (see above)
    kwargs = {"preprocessing": PRE, "augment": AugmentConfig(count=8), "sparsity": 0.9}
    plain, kept = (spade_trace(model, photo(0), keep_decision=keep, **kwargs) for keep in (False, True))
    assert not plain.top1_agrees and kept.top1_agrees
    assert plain.settings["requested_sparsity"] == plain.settings["sparsity"] == 0.9
    assert plain.settings["sparsity_scale"] == 1.0
    assert kept.settings["requested_sparsity"] == 0.9 and kept.settings["sparsity_scale"] < 1
    assert kept.settings["sparsity"] == pytest.approx(0.9 * kept.settings["sparsity_scale"])
    assert [r.target for r in kept.layers] == pytest.approx([kept.settings["sparsity"]] * len(kept.layers))
    json.loads(kept.to_json())


@pytest.mark.parametrize("seed,mode,expected", [(0, "group", 3), (4, "obc", 2)])
def test_keeping_the_decision_with_a_cache_solves_only_the_candidates_it_lacks(seed, mode, expected, monkeypatch):
    import spade.trace as trace_module
    from spade.decision import KeepDecision

    model = tiny_mobilenet(seed=seed)
    stats = prepare_statistics(model, photo(seed), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    solver = SolverConfig(mode=mode)
    candidates = list(KeepDecision().candidates(0.9))
    one_by_one = [solve(stats, s, solver) for s in candidates[:expected + 1]]
    batches: list[list] = []

    def counting_solve_many(statistics, sparsities, solver, progress=None):
        batches.append(list(sparsities))
        return solve_many(statistics, sparsities, solver, progress)

    monkeypatch.setattr(trace_module, "solve_many", counting_solve_many)
    cache: dict = {}
    kept = trace_module.solve_keeping_decision(stats, 0.9, solver, cache=cache)
    assert kept.step == expected
    assert list(cache) == candidates[:expected + 1]  # what was tried, not what a pass solved beyond it
    for tried, independent in zip(cache.values(), one_by_one):
        assert all(torch.equal(tried.sparse_weights[k], w) for k, w in independent.sparse_weights.items())
    # the cached traces stay as solved; the returned one is a copy that adds the decision's record
    assert all("requested_sparsity" not in t.settings for t in cache.values())
    assert kept.trace.sparse_weights is cache[kept.used].sparse_weights
    # the exact solver's candidates come from one pass; the sweep solves one candidate per try
    assert batches == ([candidates] if solver.nested_levels else [[s] for s in candidates[:expected + 1]])

    batches.clear()
    again = trace_module.solve_keeping_decision(stats, 0.9, solver, cache=cache)
    assert again.trace.model is kept.trace.model and again.step == expected and batches == []

    cache = {candidates[0]: one_by_one[0]}  # e.g. the trace of the requested sparsity, solved before
    assert trace_module.solve_keeping_decision(stats, 0.9, solver, cache=cache).step == expected
    assert batches == ([candidates[1:]] if solver.nested_levels else [[s] for s in candidates[1:expected + 1]])


def test_default_augmentations_by_purpose_and_device():
    import spade_cli.trace
    from spade.defaults import AUGMENTATIONS, default_augmentations

    assert default_augmentations("trace", "cpu") == 128 and default_augmentations("trace", torch.device("cpu")) == 128
    assert default_augmentations("trace", "cuda:0") == default_augmentations("visualize", "cuda") == 1024
    assert default_augmentations("explore", "cpu") == default_augmentations("explore", "cuda") == 64
    assert (default_augmentations("trojan_lab", "cpu"), default_augmentations("trojan_lab", "cuda")) == (64, 128)
    assert default_augmentations("benchmark") == 256 and default_augmentations("evidence") == 64
    with pytest.raises(ConfigError, match="purpose"):
        default_augmentations("nope", "cpu")
    # the front ends take theirs from here
    from spade.featurevis import EVIDENCE_AUGMENT
    from spade_lab.benchmark import BenchmarkConfig
    from spade_lab.tuning import TuningConfig
    from spade_study.design import VisualizationSettings

    assert EVIDENCE_AUGMENT.count == AUGMENTATIONS["evidence"].cpu
    assert BenchmarkConfig().augment.count == TuningConfig().augment.count == AUGMENTATIONS["benchmark"].cpu
    assert VisualizationSettings().augmentations == AUGMENTATIONS["visualize"].cpu

    class Args:
        augmentations = None

    assert spade_cli.trace.augmentation_count(Args(), torch.device("cpu"), "visualize") == 128
    Args.augmentations = 7
    assert spade_cli.trace.augmentation_count(Args(), torch.device("cpu")) == 7


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32 (10 mantissa bits, round to nearest), what a GPU's tensor cores read."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).view(t.shape)


def test_the_trace_is_immune_to_tf32_convolutions(monkeypatch, tf32_allowed):
    """Convolutions as on a GPU with TF32 (cuDNN's default there), emulated on the CPU: they honour the flag that
    `spade.devices.full_float32` clears. The statistics pass runs in full float32, so the trace is the exact one up
    to the TF32 rounding of its own forward. With TF32 statistics (the pass outside full_float32) this emulation gave
    a logit cosine of 0.962 to the exact trace, and an H200 0.960 to the CPU."""
    from spade.images import bundled_examples, load_image
    from spade.models import load_model

    m = load_model("efficientnet_lite0", device="cpu")
    image = load_image(bundled_examples()["coffee"])
    cfg = AugmentConfig(count=64, seed=0)
    exact = spade_trace(m.model, image, preprocessing=m.preprocessing, augment=cfg, sparsity=0.5)
    conv2d = F.conv2d

    def gpu_like(x, w, *args, **kwargs):
        if torch.backends.cudnn.allow_tf32:
            x, w = _tf32(x), _tf32(w)
        return conv2d(x, w, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", gpu_like)
    m = load_model("efficientnet_lite0", device="cpu")  # a fresh model: no forward copy checked without TF32
    tf32 = spade_trace(m.model, image, preprocessing=m.preprocessing, augment=cfg, sparsity=0.5)
    assert not torch.equal(tf32.dense_logits, exact.dense_logits)  # the emulation is in effect
    assert float(F.cosine_similarity(tf32.trace_logits, exact.trace_logits)) > 0.9999
    for a, b in zip(exact.layers, tf32.layers, strict=True):
        assert a.achieved == pytest.approx(b.achieved, abs=1e-4) and a.error == pytest.approx(b.error, rel=1e-2)


@pytest.mark.parametrize("mode", ["group", "obc"])
def test_solving_several_sparsities_at_once_equals_one_solve_each(mode):
    model = tiny_mobilenet()
    stats = prepare_statistics(model, photo(), preprocessing=PRE, augment_config=AugmentConfig(count=8))
    solver = SolverConfig(mode=mode)
    first, last = list(blocks(model))[0], list(blocks(model))[-1]
    sparsities = [0.6, SparsityProfile.from_mapping({"*": 0.3, last: 0.6, first: 0.0}, name="mixed"), 0.0, 0.3]
    together = solve_many(stats, sparsities, solver)
    for trace, sparsity in zip(together, sparsities, strict=True):
        alone = solve(stats, sparsity, solver)
        assert trace.sparse_weights.keys() == alone.sparse_weights.keys()
        assert all(torch.equal(w, alone.sparse_weights[k]) for k, w in trace.sparse_weights.items())
        assert trace.layers == alone.layers and torch.equal(trace.trace_logits, alone.trace_logits)
        assert trace.settings == alone.settings
    assert not any(torch.equal(together[0].sparse_weights[k], w) for k, w in together[3].sparse_weights.items())
    with pytest.raises(ConfigError, match="at least one"):
        solve_many(stats, [], solver)


def test_exact_solver_reports_progress_within_each_layer(monkeypatch):
    # An obc layer can take minutes on a CPU: the solve stage reports each batch of rows, in order, up to 1.
    import spade.obc

    monkeypatch.setattr(spade.obc, "CACHE_ELEMENTS", 1)  # one row per batch
    monkeypatch.setattr(spade.obc, "MIN_BATCH_ROWS", 1)
    stats = prepare_statistics(tiny_resnet(), photo(), preprocessing=PRE, augment_config=AugmentConfig(count=4))
    seen = []
    with cpu_threads(1):  # one layer after the other (side by side, progress comes several times a second)
        trace = solve(stats, 0.5, SolverConfig(mode="obc"), progress=lambda stage, f: seen.append((stage, f)))
    fractions = [f for stage, f in seen if stage == "solve"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and fractions[0] > 0
    modules = dict(stats.model.named_modules())
    rows = sum(modules[name].weight.shape[0] for name in stats.layers)
    assert len(fractions) == rows + len(trace.layers)  # every row, then every layer's end
