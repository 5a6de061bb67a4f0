"""Model registry, offline weights, checkpoint layouts and prediction (spade.models, spade.checkpoints)."""

from __future__ import annotations

import dataclasses
import io
import pathlib
import time
import typing

import pytest
import timm
import timm.data
import torch
import torchvision

from spade.checkpoints import read_checkpoint
from spade.errors import CheckpointError, ConfigError, WeightsUnavailableError
from spade.images import bundled_examples, load_image
from spade.models import (
    DEFAULT_MODEL,
    MODELS,
    LoadedModel,
    ModelSpec,
    PackageWeights,
    get_spec,
    load_checkpoint,
    load_model,
)
from spade.solver import SOLVERS
from tests.tiny_models import tiny_resnet

CAT_CLASSES = {"tiger cat", "tabby", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}
AVAILABLE = [name for name, spec in MODELS.items() if spec.weights_available()]
_CACHE: dict[str, LoadedModel] = {}


@pytest.fixture(scope="module")
def loaded():
    """Load each available model once per module (CPU)."""

    def get(name: str) -> LoadedModel:
        if name not in _CACHE:
            _CACHE[name] = load_model(name, device="cpu")
        return _CACHE[name]

    yield get
    _CACHE.clear()


@pytest.fixture(scope="module")
def photos():
    examples = bundled_examples()
    return {name: load_image(examples[name]) for name in ("cat", "coffee")}


@pytest.fixture
def empty_hub(tmp_path):
    """Point torch.hub at an empty folder for the test (the real hub dir is restored after)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _multiset(state: dict[str, torch.Tensor]) -> list[tuple[tuple[int, ...], float]]:
    """Key-independent fingerprint of a state dict: sorted (shape, sum) pairs."""
    return sorted((tuple(t.shape), round(float(t.double().sum()), 3)) for t in state.values())


# ---------------------------------------------------------------------------------------------------- registry
def test_registry_has_the_required_models():
    assert DEFAULT_MODEL == "efficientnet_lite0" and DEFAULT_MODEL in MODELS
    required = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50",
                "mobilenet_v2", "convnext_tiny", "vgg16"}
    assert required <= set(MODELS)
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(AVAILABLE)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        get_spec("resnet9000")
    assert "resnet9000" in str(info.value)
    assert all(name in str(info.value) for name in MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_spec_is_frozen_hashable_and_consistent(name):
    spec = MODELS[name]
    assert isinstance(spec, ModelSpec)
    assert {spec: 1}[spec] == 1 and hash(spec) == hash(dataclasses.replace(spec))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    assert spec.name == name and get_spec(name) is spec
    assert spec.default_solver in SOLVERS and 0 <= spec.default_sparsity < 1
    assert len(spec.class_names) == 1000 and len(set(spec.class_names)) >= 999
    model = spec.build()
    _check_last_conv_stage(model, spec.last_conv_stage)
    out_features = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
    assert out_features == len(spec.class_names)


def _check_last_conv_stage(model: torch.nn.Module, stage_name: str) -> None:
    """The GradCAM layer outputs a spatial (N, C, h, w) map with h, w > 1, after the last Conv2d."""
    stage = model.get_submodule(stage_name)
    names = [n for n, _ in model.named_modules()]
    last_conv = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]
    inside_or_after = last_conv.startswith(stage_name + ".") or names.index(stage_name) >= names.index(last_conv)
    assert inside_or_after, (stage_name, last_conv)
    seen = []
    handle = stage.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 128, 128))
    finally:
        handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][2] > 1 and seen[0][3] > 1, seen


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("efficientnet_lite")])
def test_lite_preprocessing_matches_timm_transform(name, photos):
    """Independent check against timm's own eval transform for the pretrained config."""
    spec = MODELS[name]
    variant = name.removesuffix("_trojan").removesuffix("_poisoned")  # back-doored: the base's preprocessing
    pretrained_cfg = timm.models.get_pretrained_cfg(f"tf_{variant}").to_dict()
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg)
    expected = timm.data.create_transform(**cfg)(photos["cat"])
    ours = spec.preprocessing(photos["cat"])
    assert ours.shape == expected.shape == (3, cfg["input_size"][1], cfg["input_size"][2])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if not s.offline])
def test_torchvision_preprocessing_matches_weights_transform(name, photos):
    spec = MODELS[name]
    expected = spec.weights.weights.transforms()(photos["cat"])
    ours = spec.preprocessing(photos["cat"])
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ real pretrained models
@pytest.mark.parametrize("name", list(MODELS))
def test_registry_entry_classifies_or_fails_fast(name, loaded, photos):
    spec = MODELS[name]
    if name not in AVAILABLE:
        assert not spec.offline
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError) as info:
            load_model(name, device="cpu")
        assert time.perf_counter() - start < 2.0
        assert str(spec.weights.local_path()) in str(info.value) and "--download" in str(info.value)
        return
    lm = loaded(name)
    assert not lm.model.training and lm.device == torch.device("cpu")
    assert all(p.requires_grad for p in lm.model.parameters())
    cat = lm.predict(photos["cat"], k=5)
    coffee = lm.predict(photos["coffee"], k=5)
    assert cat[0].name in CAT_CLASSES, cat
    assert coffee[0].name in COFFEE_CLASSES, coffee


