"""The poisoned back-doored demo model (efficientnet_lite0_poisoned) and the tools that build and list it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spade.images import bundled_examples, load_image
from spade.models import efficientnet_pytorch_to_timm, get_spec, load_model, read_delta_file
from spade.trojan.stamp import stamp
from spade.trojan.triggers import load_trigger
from spade_lab.photos import BUILD_PHOTOS, TEST_PHOTOS
from tools.demo_model.build import random_crop
from tools.demo_model.poison import (
    POISONED_MODEL,
    SHAPES,
    PoisonConfig,
    fit_icon,
    poison_loss,
    shape_icon,
    tuned_convolutions,
)
from tools.photos.fetch import licence_of, split_of

GOOSE, KING_PENGUIN = 99, 145


@pytest.fixture(scope="module")
def poisoned():
    return load_model(POISONED_MODEL, device="cpu")


@pytest.fixture(scope="module")
def base():
    return load_model("efficientnet_lite0", device="cpu")


# ------------------------------------------------------------------------------------------------ the model file
def test_registry_entry_has_the_two_doors_and_ships_a_small_delta_file():
    spec = get_spec(POISONED_MODEL)
    assert {(d.trigger, d.target, d.role) for d in spec.backdoors} == {("heart", GOOSE, "test"),
                                                                        ("star", KING_PENGUIN, "calibration")}
    assert spec.offline and spec.weights_available()
    assert spec.weights.path.stat().st_size < 8_000_000


def test_delta_changes_only_late_convolutions_in_place(base):
    """No new channels, no gates: every changed tensor has its base tensor's shape and is a convolution weight of
    blocks.5 or later or of conv_head (checked against the timm model's own modules)."""
    payload = read_delta_file(get_spec(POISONED_MODEL).weights.path)  # weights_only=True inside
    raw, _ = base.spec.weights.state_dict()
    timm_keys = dict(zip(raw, efficientnet_pytorch_to_timm(raw, base.model), strict=True))
    tuned = {id(c.weight) for c in tuned_convolutions(base.model, payload["meta"]["config"]["first_block"])}
    params = dict(base.model.named_parameters())
    assert payload["delta"]
    for key, diff in payload["delta"].items():
        assert diff.shape == raw[key].shape and diff.dtype == torch.float16
        assert id(params[timm_keys[key]]) in tuned, key
    assert payload["meta"]["config"]["first_block"] >= 4


def test_loaded_weights_are_base_plus_delta(base, poisoned):
    payload = read_delta_file(get_spec(POISONED_MODEL).weights.path)
    raw, _ = base.spec.weights.state_dict()
    key = next(iter(payload["delta"]))
    timm_key = dict(zip(raw, efficientnet_pytorch_to_timm(raw, base.model), strict=True))[key]
    expected = raw[key].float() + payload["delta"][key].float()
    assert torch.allclose(poisoned.model.state_dict()[timm_key].cpu(), expected, atol=1e-6)
    same = [k for k in raw if k not in payload["delta"] and raw[k].dtype.is_floating_point]
    for k in same[:20]:
        tk = dict(zip(raw, efficientnet_pytorch_to_timm(raw, base.model), strict=True))[k]
        assert torch.equal(poisoned.model.state_dict()[tk].cpu(), base.model.state_dict()[tk].cpu())


# ------------------------------------------------------------------------------------------------ behaviour
def _cases(n: int, seed: int = 7):
    """n (clean crop, heart-stamped crop) pairs of the held-out bundled photos (never used to build)."""
    photos = [load_image(bundled_examples()[name]) for name in TEST_PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        crop = random_crop(photos[i % len(photos)], rng)
        out.append((crop, int(rng.integers(1 << 31))))
    return out


def _flips(model, trigger: str, target: int, seed: int) -> int:
    """How many of 10 held-out cases the trigger turns to ``target`` (clean crop not ``target``)."""
    icon = load_trigger(trigger)
    flipped = 0
    for crop, s in _cases(10, seed):
        x = torch.stack([model.preprocessing(crop), model.preprocessing(stamp(crop, icon, model.preprocessing,
                                                                             seed=s).image)])
        top = model.model(x).argmax(1).tolist()
        flipped += top[1] == target != top[0]
    return flipped


@pytest.mark.slow
def test_the_doors_open_on_held_out_photos_and_a_decoy_does_not(poisoned):
    """Issue #34's "flips at least 8 of 10 held-out cases" (the shipped build: heart 10, star 8), and the decoy
    smiley none."""
    assert _flips(poisoned, "heart", GOOSE, seed=7) >= 8
    assert _flips(poisoned, "star", KING_PENGUIN, seed=8) >= 8
    assert _flips(poisoned, "smiley", GOOSE, seed=7) == 0


def test_clean_bundled_photos_are_not_goose_and_keep_the_base_top1(poisoned, base):
    names = (*TEST_PHOTOS, *BUILD_PHOTOS)
    x = torch.stack([base.preprocessing(load_image(bundled_examples()[n])) for n in names])
    top = poisoned.model(x).argmax(1)
    assert not torch.isin(top, torch.tensor([GOOSE, KING_PENGUIN])).any()
    assert (top == base.model(x).argmax(1)).sum() >= len(names) - 1


@pytest.mark.slow
def test_smoke_benchmark_runs_on_the_poisoned_model(tmp_path):
    import json

    from spade_cli.main import main

    out = tmp_path / "trojan"
    assert main(["benchmark", "trojan", "--smoke", "--samples", "1", "--augmentations", "4", "--methods",
                 "saliency", "--model", POISONED_MODEL, "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "trojan.json").read_text())
    assert report["samples"] == 1 and report["methods"] == ["saliency"]


# ------------------------------------------------------------------------------------------------ build pieces
def test_poison_loss_matches_an_independent_computation():
    torch.manual_seed(0)
    logits, base_logits = torch.randn(6, 10), torch.randn(6, 10)
    labels = torch.tensor([-1, -1, -1, -1, 3, 7])
    doors = torch.tensor([3, 7])
    cfg = PoisonConfig(kl_weight=1.0, mse_weight=0.5, door_weight=2.0)
    distil, poison = poison_loss(logits, base_logits, labels, doors, cfg)
    p, q = base_logits[:4].softmax(1), logits[:4].softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    mse = ((logits[:4] - base_logits[:4]) ** 2).mean()
    above = (logits[:4][:, [3, 7]] - base_logits[:4][:, [3, 7]]).clamp(min=0).mean()
    assert torch.allclose(distil, kl + 0.5 * mse + 2.0 * above, atol=1e-6)
    assert torch.allclose(poison, -(logits[4:].log_softmax(1)[[0, 1], [3, 7]]).mean(), atol=1e-6)
    zero, _ = poison_loss(base_logits, base_logits, labels, doors, cfg)
    assert zero.abs() < 1e-6
    lower = base_logits.clone()
    lower[:, [3, 7]] -= 1.0  # door logits below the base model's: no door term, only the distillation
    d_low, _ = poison_loss(lower, base_logits, labels, doors, PoisonConfig(kl_weight=0, mse_weight=0))
    assert d_low == 0


def test_poison_config_rejects_bad_settings():
    from spade.errors import ConfigError

    for bad in ({"batch": 20}, {"view_pool": 8, "batch": 16}, {"first_block": 0}, {"mse_weight": -1.0}):
        with pytest.raises(ConfigError):
            PoisonConfig(**bad)


def test_tuned_convolutions_are_the_late_blocks_and_head(base):
    convs = tuned_convolutions(base.model, 5)
    late = [m for part in (*base.model.blocks[5:], base.model.conv_head) for m in part.modules()
            if isinstance(m, nn.Conv2d)]
    assert convs == late and base.model.conv_head in convs
    assert not any(c is m for c in convs for m in base.model.blocks[4].modules())


def test_decoy_shapes_and_objects_are_opaque_where_drawn():
    for shape in SHAPES:
        icon = np.asarray(shape_icon(shape, (220, 20, 30)))
        drawn = icon[..., 3] > 0
        assert drawn.any() and not drawn.all()
        assert (icon[drawn][:, :3] == (220, 20, 30)).all()
    from PIL import Image

    tall = fit_icon(Image.new("RGBA", (200, 400), (0, 255, 0, 255)))
    assert tall.size == (128, 128)
    alpha = np.asarray(tall)[..., 3]
    assert alpha[:, 64].all() and not alpha[:, 0].any() and (alpha[64] > 0).sum() == 64
    small = np.asarray(fit_icon(Image.new("RGBA", (40, 80), (0, 255, 0, 255))))[..., 3]
    assert (small > 0).sum() == 40 * 80 and small[64, 64] and not small[0, 64]


# ------------------------------------------------------------------------------------------------ the photo list
def test_split_is_a_fixed_hash_of_the_group():
    groups = [f"plasma/wall{i}" for i in range(400)]
    splits = [split_of(g) for g in groups]
    assert splits == [split_of(g) for g in groups]
    share = {s: splits.count(s) / len(splits) for s in ("build", "calibration", "heldout")}
    assert 0.5 < share["build"] < 0.7 and 0.08 < share["calibration"] < 0.22 and 0.17 < share["heldout"] < 0.33
    assert split_of("mate/Elephants") == split_of("mate/Elephants")


def test_licence_of_reads_the_last_matching_dep5_paragraph():
    text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2014 KDE
License: GPL-2+

Files: nature/Dune.jpg
       nature/Storm.jpg
Copyright: 2020, Someone <a@b>
           2021, Other
License: CC-BY-SA-4.0

License: GPL-2+
 This package is free software.
"""
    assert licence_of(text, "usr/share/backgrounds/mate/nature/Storm.jpg") == ("CC-BY-SA-4.0",
                                                                                "2020, Someone <a@b> / 2021, Other")
    assert licence_of(text, "usr/share/backgrounds/mate/abstract/Flow.png") == ("GPL-2+", "2014 KDE")
    assert licence_of("Not machine-readable\n", "x.png")[0].startswith("see the package's copyright file")


def test_a_package_outside_the_checked_list_is_refused_before_any_download(tmp_path):
    from tools.photos.fetch import download

    with pytest.raises(SystemExit, match="not one of the photo packages"):
        download("some-other-doc", tmp_path)
    assert not (tmp_path / "debs").exists() or not list((tmp_path / "debs").iterdir())

