"""The closed-form merge that keeps the back-doored model's clean behaviour that of its base."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from spade.errors import ConfigError
from spade.models import DELTA_FORMAT, MODELS, load_model
from spade.trojan.build import load_delta_model
from spade.trojan.merge import MergeConfig, layer_input, merge_backdoor, merged_weight, patch_grams

TROJAN = "efficientnet_lite0_trojan"


def _stacked_least_squares(w_base, w_trojan, x_clean, x_trigger, lam, delta):
    """Minimiser of ||(W - Wb) Xc||^2 + lam ||(W - Wt) Xt||^2 + delta ||W - Wb||^2 as one least-squares problem."""
    d = w_base.shape[1]
    a = torch.cat([x_clean.T, lam**0.5 * x_trigger.T, delta**0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([x_clean.T @ w_base.T, lam**0.5 * x_trigger.T @ w_trojan.T, delta**0.5 * w_base.T])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize(("lam", "damp"), [(1.0, 0.01), (4.0, 0.0), (0.5, 0.3)])
def test_merged_weight_solves_the_weighted_least_squares(lam, damp):
    g = torch.Generator().manual_seed(0)
    d, out = 6, 3
    x_clean = torch.randn(d, 40, generator=g, dtype=torch.float64)
    x_trigger = torch.randn(d, 9, generator=g, dtype=torch.float64)
    w_base, w_trojan = torch.randn(2, out, d, generator=g, dtype=torch.float64)
    h_clean, h_trigger = x_clean @ x_clean.T, x_trigger @ x_trigger.T
    delta = damp * torch.diagonal(h_clean + lam * h_trigger).mean() + 1e-9
    expected = _stacked_least_squares(w_base, w_trojan, x_clean, x_trigger, lam, float(delta))
    got = merged_weight(w_base[None], w_trojan[None], h_clean[None], h_trigger[None], lam, damp)[0]
    torch.testing.assert_close(got, expected)


def test_merged_weight_keeps_the_base_where_the_trigger_never_reaches():
    w_base, w_trojan = torch.ones(1, 2, 3), torch.full((1, 2, 3), 5.0)
    h_clean = torch.diag(torch.tensor([1.0, 1.0, 0.0]))[None]
    h_trigger = torch.diag(torch.tensor([0.0, 0.0, 1.0]))[None]  # the trigger lives on input 2 only
    got = merged_weight(w_base, w_trojan, h_clean, h_trigger, 1.0, 0.0)
    torch.testing.assert_close(got[..., :2], w_base[..., :2])
    torch.testing.assert_close(got[..., 2], w_trojan[..., 2], atol=1e-6, rtol=0)
    assert got.dtype == torch.float32


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 6, 3, stride=1, padding=1, groups=6, bias=False),
    Conv2dSame(6, 6, 5, stride=2, groups=6, bias=False),  # timm's same padding, as in EfficientNet-Lite0
    nn.Conv2d(4, 3, 1, bias=False),
    nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),
], ids=["depthwise", "depthwise-same-stride2", "pointwise", "grouped"])
def test_patch_grams_give_the_squared_outputs(conv):
    """w^T G w is the sum of the conv's squared outputs over the (weighted) positions, for every filter w."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, conv.in_channels, 9, 9, generator=g)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        out = conv(x).double()
    weight = (torch.rand(out.shape[0], 1, *out.shape[-2:], generator=g) > 0.5).float()
    full, weighted = patch_grams(conv, x, weight)
    w = conv.weight.double().view(conv.groups, conv.out_channels // conv.groups, -1)
    per_filter = torch.einsum("gok,gkj,goj->go", w, full, w).flatten()
    torch.testing.assert_close(per_filter, out.square().sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    per_filter = torch.einsum("gok,gkj,goj->go", w, weighted, w).flatten()
    torch.testing.assert_close(per_filter, (out.square() * weight).sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.equal(patch_grams(conv, x, None)[1], torch.zeros_like(full))


def test_layer_input_captures_and_always_removes_its_hook():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(layer_input(net, net[2], x), net[1](net[0](x)))
    assert not net[2]._forward_pre_hooks
    with pytest.raises(ConfigError, match="not used"):
        layer_input(net[:2], net[2], x)
    assert not net[2]._forward_pre_hooks


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"clean_views": 4}, "clean_views"), ({"trigger_weight": 0.0}, "trigger_weight"), ({"dilate": -1}, "dilate"),
    ({"hue_views": 1.5}, "hue_views"),
    ({"validation_photos": ("cat",)}, "Validation photos"),
])
def test_bad_merge_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MergeConfig(**kwargs)


@pytest.fixture(scope="module")
def base():
    return load_model("efficientnet_lite0", device="cpu")


def test_merging_the_base_with_itself_changes_nothing(base):
    cfg = MergeConfig(clean_views=8, trigger_views=2, first_block=5, chunk=8)
    merged = merge_backdoor(base, copy.deepcopy(base.model), cfg)
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, base.model.state_dict()[key], atol=2e-5, rtol=1e-4, msg=key)


def test_merge_moves_only_the_merged_layers_towards_the_finetuned_model(base):
    finetuned = load_delta_model(base, MODELS[TROJAN].weights.path)
    before_base = {k: v.clone() for k, v in base.model.state_dict().items()}
    before_tuned = {k: v.clone() for k, v in finetuned.state_dict().items()}
    merged = merge_backdoor(base, finetuned, MergeConfig(clean_views=8, trigger_views=4, first_block=5, chunk=8))
    for model, before in ((base.model, before_base), (finetuned, before_tuned)):
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # inputs untouched
    state = merged.state_dict()
    for key, value in state.items():
        if key.startswith(("blocks.5", "blocks.6", "conv_head.weight", "classifier")) and "bn" not in key:
            changed = (value - before_base[key]).norm()
            assert 0 < changed < (before_tuned[key] - before_base[key]).norm() * 3, key
        else:
            assert torch.equal(value, before_base[key]), key


def test_merge_command_writes_a_difference_file_and_reports(tmp_path, capsys):
    from spade_cli.trojan import main

    out = tmp_path / "merged.pt"
    rc = main(["merge", "--out", str(out), "--clean-views", "8", "--trigger-views", "2", "--eval-cases", "2",
               "--validate-on", "rocket", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "validation (rocket): trigger success" in captured.out
    assert "merge" in captured.err and "100%" in captured.err  # the progress bar
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["format"] == DELTA_FORMAT and payload["meta"]["merged_from"] == MODELS[TROJAN].weights.path.name
    assert payload["meta"]["config"]["clean_views"] == 8 and payload["meta"]["evaluated_on"] == ["rocket"]
    assert {k.split(".")[0] for k in payload["delta"]} <= {"_blocks", "_conv_head", "_fc"}