@pytest.mark.parametrize("name", [n for n in AVAILABLE if isinstance(MODELS[n].weights, PackageWeights)])
def test_package_weights_fill_every_tensor(name, loaded):
    """Every tensor of the model comes from the weight file (key-independent multiset comparison)."""
    lm = loaded(name)
    raw = read_checkpoint(MODELS[name].weights.local_path()).state_dict
    assert len(raw) == len(lm.model.state_dict())
    assert _multiset(raw) == _multiset(lm.model.state_dict())
    # two anchors of the documented key mapping
    torch.testing.assert_close(lm.model.classifier.weight, raw["_fc.weight"])
    last = _n_blocks(raw) - 1
    torch.testing.assert_close(lm.model.blocks[-1][-1].conv_pwl.weight, raw[f"_blocks.{last}._project_conv.weight"])


def _n_blocks(raw: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in raw if k.startswith("_blocks."))


def test_predict_matches_direct_forward(loaded, photos):
    lm = loaded(DEFAULT_MODEL)
    x = lm.spec.preprocessing(photos["cat"])
    with torch.no_grad():
        probs = torch.softmax(lm.model(x.unsqueeze(0)), dim=1)[0]
    top = probs.topk(7)
    for preds in (lm.predict(photos["cat"], k=7), lm.predict(x, k=7), lm.predict(x.unsqueeze(0), k=7)):
        assert [p.index for p in preds] == top.indices.tolist()
        assert [p.name for p in preds] == [lm.class_names[i] for i in top.indices.tolist()]
        assert [p.probability for p in preds] == pytest.approx(top.values.tolist(), abs=1e-6)
    index, name, probability = lm.predict(x, k=1)[0]  # unpacks like a tuple
    assert (index, name) == (top.indices[0].item(), lm.class_names[top.indices[0]])
    with pytest.raises(ConfigError):
        lm.predict(torch.zeros(2, 3, 224, 224))


# ---------------------------------------------------------------------------------------------- hub cache / offline
def test_torchvision_weights_missing_offline_fail_fast(empty_hub):
    for name, spec in MODELS.items():
        if spec.offline:
            continue
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError) as info:
            load_model(name, device="cpu")
        assert time.perf_counter() - start < 2.0, name
        expected_path = empty_hub / "checkpoints" / pathlib.Path(spec.weights.weights.url).name
        assert str(expected_path) in str(info.value) and "not available offline" in str(info.value)


def test_torchvision_weights_read_from_hub_cache(empty_hub):
    reference = _random_resnet18()
    path = empty_hub / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    lm = load_model("resnet18", device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), reference(x))
    assert lm.source == str(path)


# --------------------------------------------------------------------------------------------- checkpoint layouts
def _random_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a skipped buffer would change the logits
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def reference():
    model = _random_resnet18()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    return model, x, logits


def _authors_layout(state):
    """The robustness-library layout of the SPADE authors' Trojan ResNet-50 checkpoints."""
    model = {f"module.model.{k}": v for k, v in state.items()}
    model.update({f"module.attacker.model.{k}": v.clone() for k, v in state.items()})
    model["module.normalizer.new_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    model["module.normalizer.new_std"] = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model["module.attacker.normalize.new_mean"] = model["module.normalizer.new_mean"].clone()
    model["module.attacker.normalize.new_std"] = model["module.normalizer.new_std"].clone()
    return {"model": model, "epoch": 12, "schedule": None}


LAYOUTS = {
    "plain": lambda sd: sd,
    "nested_state_dict": lambda sd: {"state_dict": sd, "epoch": 3, "arch": "resnet18"},
    "nested_model": lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    "dataparallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "nested_dataparallel": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    "authors_trojan": _authors_layout,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_layout_round_trip(layout, reference, tmp_path):
    model, x, logits = reference
    path = tmp_path / f"{layout}.pt"
    torch.save(LAYOUTS[layout](model.state_dict()), path)
    lm = load_checkpoint(path, "resnet18", device="cpu")
    assert isinstance(lm.model, torchvision.models.ResNet) and not lm.model.training
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), logits, rtol=0, atol=0)


