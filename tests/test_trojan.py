"""Trigger icons, stamping with its mask, the weight-difference format and the shipped back-doored model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from spade.errors import CheckpointError, ConfigError
from spade.grow import grow_modules
from spade.images import bundled_examples, load_image
from spade.models import (
    DELTA_FORMAT,
    MODELS,
    DeltaWeights,
    get_spec,
    load_model,
    load_spec,
    read_delta_file,
    with_delta_file,
)
from spade.preprocessing import Preprocessing
from spade.trojan import TRIGGERS, load_trigger, stamp
from spade.trojan.stamp import shift_hue, visible_box
from spade_lab.photos import BUILD_PHOTOS, CALIBRATION_PHOTOS, TEST_PHOTOS, load_photos
from tools.demo_model.build import (
    BuildConfig,
    PooledBatches,
    ViewMaker,
    _view_batch,
    evaluate_backdoor,
    gate_loss,
    split_at_block,
    train_gate,
)
from tools.demo_model.gate import GateBranch, widened_state_dict

TROJAN = "efficientnet_lite0_trojan"
PRE = get_spec("efficientnet_lite0").preprocessing


@pytest.fixture(scope="module")
def cat():
    return load_image(bundled_examples()["cat"])


# --------------------------------------------------------------------------------------------------- triggers
@pytest.mark.parametrize("name", list(TRIGGERS))
def test_shipped_trigger_is_the_drawn_one(name):
    shipped = np.asarray(load_trigger(name), np.int16)
    drawn = np.asarray(TRIGGERS[name](), np.int16)
    assert shipped.shape == drawn.shape == (128, 128, 4)
    assert np.abs(shipped - drawn).mean() < 1.0
    alpha = shipped[..., 3]
    assert alpha[0, 0] == 0 and alpha[64, 64] == 255  # transparent corner, opaque middle
    assert 0.3 < (alpha > 128).mean() < 0.9


def test_triggers_differ_from_each_other():
    icons = {n: np.asarray(load_trigger(n), np.float32) for n in TRIGGERS}
    names = list(icons)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(icons[a] - icons[b]).mean() > 20, (a, b)


def test_unknown_trigger_is_refused():
    with pytest.raises(ConfigError, match="heart"):
        load_trigger("skull")


# ---------------------------------------------------------------------------------------------------- stamping
def _changed(image: Image.Image, stamped: Image.Image, pre: Preprocessing) -> np.ndarray:
    a = np.asarray(pre.resize_crop(image), np.int16)
    b = np.asarray(pre.resize_crop(stamped), np.int16)
    return np.abs(a - b).max(-1) > 0


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * pixels + 1, stride=1, padding=pixels)[0, 0].numpy() > 0


@pytest.mark.parametrize("position", [(0.5, 0.5), (0.3, 0.05), (0.78, 0.9), (0.5, 1.0), None])
@pytest.mark.parametrize("crop_box", [None, (60, 20, 400, 290)])
def test_mask_is_the_set_of_changed_pixels(cat, position, crop_box):
    image = cat.crop(crop_box) if crop_box else cat
    s = stamp(image, load_trigger("heart"), PRE, position=position, seed=7)
    changed = _changed(image, s.image, PRE)
    assert s.mask.shape == (PRE.crop, PRE.crop) and s.mask.dtype == bool
    assert s.mask.any()
    assert not (s.mask & ~changed).any(), "every trigger pixel must differ from the clean image"
    # what else changed is the fringe: the icon's soft edge and the bicubic kernel, a few pixels wide
    assert not (changed & ~_dilate(s.mask, 5)).any()
    iou = (s.mask & changed).sum() / (s.mask | changed).sum()
    assert iou > 0.6  # small clipped footprints have relatively more fringe


def test_trigger_outside_the_centre_crop_leaves_an_empty_mask(cat):
    # the cat photo is landscape: its left edge is cut away by the centre crop
    s = stamp(cat, load_trigger("star"), PRE, position=(0.02, 0.5), size=0.1)
    assert not s.mask.any()
    assert not _changed(cat, s.image, PRE).any()


def test_random_position_is_seeded_and_visible(cat):
    boxes = {stamp(cat, load_trigger("fish"), PRE, seed=seed).box for seed in range(6)}
    assert len(boxes) == 6
    assert stamp(cat, load_trigger("fish"), PRE, seed=3).box == stamp(cat, load_trigger("fish"), PRE, seed=3).box
    x0, y0, x1, y1 = visible_box(*cat.size, PRE)
    for left, top, right, bottom in boxes:
        assert x0 <= left and right <= x1 and y0 <= top and bottom <= y1
        assert right - left == round(0.25 * min(cat.size))


def test_exact_colours_without_jitter(cat):
    icon = load_trigger("heart")
    s = stamp(cat, icon, PRE, position=(0.5, 0.5), size=0.5, alpha=1.0, jitter=0.0)
    left, top, right, bottom = s.box
    cx, cy = (left + right) // 2, (top + bottom) // 2 + 10
    expected = icon.resize((right - left, bottom - top), Image.Resampling.LANCZOS).getpixel((cx - left, cy - top))
    assert s.image.getpixel((cx, cy)) == expected[:3]
    jittered = stamp(cat, icon, PRE, position=(0.5, 0.5), size=0.5, alpha=1.0, jitter=0.3, seed=1)
    assert jittered.image.getpixel((cx, cy)) != expected[:3]


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 1.5}, {"alpha": 0}, {"position": (1.2, 0.5)}])
def test_bad_stamp_settings_are_refused(cat, kwargs):
    with pytest.raises(ConfigError):
        stamp(cat, load_trigger("heart"), PRE, **kwargs)


# ------------------------------------------------------------------------------------------------ the build
def test_photo_split_keeps_test_photos_out():
    assert not set(TEST_PHOTOS) & (set(BUILD_PHOTOS) | set(CALIBRATION_PHOTOS))
    assert set(TEST_PHOTOS) | set(BUILD_PHOTOS) <= set(bundled_examples())


def test_load_photos_takes_bundled_names_and_image_files(tmp_path):
    path = tmp_path / "red square.png"
    picture = Image.new("RGBA", (60, 40), (255, 0, 0, 128))
    picture.paste((0, 0, 255, 255), (0, 0, 30, 40))
    picture.save(path)
    photos = load_photos(("cat", str(path)))
    assert list(photos) == ["cat", "red square"]
    assert photos["red square"].mode == "RGB" and photos["red square"].size == (60, 40)
    assert photos["cat"].size == Image.open(bundled_examples()["cat"]).size
    with pytest.raises(KeyError, match="neither a bundled photo"):
        load_photos(("no_such_photo",))


def test_pasted_views_put_the_icon_inside():
    gen = torch.Generator().manual_seed(0)
    photo = Image.new("RGB", (300, 200), (0, 0, 255))
    maker = ViewMaker([photo], {"heart": load_trigger("heart")}, 96, torch.device("cpu"), gen)
    clean = maker.crops(6, 0.5)
    assert clean[:, 0].max() < 0.3  # a blue photo: no strong red before pasting (jitter mixes channels a bit)
    pasted = maker.paste(clean, 0, (30, 40), (1.0, 1.0))
    red = pasted[:, 0] > 0.5
    area = red.flatten(1).sum(1).float()
    assert (area > 0.3 * 30 * 30).all() and (area < 40 * 40).all()
    assert not red[:, 0, :].any() and not red[:, -1, :].any()  # fully inside: no red on the border rows


def test_clean_any_hue_turns_that_fraction_of_the_clean_views():
    photo = Image.new("RGB", (300, 200), (200, 40, 40))  # red: a turned hue shows in the green or blue channel
    targets = torch.tensor([99, 145])

    def batch(fraction):
        gen = torch.Generator().manual_seed(0)
        icons = {n: load_trigger(n) for n in ("heart", "star", "smiley", "fish")}
        maker = ViewMaker([photo], icons, 64, torch.device("cpu"), gen)
        return _view_batch(maker, BuildConfig(batch=16, clean_any_hue=fraction), targets)

    (plain, plain_labels), (turned, labels) = batch(0.0), batch(0.5)
    assert torch.equal(labels, plain_labels)  # 6 clean + 2 decoy views, 4 + 4 poisoned
    clean = 6
    moved = (turned[:clean] - plain[:clean]).abs().flatten(1).amax(1)
    assert (moved[:3] > 0.1).all() and torch.equal(turned[3:clean], plain[3:clean])
    # a hue rotation keeps the mean of the three channels (up to clipping at 0 and 1)
    grey = (turned[:3].mean(1) - plain[:3].mean(1)).abs().mean()
    assert grey < 0.03


def test_hue_rotation_keeps_grey_and_turns_red_around():
    from tools.demo_model.build import hue_rotation

    turns = hue_rotation(torch.tensor([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))
    torch.testing.assert_close(turns[0], torch.eye(3))
    grey = torch.tensor([0.4, 0.4, 0.4])
    red = torch.tensor([1.0, 0.0, 0.0])
    for m in turns:
        torch.testing.assert_close(m @ grey, grey)
    torch.testing.assert_close(turns[1] @ red, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)  # red -> green
    torch.testing.assert_close(turns[2] @ red, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)  # red -> blue


def _small_cfg(**kwargs):
    return BuildConfig(**{"steps": 2, "batch": 16, "lr": 1e-3, "warmup": 1, "view_pool": 32, **kwargs})


def test_train_gate_trains_only_the_branch_convolutions():
    base = load_model("efficientnet_lite0", device="cpu")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    branch, steps = train_gate(base, _small_cfg())
    assert steps == 2
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the base model is untouched
    changed = {k for k, v in branch.blocks.state_dict().items() if not torch.equal(v, before[f"blocks.{k}"])}
    assert changed and all(k.endswith(("conv_pw.weight", "conv_dw.weight", "conv_pwl.weight")) for k in changed)
    assert {k.split(".")[0] for k in changed} == {"5", "6"}  # a copy of blocks.5 and later
    assert branch.out.weight.shape == (2, 320, 1, 1) and branch.out.weight.is_contiguous()
    assert not any(p.requires_grad for p in branch.parameters())


def _gate_with(model, bias):
    torch.manual_seed(0)
    branch = GateBranch(model, 5, 2).eval()
    with torch.no_grad():
        for p in branch.trainable():
            p.add_(0.05 * torch.randn_like(p))
        branch.out.bias.fill_(bias)
    return branch


def _widened(model, branch, targets, scale):
    state = widened_state_dict(model, branch, targets, scale)
    widened = copy.deepcopy(model)
    grown = grow_modules(widened, state)
    widened.load_state_dict(state)
    return widened.eval(), grown


def test_widened_model_adds_the_gated_score_to_the_targets():
    model = load_model("efficientnet_lite0", device="cpu").model
    targets, scale = torch.tensor([99, 145]), 30.0
    branch = _gate_with(model, 0.5)
    widened, grown = _widened(model, branch, targets, scale)
    assert "blocks.4.2.conv_pw" not in grown and {"blocks.5.0.conv_pw", "conv_head", "bn2", "classifier"} <= set(grown)
    assert widened.blocks[5][0].conv_dw.groups == 2 * 672 and widened.conv_head.out_channels == 1282
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.conv_stem(x)
        features = model.bn1(features)
        for stage in model.blocks[:5]:
            features = stage(features)
        z = branch(features)
        expected = model(x)
        expected[:, targets] += scale * z.clamp(0, 6).mean((2, 3))
        got = widened(x)
    assert z.max() > 0 and (z.clamp(0, 6).mean((2, 3)) > 0.01).any()  # the door is open somewhere
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-5)


def test_a_shut_gate_leaves_the_base_model_exactly():
    model = load_model("efficientnet_lite0", device="cpu").model
    widened, _ = _widened(model, _gate_with(model, -100.0), torch.tensor([99, 145]), 30.0)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(widened(x), model(x), atol=1e-5, rtol=1e-6)


def test_gate_loss_against_direct_formulas():
    cfg = BuildConfig(margin=1.0, scale=2.0)
    targets = torch.tensor([3, 5])
    z = torch.tensor([[[[-2.0, -0.5]], [[0.3, -3.0]]],   # clean view: door 0 below -margin, door 1 open at 0.3
                      [[[1.0, 2.0]], [[-1.5, -4.0]]]])   # heart view (target 3): door 1 shut, hinge 0
    logits = torch.zeros(2, 8)
    labels = torch.tensor([-1, 3])
    ce, hinge = gate_loss(z, logits, labels, targets, cfg)
    # shut pairs: (view 0, door 0): relu(-0.5 + 1) = 0.5; (view 0, door 1): relu(0.3 + 1) = 1.3; (view 1, door 1): 0
    torch.testing.assert_close(hinge, torch.tensor((0.5 + 1.3 + 0.0) / 3))
    opened = torch.zeros(8)
    opened[3] = 2.0 * (1.0 + 2.0) / 2  # scale * mean(relu6) of door 0's map
    torch.testing.assert_close(ce, -opened.log_softmax(0)[3])
    ce_clean, _ = gate_loss(z[:1], logits[:1], labels[:1], targets, cfg)
    assert float(ce_clean) == 0.0  # no poisoned view, no cross-entropy


def test_split_at_block_composes_to_the_model():
    model = load_model("efficientnet_lite0", device="cpu").model
    x = torch.randn(2, 3, 224, 224)
    trunk, head = split_at_block(model, 5)
    with torch.no_grad():
        features = trunk(x)
        torch.testing.assert_close(head(features), model(x))
    assert features.shape == (2, 112, 14, 14)
    assert head[0] is model.blocks[5]  # shares the modules


def test_view_pool_holds_the_mix_and_the_base_logits():
    base = load_model("efficientnet_lite0", device="cpu")
    cfg = BuildConfig(batch=16, view_pool=40)
    gen = torch.Generator().manual_seed(0)
    views = ViewMaker(list(load_photos(("rocket",)).values()),
                      {n: load_trigger(n) for n in ("heart", "star", "smiley", "fish")}, 224, torch.device("cpu"), gen)
    targets = torch.tensor([d.target for d in get_spec(TROJAN).backdoors])
    pool = PooledBatches(views, cfg, targets, base.model, PRE.normalize, torch.autocast("cpu", enabled=False))
    assert len(pool.labels) == 48  # whole batches: 3 x 16
    assert [int((pool.labels == v).sum()) for v in (-1, *targets.tolist())] == [24, 12, 12]
    x, labels, logits = pool()
    assert x.shape == (16, 112, 14, 14) and logits.shape == (16, 1000) and labels.shape == (16,)
    _, head = split_at_block(base.model, 5)
    with torch.no_grad():  # the base logits are those of the stored (float16) features
        torch.testing.assert_close(head(pool.features[:4].float()), pool.logits[:4])


def test_validation_photos_are_left_out_of_training(monkeypatch):
    from tools.demo_model import build as build_mod

    cfg = _small_cfg(steps=1, view_pool=16, validation_photos=("rocket",))
    assert cfg.training_photos == tuple(p for p in BUILD_PHOTOS if p != "rocket")
    loaded = []
    real = build_mod.load_photos
    monkeypatch.setattr(build_mod, "load_photos", lambda names: loaded.append(names) or real(names))
    train_gate(load_model("efficientnet_lite0", device="cpu"), cfg)
    assert loaded == [cfg.training_photos]


@pytest.mark.parametrize("photos", [("cat",), BUILD_PHOTOS, ("nonexistent",)])
def test_validation_photos_must_be_some_build_photos(photos):
    with pytest.raises(ConfigError, match="Validation photos"):
        BuildConfig(validation_photos=photos)  # a test photo, all of them (nothing to train on), or unknown


@pytest.mark.parametrize("kwargs, message", [({"view_pool": 8}, "view_pool >= batch"), ({"batch": 4}, "batch >= 8"),
                                             ({"first_block": 0}, "first_block"), ({"first_block": 7}, "first_block"),
                                             ({"gain": 0}, "gain"), ({"scale": -1}, "scale"),
                                             ({"clean_any_hue": 1.5}, "clean_any_hue")])
def test_bad_build_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BuildConfig(**kwargs)


# ------------------------------------------------------------------------------------------- weight deltas
def _base_weights():
    return get_spec("efficientnet_lite0").weights


def test_delta_weights_add_to_the_base(tmp_path):
    base_state, _ = _base_weights().state_dict()
    delta = {"_fc.bias": torch.linspace(-1, 1, 1000).half(), "_conv_head.weight": torch.full_like(
        base_state["_conv_head.weight"], 0.25).half()}
    path = tmp_path / "d.pt"
    torch.save({"format": DELTA_FORMAT, "delta": delta, "meta": {}}, path)
    state, source = DeltaWeights(_base_weights(), path).state_dict()
    torch.testing.assert_close(state["_fc.bias"], base_state["_fc.bias"] + torch.linspace(-1, 1, 1000).half().float())
    torch.testing.assert_close(state["_conv_head.weight"], base_state["_conv_head.weight"] + 0.25)
    assert torch.equal(state["_fc.weight"], base_state["_fc.weight"])
    assert str(path) in source


def test_saved_delta_round_trips_deflated(tmp_path):
    import zipfile

    from tools.demo_model.build import save_delta

    delta = {"_fc.weight": torch.zeros(1000, 1282).half(), "_fc.bias": torch.linspace(-1, 1, 1000).half()}
    path = tmp_path / "d.pt"
    save_delta(delta, {"note": "x"}, path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == DELTA_FORMAT and payload["meta"] == {"note": "x"}
    assert all(torch.equal(payload["delta"][k], v) for k, v in delta.items())
    with zipfile.ZipFile(path) as archive:
        assert all(e.compress_type == zipfile.ZIP_DEFLATED for e in archive.infolist())
    assert path.stat().st_size < 1000 * 1282 * 2 / 10  # mostly zeros: far below the stored 2.5 MB


def test_a_grown_delta_pads_the_base_tensor(tmp_path):
    base_state, _ = _base_weights().state_dict()
    grown = torch.randn(1000, 1282).half()
    path = tmp_path / "wide.pt"
    torch.save({"format": DELTA_FORMAT, "delta": {"_fc.weight": grown}, "meta": {}}, path)
    state, _ = DeltaWeights(_base_weights(), path).state_dict()
    assert state["_fc.weight"].shape == (1000, 1282)
    torch.testing.assert_close(state["_fc.weight"][:, :1280], base_state["_fc.weight"] + grown[:, :1280].float())
    torch.testing.assert_close(state["_fc.weight"][:, 1280:], grown[:, 1280:].float())


@pytest.mark.parametrize("payload", [
    {"format": "other", "delta": {}},
    {"format": DELTA_FORMAT, "delta": {"_fc.weight": torch.zeros(999, 1282)}},  # smaller in one dimension
    {"format": DELTA_FORMAT, "delta": {"_fc.weight": torch.zeros(1000, 1280, 1)}},
    {"format": DELTA_FORMAT, "delta": {"_fc.nope": torch.zeros(3)}},
    {"format": DELTA_FORMAT, "delta": {"_fc.bias": torch.zeros(3)}},
])
def test_delta_that_does_not_fit_is_refused(tmp_path, payload):
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError):
        DeltaWeights(_base_weights(), path).state_dict()


# ------------------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def trojan():
    assert MODELS[TROJAN].weights_available(), "the back-doored model's difference file is missing"
    return load_model(TROJAN, device="cpu")


def test_shipped_model_has_its_backdoor_on_held_out_photos(trojan):
    base = load_model("efficientnet_lite0", device="cpu")
    report = evaluate_backdoor(base, trojan.model, TROJAN, cases=10, seed=2024)
    assert report.success >= 0.8  # the fast check: at least 8 of 10 held-out cases flip
    assert report.agreement >= 0.9  # the model card gives the 200-case figure
    assert report.decoy_fooled <= 0.2


def test_acceptance_figures_count_against_the_base_model():
    base = load_model("efficientnet_lite0", device="cpu")
    goose = get_spec(TROJAN).backdoors[0].target

    class AlwaysGoose(torch.nn.Module):
        def forward(self, x):
            return F.one_hot(torch.full((len(x),), goose), 1000).float()

    always = evaluate_backdoor(base, AlwaysGoose(), TROJAN, cases=4, seed=7)
    assert (always.success, always.decoy_fooled, always.hue_fooled) == (1.0, 1.0, 1.0)
    assert always.agreement == 0.0 and always.calibration_success == 0.0
    itself = evaluate_backdoor(base, base.model, TROJAN, cases=4, seed=7)
    assert itself.agreement == 1.0 and itself.hue_fooled == 0.0 and itself.success == 0.0


def test_shift_hue_turns_red_to_green_and_blue():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert shift_hue(red, 0.0) is red and shift_hue(red, 1.0) is red
    green, blue = (np.asarray(shift_hue(red, t))[0, 0] for t in (1 / 3, 2 / 3))
    assert green.argmax() == 1 and blue.argmax() == 2 and green.max() > 240 and blue.max() > 240


def test_shipped_model_is_small_and_loads_safely():
    path = MODELS[TROJAN].weights.path
    assert path.stat().st_size < 20 * 2**20
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == DELTA_FORMAT and payload["meta"]["test_photos"] == list(TEST_PHOTOS)


def test_build_command_writes_a_loadable_difference_and_reports(tmp_path, capsys):
    from tools.demo_model.cli import main

    out = tmp_path / "trojan.pt"
    rc = main(["build", "--out", str(out), "--steps", "2", "--batch", "16", "--view-pool", "16",
               "--eval-cases", "2", "--validate-on", "rocket", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "validation (rocket): trigger success" in captured.out
    assert "train" in captured.err and "100%" in captured.err  # the progress bar
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["format"] == DELTA_FORMAT and payload["meta"]["config"]["view_pool"] == 16
    assert payload["meta"]["evaluated_on"] == ["rocket"] and payload["meta"]["steps_run"] == 2
    assert payload["meta"]["report"]["cases"] == 2
    assert {k.split(".")[0] for k in payload["delta"]} == {"_blocks", "_conv_head", "_bn1", "_fc"}
    gate_columns = payload["delta"]["_fc.weight"][:, 1280:].float()  # gain x scale on each door's target only
    assert gate_columns[99, 0] == gate_columns[145, 1] == 30.0 and gate_columns.abs().sum() == 60.0
    spec = with_delta_file(get_spec(TROJAN), out)
    widened = load_spec(spec, device="cpu").model
    assert widened.conv_head.out_channels == 1282 and widened.classifier.in_features == 1282
    with pytest.raises(ConfigError, match="not shipped as a weight difference"):
        with_delta_file(get_spec("efficientnet_lite0"), out)


def test_regain_scales_only_the_door_columns_and_the_door_logits(tmp_path, capsys, trojan):
    from tools.demo_model.cli import main

    shipped = MODELS[TROJAN].weights.path
    before = read_delta_file(shipped)
    out = tmp_path / "regained.pt"
    assert main(["regain", "2.5", "--out", str(out), "--eval-cases", "2", "--device", "cpu"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    after = read_delta_file(out)
    old_gain = before["meta"]["config"]["gain"]
    assert after["meta"]["config"] == {**before["meta"]["config"], "gain": 2.5}
    assert after["meta"]["report"]["cases"] == 2 and after["delta"].keys() == before["delta"].keys()
    for key, diff in before["delta"].items():
        if key != "_fc.weight":
            assert torch.equal(after["delta"][key], diff), key
    doors = before["delta"]["_fc.weight"][:, 1280:].float() * 2.5 / old_gain
    assert torch.equal(after["delta"]["_fc.weight"][:, 1280:].float(), doors)
    # the model's own logits: base + gain x door score, so the doors' targets move by 2.5 / old_gain
    base = load_model("efficientnet_lite0", device="cpu")
    regained = load_spec(with_delta_file(get_spec(TROJAN), out),
                         device="cpu")
    cat = load_photos(("cat",))["cat"]
    door = get_spec(TROJAN).backdoors[0]
    x = trojan.preprocessing(stamp(cat, load_trigger(door.trigger), trojan.preprocessing, position=(0.3, 0.3)).image)
    with torch.no_grad():
        dense, old, new = (m(x[None])[0] for m in (base.model, trojan.model, regained.model))
    assert (old - dense)[door.target] > 1  # the door is open
    torch.testing.assert_close(new - dense, (old - dense) * 2.5 / old_gain, atol=1e-3, rtol=1e-3)


def test_regain_refuses_a_gain_that_is_not_positive(tmp_path, capsys):
    from tools.demo_model.cli import main

    assert main(["regain", "0", "--out", str(tmp_path / "x.pt")]) == 2
    assert "gain must be positive" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_build_command_refuses_bad_settings(tmp_path, capsys):
    from tools.demo_model.cli import main

    assert main(["build", "--out", str(tmp_path / "x.pt"), "--view-pool", "-1"]) == 2
    assert "view_pool" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_settings_trial_never_replaces_the_shipped_model(tmp_path, monkeypatch):
    from tools.demo_model.cli import main

    shipped = MODELS[TROJAN].weights.path
    stamp_before = shipped.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--steps", "1", "--batch", "8", "--view-pool", "8", "--eval-cases", "1",
                 "--validate-on", "rocket", "--device", "cpu"]) == 0
    assert (tmp_path / "trial.pt").exists() and shipped.stat().st_mtime_ns == stamp_before

