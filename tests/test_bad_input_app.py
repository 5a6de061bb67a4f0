"""Issue #38's bad-input corpus in the app (AppTest): every bad upload shows the library's own sentence in an
``st.error``, raises nothing (``at.exception`` empty), and the page keeps working afterwards (the earlier good
prediction or trace comes back, or the form runs again). Odd but valid images (RGBA, grey, 16-bit, palette) are
accepted and classified as the library classifies them.

All of it runs on a tiny model (56x56 input, 5 classes) so the file stays fast; the TorchScript checks start one
child process each (a few seconds)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from torch import nn

import spade.torchscript
from spade.errors import CheckpointTimeoutError, SpadeError
from spade.images import bundled_examples, load_image
from spade.models import MODELS, ModelSpec, load_checkpoint, load_model
from spade.preprocessing import Preprocessing
from spade.sparsity import parse_profile
from spade.trojan import load_trigger, read_trigger
from spade_app import compute, loaders, settings, trojan
from spade_app.sidebar import CHECKPOINT, UPLOAD
from tests.app_testing import FileWeights
from tests.test_app import TINY_CLASSES, _app, _prediction_text
from tests.test_bad_input import _png_header_only
from tests.tiny_models import tiny_mobilenet, tiny_resnet

pytestmark = [pytest.mark.usefixtures("app_navigation"), pytest.mark.usefixtures("one_thread")]
TINY = "tiny_bad_input_app"
LOOP_SECONDS = 2.0  # the forward time limit while these tests run (the endless loop is stopped after it)


# ---------------------------------------------------------------------------------------------------- inputs
def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _tiff(values: np.ndarray) -> bytes:
    return _png(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


def _ramp(mode_max: int, size: int = 48) -> np.ndarray:
    return (np.linspace(0, mode_max, size * size).reshape(size, size)).round()


def _state_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _script_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module.eval()), buffer)
    return buffer.getvalue()


class _Wrapped(nn.Module):
    """A scripted wrapper around the architecture (its keys get the `model.` prefix the loader strips)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class _TupleOut(_Wrapped):
    def forward(self, x):
        logits = self.model(x)
        return logits, logits.softmax(1)


class _DictOut(_Wrapped):
    def forward(self, x) -> dict[str, torch.Tensor]:
        return {"logits": self.model(x)}


class _EndlessLoop(_Wrapped):
    def forward(self, x):
        while bool(x.sum() > -1e30):
            x = x + 1.0
        return self.model(x)


class _OwnNormalization(_Wrapped):
    def forward(self, x):
        return self.model((x - 0.5) / 0.25)


class _Pickled:
    """A pickled object beside the weights: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("this code must not run",))


def _build() -> nn.Module:
    return tiny_resnet(5)


def _with(state: dict, key: str, value: float) -> dict:
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[0] = value
    return state


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> ModelSpec:
    """The tiny model, registered for the whole module (with the short TorchScript forward limit)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(_build().state_dict(), path)
    spec = ModelSpec(name=TINY, description="tiny test model (random weights)", build=_build,
                     weights=FileWeights(path), preprocessing=Preprocessing(resize=64, crop=56),
                     last_conv_stage="layer2", offline=True, class_names=TINY_CLASSES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODELS, TINY, spec)
        patch.setattr(spade.torchscript, "FORWARD_SECONDS", LOOP_SECONDS)
        yield spec


@pytest.fixture
def at(spec) -> AppTest:
    """The app on the tiny model, cat photo, CPU; its first page (Explore) shows a prediction."""
    compute.store().clear()
    app = _app()
    app.session_state["model_name"] = TINY
    app.run()
    assert not app.exception, app.exception
    assert "### Prediction:" in _prediction_text(app)
    return app


def _refusal(make_error) -> str:
    """The library's own message for a bad input (what the app must show, word for word)."""
    with pytest.raises(SpadeError) as info:
        make_error()
    return str(info.value)