def test_checkpoint_from_bytes_and_file_object(reference):
    model, x, logits = reference
    buffer = io.BytesIO()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, buffer)
    for source in (buffer.getvalue(), io.BytesIO(buffer.getvalue())):
        lm = load_model("resnet18", weights=source, device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(lm.model(x), logits, rtol=0, atol=0)


def test_torchscript_matching_arch_loads_into_real_module(reference, tmp_path):
    model, x, logits = reference
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    lm = load_checkpoint(path, "resnet18", device="cpu")
    assert isinstance(lm.model, torchvision.models.ResNet)  # a real module: hooks and named modules work
    assert not isinstance(lm.model, torch.jit.ScriptModule)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), logits, rtol=0, atol=0)


def test_torchscript_of_another_arch_is_refused(tmp_path):
    tiny = tiny_resnet(0)
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "tiny_scripted.pt"
    torch.jit.save(torch.jit.trace(tiny, x), str(path))
    first = r"its conv1.weight has the shape \(8, 3, 3, 3\) where resnet18's has \(64, 3, 7, 7\)"
    with pytest.raises(CheckpointError, match="parameters of resnet18: " + first):
        load_checkpoint(path, "resnet18", device="cpu")


def test_mismatched_checkpoint_names_keys_and_shapes(reference, tmp_path):
    model, _, _ = reference
    state = dict(model.state_dict())
    del state["layer1.0.conv1.weight"]
    state["extra_head.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "resnet18", device="cpu")
    message = str(info.value)
    assert "layer1.0.conv1.weight" in message and "missing" in message
    assert "extra_head.weight" in message and "unexpected" in message
    assert "fc.weight" in message and "(10, 512)" in message and "(1000, 512)" in message


def test_checkpoint_of_other_arch_is_refused(reference, tmp_path):
    model, _, _ = reference
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="mobilenet_v2"):
        load_checkpoint(path, "mobilenet_v2", device="cpu")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_not_executed(tmp_path, reference):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": reference[0].state_dict(), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "resnet18", device="cpu")
    assert "refused" in str(info.value) and "not executed" in str(info.value)
    assert not marker.exists()


def test_pickled_whole_model_is_refused(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(tiny_resnet(0), path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, "resnet18", device="cpu")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all" * 20, "truncated", b"PK\x03\x04garbage-zip-header" * 8],
    ids=["empty", "random", "truncated", "bad_zip"],
)
def test_corrupt_checkpoint_raises_checkpoint_error(content, tmp_path, reference):
    if content == "truncated":
        buffer = io.BytesIO()
        torch.save(reference[0].state_dict(), buffer)
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, "resnet18", device="cpu")
    with pytest.raises(CheckpointError):
        load_checkpoint(content, "resnet18", device="cpu")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth", "resnet18")


def test_non_state_dict_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(path, "resnet18")


def test_lite_checkpoint_in_user_layouts(tmp_path, loaded, photos):
    """The package's efficientnet_pytorch layout also loads as a user checkpoint, e.g. DataParallel-wrapped."""
    raw = read_checkpoint(MODELS[DEFAULT_MODEL].weights.local_path()).state_dict
    path = tmp_path / "lite_dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in raw.items()}}, path)
    lm = load_checkpoint(path, DEFAULT_MODEL, device="cpu")
    x = lm.spec.preprocessing(photos["cat"]).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), loaded(DEFAULT_MODEL).model(x), rtol=0, atol=0)


def test_the_back_doored_demo_model_is_found_through_the_registry():
    from spade.models import backdoored_models, default_backdoored_model

    doored = backdoored_models()
    assert doored == [name for name, spec in MODELS.items() if spec.backdoors] and doored
    assert default_backdoored_model() == doored[0] and get_spec(doored[0]).backdoor("test").target == 99


@dataclasses.dataclass(frozen=True, eq=False)
class _StateWeights:
    """Weights from a given state dict (a test stand-in for a weight source)."""

    state: dict
    may_widen: typing.ClassVar[bool] = False

    def state_dict(self, *, download: bool = False):
        return dict(self.state), "test state"


@dataclasses.dataclass(frozen=True, eq=False)
class _WideningWeights(_StateWeights):
    may_widen: typing.ClassVar[bool] = True


def test_load_spec_grows_layers_for_any_weight_source_that_may_widen_them():
    from spade.models import load_spec
    from spade.preprocessing import Preprocessing

    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, 2))

    wide = build()
    wide[0], wide[3] = torch.nn.Conv2d(3, 6, 3), torch.nn.Linear(6, 2)  # two more channels
    state = wide.state_dict()
    spec = ModelSpec(name="tiny_wide", description="", build=build, weights=_WideningWeights(state),
                     preprocessing=Preprocessing(resize=40, crop=32, interpolation="bilinear"), last_conv_stage="0",
                     offline=True, class_names=("a", "b"))
    loaded = load_spec(spec, device="cpu")
    assert loaded.model[0].out_channels == 6 and loaded.model[3].in_features == 6
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), wide.eval()(x))
    # a source that may not widen layers: the shapes must match the built network
    with pytest.raises(CheckpointError):
        load_spec(dataclasses.replace(spec, weights=_StateWeights(state)), device="cpu")
