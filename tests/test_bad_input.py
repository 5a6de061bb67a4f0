"""Issue #38, "no traceback on any bad input": a table of bad command-line inputs, each refused with exit code 2
and one sentence on stderr, the range errors before any model is loaded; and the library's own refusals (images
that are constant or not finite, augmentation counts and seeds out of range, weights that are NaN or infinite,
trigger files without transparency)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spade.augment import AugmentConfig
from spade.checkpoints import check_finite
from spade.defaults import MAX_AUGMENTATIONS, MAX_SEED
from spade.errors import CheckpointError, ConfigError, ImageLoadError
from spade.images import bundled_examples, load_image
from spade.models import MODELS, Backdoor, ModelSpec, PackageWeights, load_checkpoint
from spade.preprocessing import Preprocessing
from spade.sparsity import profile_from_json
from spade.trojan import load_trigger, read_trigger
from spade_cli.main import main
from tests.tiny_models import TinyResNet, tiny_mobilenet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "tiny_bad_input"


def _tiny() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(num_classes=5, width=8).eval()


def _spec() -> ModelSpec:
    return ModelSpec(name=TINY, description="tiny test model", build=_tiny, weights=PackageWeights("no-such-package"),
                     preprocessing=Preprocessing(resize=64, crop=56), last_conv_stage="layer2", offline=True,
                     class_names=tuple(f"class {i}" for i in range(5)), default_sparsity=0.5,
                     backdoors=(Backdoor("heart", 0, "test"), Backdoor("star", 0, "calibration")))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but that holds no pixels (a decompression bomb's stand-in)."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _save(image: Image.Image, path: Path, **kwargs) -> str:
    image.save(path, **kwargs)
    return str(path)


def _half_white(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


@pytest.fixture()
def files(tmp_path) -> dict[str, str]:
    """The inputs the table refers to by name."""
    cat = str(bundled_examples()["cat"])
    size = Image.open(cat).size
    (tmp_path / "bomb.png").write_bytes(_png_header_only(10000, 6000))
    (tmp_path / "text.png").write_text("not an image\n" * 10)
    (tmp_path / "high.json").write_text(json.dumps({"name": "high", "targets": {"layer1": 1.5}}))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "nothing.json").write_text("{}")
    (tmp_path / "flag.json").write_text(json.dumps({"targets": {"layer1": True}}))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (255, 0, 0, 255)
    return {
        "cat": cat,
        "out": str(tmp_path / "out"),
        "bomb": str(tmp_path / "bomb.png"),
        "text": str(tmp_path / "text.png"),
        "high_profile": str(tmp_path / "high.json"),
        "deep_profile": str(tmp_path / "deep.json"),
        "empty_profile": str(tmp_path / "nothing.json"),
        "bool_profile": str(tmp_path / "flag.json"),
        "white_mask": _save(Image.new("L", size, 255), tmp_path / "white.png"),
        "small_mask": _save(_half_white((10, 10)), tmp_path / "small.png"),
        "rgb_trigger": _save(Image.fromarray(rgba[..., :3], "RGB"), tmp_path / "rgb.png"),
        "clear_trigger": _save(Image.fromarray(np.zeros((32, 32, 4), np.uint8), "RGBA"), tmp_path / "clear.png"),
        "nan_tiff": _save(Image.fromarray(np.full((48, 48), np.nan, np.float32), "F"), tmp_path / "nan.tif"),
        "grey": _save(Image.new("RGB", (64, 64), (128, 128, 128)), tmp_path / "grey.png"),
    }


# (argv with {file} names of the `files` fixture, words the message must hold)
CLI_CASES = {
    "sparsity_above_1": ("trace {cat} --sparsity 1.5", ["--sparsity", "[0, 1)", "1.5"]),
    "sparsity_1": ("trace {cat} --sparsity 1", ["[0, 1)"]),
    "sparsity_negative": ("trace {cat} --sparsity -0.1", ["[0, 1)"]),
    "sparsity_nan": ("trace {cat} --sparsity nan", ["finite"]),
    "sparsity_text": ("trace {cat} --sparsity half", ["'half' is not a number"]),
    "augmentations_0": ("trace {cat} --augmentations 0", ["--augmentations", f"between 1 and {MAX_AUGMENTATIONS}"]),
    "augmentations_100000": ("trace {cat} --augmentations 100000", ["100000", str(MAX_AUGMENTATIONS)]),
    "seed_20_digits": ("trace {cat} --seed 99999999999999999999", ["--seed", "2**63 - 1"]),
    "seed_negative": ("trace {cat} --seed -1", ["--seed", "between 0"]),
    "profile_unknown": ("trace {cat} --profile no-such-profile", ["--profile", "no-such-profile"]),
    "profile_out_of_range": ("trace {cat} --profile {high_profile}", ["layer1", "[0, 1)", "1.5"]),
    "profile_deeply_nested": ("trace {cat} --profile {deep_profile}", ["deep.json", "nests too deeply"]),
    "profile_sets_nothing": ("trace {cat} --profile {empty_profile}", ["nothing.json", "prune nothing"]),
    "profile_boolean_target": ("trace {cat} --profile {bool_profile}", ["flag.json", "map block names to numbers"]),
    "damp_negative": ("trace {cat} --damp -1", ["--damp", ">= 0"]),
    "nan_tiff_image": ("trace {nan_tiff} --sparsity 0.5", ["nan.tif", "not finite"]),
    "constant_image": ("predict {grey}", ["grey.png", "same colour"]),
    "predict_k_0": ("predict {cat} -k 0", ["-k/--top", "at least 1"]),
    "explain_target_negative": ("explain {cat} --target -1", ["--target", "class index"]),
    "explain_opacity": ("explain {cat} --opacity 2", ["--opacity", "between 0 and 1"]),
    "explain_mask_bomb": ("explain {cat} --mask {bomb}", ["bomb.png", "megapixel"]),
    "explain_mask_not_an_image": ("explain {cat} --mask {text}", ["text.png", "not a supported image"]),
    "explain_mask_one_colour": ("explain {cat} --mask {white_mask}", ["white.png", "same colour"]),
    "explain_mask_size": ("explain {cat} --mask {small_mask}", ["10x10", "same size"]),
    "visualize_steps_0": ("visualize {cat} --steps 0", ["--steps", "at least 1"]),
    "visualize_views_0": ("visualize {cat} --views 0", ["--views", "between 1"]),
    "visualize_top_k_0": ("visualize {cat} --top-k 0", ["--top-k", "at least 1"]),
    "visualize_augmentations_huge": ("visualize {cat} --augmentations 100000", ["--augmentations", "100000"]),
    "trigger_without_alpha": ("benchmark trojan --trigger {rgb_trigger} --target 0", ["rgb.png", "no transparency"]),
    "trigger_bomb": ("benchmark trojan --trigger {bomb} --target 0", ["bomb.png", "too large for a trigger"]),
    "trigger_transparent": ("benchmark trojan --trigger {clear_trigger}", ["clear.png", "fully transparent"]),
    "trigger_not_png": ("benchmark trojan --trigger {text} --target 0", ["text.png", "not a PNG"]),
    "benchmark_target_negative": ("benchmark trojan --target -3", ["--target", "class index"]),
    "benchmark_samples_0": ("benchmark trojan --samples 0", ["--samples", "at least 1"]),
    "benchmark_batch_size_0": ("benchmark insertion --batch-size 0", ["--batch-size", "at least 1"]),
    "benchmark_sample_seed": ("benchmark trojan --sample-seed 9223372036854775808", ["--sample-seed", "2**63"]),
    "method_profile_range": ("benchmark trojan --method-profile saliency=1.5", ["--method-profile", "[0, 1)"]),
    "method_profile_method": ("benchmark trojan --method-profile nope=0.5", ["nope", "Unknown saliency method"]),
    "insertion_steps_1": ("benchmark insertion --steps 1", ["--steps", "at least 2"]),
    "tune_levels": ("benchmark tune --levels 0,1.2", ["--levels", "[0, 1)"]),
    "tune_min_agreement": ("benchmark tune --min-agreement 0", ["--min-agreement", "(0, 1]"]),
    "tune_augmentations_0": ("benchmark tune --augmentations 0", ["--augmentations", "between 1"]),
    "tune_start_profile": ("benchmark tune --start no-such-profile", ["--start", "no-such-profile"]),
}


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's refusals
        return exc.code


@pytest.fixture()
def no_model(monkeypatch):
    """Any model load fails the test: range errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr("spade.models.load_model", refuse)
    monkeypatch.setattr("spade.models.load_checkpoint", refuse)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_cli_input_is_refused_before_the_model_loads(case, files, no_model, capsys):
    template, words = CLI_CASES[case]
    argv = [part.format(**files) for part in template.split()]
    if argv[0] in ("explain", "visualize"):
        argv += ["--out", files["out"]]
    assert _run(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "error:" in err, err
    for word in words:
        assert word in err, f"{case}: {word!r} not in {err!r}"
    message = err.strip().splitlines()[-1]  # one line, one sentence
    assert message.count(". ") == 0, message
    assert not Path(files["out"]).exists()


# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_checkpoints(tmp_path, monkeypatch) -> dict[str, str]:
    """A registered tiny architecture and checkpoints of it: good, a NaN weight, an infinite BatchNorm buffer."""
    monkeypatch.setitem(MODELS, TINY, _spec())
    paths = {}
    for name, key, value in (("good", None, 0.0), ("nan", "layer1.0.conv2.weight", float("nan")),
                             ("inf", "bn1.running_var", float("inf"))):
        state = _tiny().state_dict()
        if key is not None:
            state[key].view(-1)[3] = value
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.save(state, paths[name])
    return paths


@pytest.mark.parametrize("command", ["predict", "trace"])
@pytest.mark.parametrize(("weights", "tensor"), [("nan", "layer1.0.conv2.weight"), ("inf", "bn1.running_var")])
def test_non_finite_weights_are_refused_when_loaded(command, weights, tensor, tiny_checkpoints, capsys):
    cat = str(bundled_examples()["cat"])
    code = _run([command, cat, "--checkpoint", tiny_checkpoints[weights], "--arch", TINY, "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert tensor in captured.err and "non-finite" in captured.err
    assert "nan" not in captured.out.lower()


class _TupleOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _tiny()

    def forward(self, x):
        return self.model(x), x


class _EndlessLoop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _tiny()

    def forward(self, x):
        while bool(x.sum() > -1e30):
            x = x + 1.0
        return self.model(x)


class _FlatInput(torch.nn.Module):
    """Wants flat 10-value rows, not images: its forward fails on the architecture's input."""

    def __init__(self):
        super().__init__()
        self.model = _tiny()

    def forward(self, x):
        return self.model.fc(x.view(-1, 10)[:, :8])


# TorchScript file -> (module to script, words of the refusal)
SCRIPTS = {
    "other_architecture": (lambda: tiny_mobilenet(0), ["does not have the parameters of", TINY, "conv1.weight"]),
    "tuple_output": (_TupleOut, ["returns a tuple of 2 values", "(2, 5)"]),
    "fails_on_images": (_FlatInput, ["fails on a batch of", "input shape (2, 3, 56, 56)", "RuntimeError"]),
    "endless_loop": (_EndlessLoop, ["did not finish one forward pass", "within 2 s", "stopped"]),
}


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_torchscript_that_does_not_fit_is_refused_by_predict(case, tiny_checkpoints, tmp_path, monkeypatch, capsys):
    make, words = SCRIPTS[case]
    monkeypatch.setattr("spade.torchscript.FORWARD_SECONDS", 2.0)
    path = tmp_path / f"{case}.pt"
    torch.jit.save(torch.jit.script(make().eval()), str(path))
    cat = str(bundled_examples()["cat"])
    code = _run(["predict", cat, "--checkpoint", str(path), "--arch", TINY, "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and not captured.out
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith("error: ") and message.count(". ") == 0, message
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


class _EndlessSetstate(torch.nn.Module):
    """A scripted module whose __setstate__ (run by torch.jit.load itself) never returns."""

    def __init__(self):
        super().__init__()
        self.model = _tiny()
        self.count = 0

    def forward(self, x):
        return self.model(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[int, bool]:
        return (self.count, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[int, bool]) -> None:
        count = state[0]
        while count > -1:
            count = count + 1
        self.count = count
        self.training = state[1]


def test_torchscript_that_loops_while_loading_is_stopped(tiny_checkpoints, tmp_path, monkeypatch):
    """Even torch.jit.load runs a file's code (__setstate__): it happens in the child, under LOAD_SECONDS."""
    monkeypatch.setattr("spade.torchscript.LOAD_SECONDS", 2.0)
    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(_EndlessSetstate()), str(path))
    with pytest.raises(CheckpointError, match="was not loaded within 2 s .* stopped and not used"):
        load_checkpoint(path, TINY, device="cpu")


def test_corrupt_torchscript_archive_is_refused(tiny_checkpoints, tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_tiny()), str(path))
    data = bytearray(path.read_bytes())
    start = data.find(b"code/")  # garble the stored code
    data[start + 200:start + 400] = b"\x00" * 200
    broken = tmp_path / "broken.pt"
    broken.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="broken.pt could not be"):
        load_checkpoint(broken, TINY, device="cpu")


def test_torchscript_of_the_architecture_is_accepted_by_predict(tiny_checkpoints, tmp_path, capsys):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_tiny()), str(path))
    cat = str(bundled_examples()["cat"])
    assert _run(["predict", cat, "--checkpoint", str(path), "--arch", TINY, "--device", "cpu", "-k", "1"]) == 0
    expected = load_checkpoint(tiny_checkpoints["good"], TINY, device="cpu").predict(load_image(cat), k=1)[0]
    assert f"{expected.name}" in capsys.readouterr().out


def test_explain_target_beyond_the_classes_is_refused_before_the_statistics(tiny_checkpoints, monkeypatch, tmp_path,
                                                                            capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the trace ran before --target was checked")

    monkeypatch.setattr("spade.trace.spade_trace", refuse)
    cat = str(bundled_examples()["cat"])
    code = _run(["explain", cat, "--checkpoint", tiny_checkpoints["good"], "--arch", TINY, "--device", "cpu",
                 "--target", "7", "--methods", "saliency", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "[0, 4]" in err and "7" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
def _tiff(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32), "F").save(buffer, "TIFF")
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _ramp() -> np.ndarray:
    return np.linspace(0.0, 1.0, 48 * 48).reshape(48, 48)


def _with(values: np.ndarray, where: tuple[int, int], value: float) -> np.ndarray:
    values = values.copy()
    values[where] = value
    return values


BAD_IMAGES = {
    "all_nan_tiff": (lambda: _tiff(np.full((48, 48), np.nan)), ["2304 of 2304", "not finite"]),
    "one_nan_tiff": (lambda: _tiff(_with(_ramp(), (3, 4), np.nan)), ["1 of 2304", "NaN"]),
    "inf_tiff": (lambda: _tiff(_with(_ramp(), (0, 0), np.inf)), ["not finite", "infinite"]),
    "constant_rgb": (lambda: _png(Image.new("RGB", (64, 64), (10, 200, 30))), ["same colour", "10, 200, 30"]),
    "constant_16_bit": (lambda: _png(Image.fromarray(np.full((40, 40), 30000, np.uint16))), ["same colour"]),
    "constant_float_tiff": (lambda: _tiff(np.full((48, 48), 0.5)), ["same colour"]),
    "fully_transparent": (lambda: _png(Image.new("RGBA", (40, 40), (0, 0, 0, 0))), ["same colour", "255, 255, 255"]),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_load_image_refuses_constant_and_non_finite_images(case):
    make, words = BAD_IMAGES[case]
    with pytest.raises(ImageLoadError) as info:
        load_image(make())
    for word in words:
        assert word in str(info.value), f"{case}: {word!r} not in {info.value}"


def test_load_image_keeps_accepting_normal_float_and_grey_images():
    assert load_image(_tiff(_ramp())).size == (48, 48)
    assert load_image(_png(Image.fromarray(np.arange(40 * 40, dtype=np.uint16).reshape(40, 40)))).mode == "RGB"


@pytest.mark.parametrize("kwargs", [dict(count=0), dict(count=MAX_AUGMENTATIONS + 1), dict(count=100_000),
                                    dict(seed=-1), dict(seed=MAX_SEED + 1), dict(seed=10**20)])
def test_augment_config_refuses_counts_and_seeds_out_of_range(kwargs):
    with pytest.raises(ConfigError, match="between"):
        AugmentConfig(**kwargs)


def test_augment_config_limits_are_inclusive():
    assert AugmentConfig(count=MAX_AUGMENTATIONS, seed=MAX_SEED).count == MAX_AUGMENTATIONS
    assert AugmentConfig(count=1, seed=0).seed == 0


def test_load_checkpoint_names_the_first_non_finite_tensor(tiny_checkpoints):
    with pytest.raises(CheckpointError, match=r"1 non-finite value\(s\) .* in layer1\.0\.conv2\.weight"):
        load_checkpoint(tiny_checkpoints["nan"], TINY, device="cpu")
    with pytest.raises(CheckpointError, match="bn1.running_var"):
        load_checkpoint(tiny_checkpoints["inf"], TINY, device="cpu")
    assert load_checkpoint(tiny_checkpoints["good"], TINY, device="cpu").spec.name == TINY
    check_finite({"steps": torch.tensor(3), "w": torch.ones(2)})  # integer buffers and finite weights pass


def test_read_trigger_wants_transparency():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:24, 8:24] = (255, 0, 0)
    with pytest.raises(ImageLoadError, match="no transparency"):
        read_trigger(_png(Image.fromarray(rgb, "RGB")))
    keyed = Image.fromarray(rgb, "RGB")
    keyed.info["transparency"] = (0, 0, 0)  # a colour-keyed PNG has transparency
    buffer = io.BytesIO()
    keyed.save(buffer, "PNG", transparency=(0, 0, 0))
    icon = read_trigger(buffer.getvalue())
    assert icon.mode == "RGBA" and np.asarray(icon)[0, 0, 3] == 0 and np.asarray(icon)[16, 16, 3] == 255
    assert np.array_equal(np.asarray(read_trigger(_png(load_trigger("heart")))), np.asarray(load_trigger("heart")))
    with pytest.raises(ImageLoadError, match="at least 4x4"):
        read_trigger(_png(Image.new("RGBA", (3, 30), (255, 0, 0, 255))))


def test_profile_targets_are_range_checked_when_read():
    with pytest.raises(ConfigError, match=r"layer1 in the profile p must be in \[0, 1\)"):
        profile_from_json({"name": "p", "targets": {"layer1": 1.5}})
    with pytest.raises(ConfigError, match="the default"):
        profile_from_json({"name": "p", "targets": {"layer1": 0.5}, "default": -0.2})
    assert profile_from_json({"name": "p", "targets": {"layer1": 0.5}, "default": 0.1}).default == 0.1