@pytest.fixture(scope="module")
def checkpoint_refusal(spec):
    """case -> the library's refusal of BAD_CHECKPOINTS[case] (uploaded as <case>.pt) for the tiny architecture
    (each computed once: a TorchScript check starts a process)."""
    found: dict[str, str] = {}

    def refusal(case: str) -> str:
        if case not in found:
            data = BAD_CHECKPOINTS[case]()
            found[case] = _refusal(lambda: load_checkpoint(data, TINY, device="cpu", label=f"{case}.pt"))
        return found[case]

    return refusal


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _run_spade(at: AppTest) -> AppTest:
    """Run the default-ish trace on the Explore page: 8 views, saliency only."""
    at.number_input(key="ex_count").set_value(8)
    at.multiselect(key="ex_methods").set_value(["saliency"])
    next(b for b in at.button if b.label == "Run SPADE").click().run()
    assert not at.exception, at.exception
    return at


def _trace_shown(at: AppTest) -> bool:
    return any("Top-1" in m.value for m in [*at.success, *at.error, *at.warning, *at.info])


# ------------------------------------------------------------------------------------------- image uploads
BAD_IMAGES = {
    "corrupt_png": lambda: b"\x89PNG\r\n\x1a\n" + b"\x00 truncated" * 20,
    "text_file": lambda: b"just some text, not an image\n" * 10,
    "decompression_bomb": lambda: _png_header_only(10000, 6000),
    "constant_colour": lambda: _png(Image.new("RGB", (64, 64), (10, 200, 30))),
    "all_nan_tiff": lambda: _tiff(np.full((48, 48), np.nan)),
    "inf_tiff": lambda: _tiff(np.where(np.eye(48) > 0, np.inf, 0.5)),
    "two_pixels": lambda: _png(Image.new("RGB", (2, 1), (0, 0, 0))),
    "fully_transparent": lambda: _png(Image.new("RGBA", (40, 40), (0, 0, 0, 0))),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_upload_is_refused_and_the_earlier_trace_comes_back(case, at):
    data = BAD_IMAGES[case]()
    message = _refusal(lambda: load_image(data))
    _run_spade(at)
    assert _trace_shown(at)
    before = _prediction_text(at)
    at.sidebar.radio(key="image_source").set_value(UPLOAD).run()
    at.sidebar.file_uploader(key="image_upload").upload(f"{case}.png", data, "image/png").run()
    assert not at.exception, at.exception
    assert message in _errors(at)
    assert not [m for m in at.markdown if m.value.startswith("### Prediction:")]
    at.sidebar.radio(key="image_source").set_value("Example photo").run()  # nothing was lost
    assert not at.exception and not at.error, _errors(at)
    assert _prediction_text(at) == before and _trace_shown(at)


ODD_IMAGES = {
    "rgba": lambda: _png(Image.fromarray(np.dstack([np.asarray(load_image(bundled_examples()["cat"])
                                                               .resize((64, 48))),
                                                    np.full((48, 64), 200, np.uint8)]), "RGBA")),
    "grayscale": lambda: _png(Image.fromarray(_ramp(255).astype(np.uint8), "L")),
    "16_bit": lambda: _png(Image.fromarray(_ramp(65535).astype(np.uint16))),
    "palette_gif": lambda: _png(load_image(bundled_examples()["cat"]).resize((64, 48)).convert("P"), "GIF"),
}


@pytest.mark.parametrize("case", sorted(ODD_IMAGES))
def test_rgba_grey_16_bit_and_palette_images_are_accepted_and_classified_as_the_library_does(case, at, spec):
    data = ODD_IMAGES[case]()
    image = load_image(data)
    assert image.mode == "RGB"
    expected = load_model(TINY, device="cpu").predict(image, k=1)[0]
    at.sidebar.radio(key="image_source").set_value(UPLOAD).run()
    at.sidebar.file_uploader(key="image_upload").upload(f"{case}.png", data, "image/png").run()
    assert not at.exception and not at.error, _errors(at)
    assert f"**{expected.name}** ({expected.probability:.1%})" in _prediction_text(at)


# --------------------------------------------------------------------------------------- checkpoint uploads
def _good_state() -> dict:
    return _build().state_dict()


BAD_CHECKPOINTS = {
    "empty_file": lambda: b"",
    "corrupt_bytes": lambda: b"PK\x03\x04 definitely not a checkpoint" * 4,
    "truncated": lambda: _state_bytes(_good_state())[:3000],
    "pickled_code": lambda: _state_bytes({"state_dict": _good_state(), "extra": _Pickled()}),
    "nan_weight": lambda: _state_bytes(_with(_good_state(), "layer1.0.conv2.weight", float("nan"))),
    "inf_buffer": lambda: _state_bytes(_with(_good_state(), "bn1.running_var", float("inf"))),
    "other_architecture": lambda: _state_bytes(tiny_mobilenet(5).state_dict()),
    "other_class_count": lambda: _state_bytes(tiny_resnet(3, num_classes=7).state_dict()),
    "not_a_state_dict": lambda: _state_bytes([torch.zeros(3)]),
    "torchscript_other_architecture": lambda: _script_bytes(tiny_mobilenet(5)),
    "torchscript_tuple_output": lambda: _script_bytes(_TupleOut(_build())),
    "torchscript_dict_output": lambda: _script_bytes(_DictOut(_build())),
    "torchscript_endless_loop": lambda: _script_bytes(_EndlessLoop(_build())),
    "torchscript_own_normalization": lambda: _script_bytes(_OwnNormalization(_build())),
    "torchscript_nan_weight": lambda: _script_bytes(_nan_model()),
}


def _nan_model() -> nn.Module:
    model = _build()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    return model


def _choose_checkpoint(at: AppTest) -> None:
    at.sidebar.selectbox(key="model_name").set_value(CHECKPOINT).run()
    at.sidebar.selectbox(key="checkpoint_arch").set_value(TINY).run()
    assert not at.exception, at.exception


# the kinds the app is checked with (all of BAD_CHECKPOINTS go through the library test below)
APP_CHECKPOINTS = sorted(set(BAD_CHECKPOINTS) - {"torchscript_dict_output", "torchscript_own_normalization"})


@pytest.mark.parametrize("case", APP_CHECKPOINTS)
def test_bad_checkpoint_upload_is_refused_and_the_registry_model_still_works(case, at, checkpoint_refusal):
    data = BAD_CHECKPOINTS[case]()
    message = checkpoint_refusal(case)
    _run_spade(at)
    before = _prediction_text(at)
    _choose_checkpoint(at)
    at.sidebar.file_uploader(key="checkpoint_upload").upload(f"{case}.pt", data).run()
    assert not at.exception, at.exception
    shown = _errors(at)
    assert shown == [message], shown
    assert not [m for m in at.markdown if m.value.startswith("### Prediction:")]
    at.sidebar.selectbox(key="model_name").set_value(TINY).run()  # nothing was lost
    assert not at.exception and not at.error, _errors(at)
    assert _prediction_text(at) == before and _trace_shown(at)


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused_by_the_library_with_what_is_wrong(case, checkpoint_refusal):
    """The sentences themselves (computed by the library, shown as is by the app): one sentence each."""
    words = {
        "empty_file": ["is empty"],
        "corrupt_bytes": ["could not be read", "corrupt"],
        "truncated": ["could not be read", "truncated"],
        "pickled_code": ["refused for safety and not executed"],
        "nan_weight": ["non-finite", "layer1.0.conv2.weight"],
        "inf_buffer": ["non-finite", "bn1.running_var"],
        "other_architecture": ["does not fit the architecture", TINY, "conv1.weight"],
        "other_class_count": ["fc.weight", "(7, 8)", "(5, 8)"],
        "not_a_state_dict": ["holds a list, not a state dict"],
        "torchscript_other_architecture": [f"does not have the parameters of {TINY}", "conv1.weight"],
        "torchscript_tuple_output": ["returns a tuple of 2 values", "(2, 5)"],
        "torchscript_dict_output": ["returns a dict with the keys 'logits'"],
        "torchscript_endless_loop": ["did not finish one forward pass", f"{LOOP_SECONDS:g} s", "stopped"],
        "torchscript_own_normalization": ["computes other class scores"],
        "torchscript_nan_weight": ["non-finite", "fc.weight"],
    }[case]
    message = checkpoint_refusal(case)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    assert "Traceback" not in message and "\n" not in message and f"{case}.pt" in message


def test_a_refused_checkpoint_is_not_checked_again_on_every_rerun(at, monkeypatch):
    """A TorchScript check starts a process: while the refused file stays in the uploader, reruns reuse the
    refusal. A time-out is not remembered (a less busy moment may pass it)."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("label"))
        return load_checkpoint(*args, **kwargs)

    monkeypatch.setattr(loaders, "load_checkpoint", counting)
    data = b"PK\x03\x04 refused once, remembered" * 3
    _choose_checkpoint(at)
    at.sidebar.file_uploader(key="checkpoint_upload").upload("remembered.pt", data).run()
    message = _errors(at)
    assert len(message) == 1 and "remembered.pt could not be read" in message[0]
    at.run()
    at.sidebar.toggle(key="presentation").set_value(False).run()
    assert _errors(at) == message and calls == ["remembered.pt"] and not at.exception


def test_a_timed_out_checkpoint_is_checked_again(monkeypatch):
    tries = []

    def too_slow(key, arch, device, name, data):
        tries.append(name)
        raise CheckpointTimeoutError(f"The TorchScript model {name} did not finish in time.")

    monkeypatch.setattr(loaders, "_checkpoint_model", too_slow)
    for _ in range(2):
        with pytest.raises(CheckpointTimeoutError):
            loaders.checkpoint_model("digest-of-slow", TINY, "cpu", b"slow", "slow.pt")
    assert tries == ["slow.pt", "slow.pt"]


def test_good_torchscript_upload_is_used_as_the_architecture_built_in_code(at):
    weights = tiny_resnet(11)
    data = _script_bytes(weights)
    image = load_image(bundled_examples()["cat"])
    loaded = load_checkpoint(data, TINY, device="cpu")
    assert type(loaded.model) is type(_build()) and not isinstance(loaded.model, torch.jit.ScriptModule)
    expected = loaded.predict(image, k=1)[0]
    with torch.no_grad():
        direct = torch.softmax(weights.eval()(loaded.to_batch(image)), 1)[0]
    assert expected.probability == pytest.approx(float(direct.max()), abs=1e-5)
    _choose_checkpoint(at)
    at.sidebar.file_uploader(key="checkpoint_upload").upload("scripted.pt", data).run()
    assert not at.exception and not at.error, _errors(at)
    assert f"**{expected.name}** ({expected.probability:.1%})" in _prediction_text(at)


# --------------------------------------------------------------------------------------- profile JSON upload
BAD_PROFILES = {
    "not_json": b"{targets: 0.5",
    "deeply_nested": b"[" * 100_000 + b"]" * 100_000,
    "a_list": b"[0.5, 0.9]",
    "out_of_range": b'{"targets": {"layer1": 1.5}}',
    "not_a_number": b'{"targets": {"layer1": "high"}}',
    "a_boolean": b'{"targets": {"layer1": true}}',
    "sets_nothing": b"{}",
    "utf16": '{"targets": {"layer1": 0.5}}'.encode("utf-16"),
    "huge_integer": b'{"targets": {"layer1": ' + b"9" * 5000 + b"}}",
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_bad_profile_json_upload_is_refused_and_the_form_still_runs(case, at):
    data = BAD_PROFILES[case]
    message = _refusal(lambda: parse_profile(data, f"{case}.json"))
    at.radio(key="ex_sparsity_mode").set_value(settings.FILE).run()  # the uploader shows in this mode only
    at.file_uploader(key="ex_profile_file").upload(f"{case}.json", data, "application/json")
    _run_spade(at)
    assert _errors(at) == [message]
    assert not _trace_shown(at)
    at.radio(key="ex_sparsity_mode").set_value(settings.UNIFORM).run()  # the same form, another mode: it runs
    _run_spade(at)
    assert not at.error and _trace_shown(at), _errors(at)


def test_profile_naming_blocks_the_model_lacks_is_refused_when_run(at):
    data = b'{"targets": {"no_such_block": 0.5}}'
    at.radio(key="ex_sparsity_mode").set_value(settings.FILE).run()  # the uploader shows in this mode only
    at.file_uploader(key="ex_profile_file").upload("foreign.json", data, "application/json")
    _run_spade(at)
    assert any("no_such_block" in e and "blocks" in e for e in _errors(at)), _errors(at)
    assert not at.exception


# ------------------------------------------------------------------------------------- Trojan lab triggers
def _rgb_square() -> bytes:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:24, 8:24] = (255, 0, 0)
    return _png(Image.fromarray(rgb, "RGB"))


BAD_TRIGGERS = {
    "no_alpha": _rgb_square,
    "fully_transparent": lambda: _png(Image.new("RGBA", (32, 32), (255, 0, 0, 0))),
    "decompression_bomb": lambda: _png_header_only(20000, 20000),
    "jpeg_renamed": lambda: _png(Image.new("RGB", (32, 32), (255, 0, 0)), "JPEG"),
    "three_pixels_wide": lambda: _png(Image.new("RGBA", (3, 30), (255, 0, 0, 255))),
}


@pytest.mark.parametrize("case", sorted(BAD_TRIGGERS))
def test_bad_trigger_upload_is_refused_and_the_earlier_result_stays(case, at):
    data = BAD_TRIGGERS[case]()
    message = _refusal(lambda: read_trigger(data, f"The trigger file {case}.png"))
    at.switch_page("pages/trojan_lab.py").run()
    at.radio(key="tl_model").set_value(trojan.SIDEBAR).run()
    assert not at.exception, at.exception
    at.number_input(key="tl_count").set_value(8)
    at.multiselect(key="tl_methods").set_value(["saliency"])
    submit = lambda: next(b for b in at.button if b.label == "Stamp and run SPADE").click().run()  # noqa: E731
    submit()
    assert not at.exception and not at.error, _errors(at)

    def result_shown() -> bool:
        return any(c.startswith("What the model sees") for i in at.image for c in i.captions)

    assert result_shown()
    at.radio(key="tl_trigger").set_value(trojan.UPLOAD).run()  # the uploader shows for "upload" only
    at.file_uploader(key="tl_trigger_file").upload(f"{case}.png", data, "image/png")
    submit()
    assert not at.exception, at.exception
    assert _errors(at) == [message]
    assert result_shown()  # the heart's result is still on the page
    at.radio(key="tl_trigger").set_value("star").run()  # and the form runs again
    submit()
    assert not at.exception and not at.error, _errors(at)
    assert result_shown()


def test_bundled_triggers_pass_read_trigger():
    for name in ("heart", "star"):
        assert read_trigger(_png(load_trigger(name))).mode == "RGBA"


def test_pickled_code_did_not_run(capsys):
    """The refused pickle's payload (a print) never runs."""
    data = BAD_CHECKPOINTS["pickled_code"]()
    _refusal(lambda: load_checkpoint(data, "resnet18", device="cpu"))
    assert "must not run" not in capsys.readouterr().out
