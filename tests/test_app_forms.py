"""The app's forms read raw widget values; pure functions turn them into settings or a clear error.

These run without a Streamlit session: every check a form makes is here, on plain values.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from spade.errors import ConfigError, SpadeError
from spade.featurevis.objectives import ChannelMean, ClassLogit, Neuron
from spade.sparsity import SparsityProfile, late_blocks_profile
from spade_app import loaders
from spade_app.neurons import CHANNEL, CLASS, neuron_objective
from spade_app.settings import FILE, LATE, PROFILE, UNIFORM, FormValues, build_settings
from spade_app.trojan import PROFILE as TROJAN_PROFILE
from spade_app.trojan import RANDOM, SLIDERS, UPLOAD, TrojanFormValues, build_trojan_settings
from tests.tiny_models import tiny_resnet

PROFILE_A = SparsityProfile.from_mapping({"layer1": 0.5}, name="a")


@pytest.fixture(scope="module")
def model():
    return tiny_resnet()


def png_bytes(alpha: int) -> bytes:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[2:6, 2:6] = (255, 0, 0, alpha)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- Explore
def test_explore_uniform_and_augmentations_are_taken_as_given(model):
    settings = build_settings(FormValues(uniform=0.73456, count=12, seed=7, hue=0.1, methods=("saliency",),
                                         keep_decision=False), model, {})
    assert settings.sparsity == 0.7346 and settings.augment.count == 12 and settings.augment.seed == 7
    assert settings.augment.hue == 0.1 and settings.methods == ("saliency",) and not settings.decision.enabled


def test_explore_late_blocks_is_the_models_late_blocks_profile(model):
    settings = build_settings(FormValues(mode=LATE, uniform=0.9), model, {})
    assert settings.sparsity == late_blocks_profile(model, target=0.9)


def test_explore_builtin_profile_by_key_and_missing_profile(model):
    assert build_settings(FormValues(mode=PROFILE, profile="a"), model, {"a": PROFILE_A}).sparsity is PROFILE_A
    with pytest.raises(ConfigError, match="No built-in profile fits"):
        build_settings(FormValues(mode=PROFILE, profile=None), model, {})
    with pytest.raises(ConfigError, match="Choose a built-in profile from the menu"):
        build_settings(FormValues(mode=PROFILE, profile=None), model, {"a": PROFILE_A})


def test_explore_profile_file(model):
    with pytest.raises(ConfigError, match="Choose a profile JSON file"):
        build_settings(FormValues(mode=FILE), model, {})
    with pytest.raises(ConfigError, match="mine.json is not valid JSON"):
        build_settings(FormValues(mode=FILE, upload=("mine.json", b"{nope")), model, {})
    with pytest.raises(ConfigError, match="map block names to numbers"):
        build_settings(FormValues(mode=FILE, upload=("mine.json", b'{"targets": {"layer1": "x"}}')), model, {})
    data = json.dumps({"targets": {"layer1": 0.25}, "default": 0.1}).encode()
    profile = build_settings(FormValues(mode=FILE, upload=("mine.json", data)), model, {}).sparsity
    assert profile.name == "mine" and dict(profile.targets) == {"layer1": 0.25} and profile.default == 0.1


@pytest.mark.parametrize("values, message", [
    (FormValues(count=0), "Augmentation count must be between 1 and"),
    (FormValues(solver="fastest"), "Unknown solver mode"),
    (FormValues(mode="everything"), "Unknown sparsity mode"),
])
def test_explore_bad_values_are_refused_with_a_sentence(model, values, message):
    with pytest.raises(ConfigError, match=message):
        build_settings(values, model, {})


# ----------------------------------------------------------------------------------------------- Trojan lab
def test_trojan_bundled_trigger_random_or_slider_placement():
    base = TrojanFormValues(trigger="star", methods=("saliency",), uniform=0.61234, count=9)
    settings = build_trojan_settings(base, "demo", {}, {})
    assert (settings.trigger, settings.position, settings.sparsity, settings.augment.count) == ("star", None, 0.6123, 9)
    placed = build_trojan_settings(TrojanFormValues(placement=SLIDERS, x=0.25, y=0.75, methods=("saliency",)),
                                   "demo", {}, {})
    assert placed.position == (0.25, 0.75)
    assert TrojanFormValues().placement == RANDOM
    # the run uses the solver it is given (the model's default), not SolverConfig()'s
    from spade.solver import SolverConfig

    row = build_trojan_settings(base, "demo", {}, {}, SolverConfig(mode="row"))
    assert row.run_settings.solver == SolverConfig(mode="row") != settings.run_settings.solver


def test_trojan_uploaded_trigger_is_checked_and_named_by_its_content():
    with pytest.raises(ConfigError, match="Choose a trigger PNG"):
        build_trojan_settings(TrojanFormValues(trigger=UPLOAD, methods=("saliency",)), "demo", {}, {})
    with pytest.raises(SpadeError, match="not a PNG"):
        build_trojan_settings(TrojanFormValues(trigger=UPLOAD, upload=("t.png", b"GIF89a"), methods=("saliency",)),
                              "demo", {}, {})
    with pytest.raises(SpadeError, match="fully transparent"):
        build_trojan_settings(TrojanFormValues(trigger=UPLOAD, upload=("t.png", png_bytes(0)), methods=("saliency",)),
                              "demo", {}, {})
    data = png_bytes(255)
    settings = build_trojan_settings(TrojanFormValues(trigger=UPLOAD, upload=("mine.png", data),
                                                      methods=("saliency",)), "demo", {}, {})
    assert settings.trigger == f"upload:{loaders.digest(data)}" and settings.trigger_label == "mine.png"


def test_trojan_profiles_and_methods():
    own = {"lrp": SparsityProfile.from_mapping({"layer1": 0.9}, name="lrp-own")}
    values = TrojanFormValues(mode=TROJAN_PROFILE, profile="a", methods=("saliency", "lrp"), own_profiles=True)
    settings = build_trojan_settings(values, "demo", {"a": PROFILE_A}, own)
    assert settings.sparsity is PROFILE_A and settings.method_sparsity == (("lrp", own["lrp"]),)
    off = build_trojan_settings(TrojanFormValues(mode=TROJAN_PROFILE, profile="a", methods=("lrp",),
                                                 own_profiles=False), "demo", {"a": PROFILE_A}, own)
    assert off.method_sparsity == ()
    # a profile asked for but none chosen (the menu offers one): a sentence; where none fits: the uniform value
    with pytest.raises(ConfigError, match="Choose a profile from the menu"):
        build_trojan_settings(TrojanFormValues(mode=TROJAN_PROFILE, methods=("lrp",)), "demo", {"a": PROFILE_A}, {})
    assert build_trojan_settings(TrojanFormValues(mode=TROJAN_PROFILE, uniform=0.3, methods=("lrp",)), "demo", {},
                                 {}).sparsity == 0.3
    assert build_trojan_settings(TrojanFormValues(mode=UNIFORM, methods=("lrp",)), "demo", {"a": PROFILE_A},
                                 {}).sparsity == 0.5
    with pytest.raises(ConfigError, match="at least one saliency method"):
        build_trojan_settings(TrojanFormValues(methods=()), "demo", {}, {})


# ----------------------------------------------------------------------------------------------- Neurons
def test_neuron_objectives_and_their_errors():
    layers = {"layer1.conv": 8}
    assert neuron_objective(CLASS, 3, None, 0, False, {}) == ClassLogit(3)
    assert neuron_objective(CHANNEL, 0, "layer1.conv", 7, False, layers) == ChannelMean("layer1.conv", 7)
    assert neuron_objective(CHANNEL, 0, "layer1.conv", 2, True, layers) == Neuron("layer1.conv", 2)
    with pytest.raises(ConfigError, match="pick a channel from 0 to 7"):
        neuron_objective(CHANNEL, 0, "layer1.conv", 8, False, layers)
    with pytest.raises(ConfigError, match="no convolution layer"):
        neuron_objective(CHANNEL, 0, None, 0, False, {})
