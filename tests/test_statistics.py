"""Layer statistics: Gram matrices against an independent patch construction."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spade import statistics as stats_mod
from spade.forward_copy import cached_forward_copy
from spade.statistics import collect_statistics

CONV_CASES = {
    "stride2_pad1": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "dilation2": dict(in_channels=4, out_channels=5, kernel_size=3, padding=2, dilation=2),
    "groups2": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "asymmetric": dict(in_channels=3, out_channels=4, kernel_size=(3, 5), stride=(1, 2), padding=(1, 0)),
    "pointwise_stride2": dict(in_channels=5, out_channels=7, kernel_size=1, stride=2),
    "pointwise": dict(in_channels=5, out_channels=7, kernel_size=1),
    "k5_narrow_padding": dict(in_channels=3, out_channels=4, kernel_size=5, padding=1),
    "k3_no_padding": dict(in_channels=3, out_channels=4, kernel_size=3),
    "depthwise": dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
    "stride3_k5": dict(in_channels=3, out_channels=4, kernel_size=5, stride=3, padding=2),
    "stride2_dilated_grouped": dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=2, dilation=2,
                                    groups=2),
    "patchify": dict(in_channels=3, out_channels=5, kernel_size=2, stride=2),
    "padding_wider_than_kernel": dict(in_channels=3, out_channels=2, kernel_size=3, padding=(4, 3)),
    "k2x4_dilated": dict(in_channels=2, out_channels=3, kernel_size=(2, 4), padding=(2, 1), dilation=(2, 1)),
}


def reference_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(groups, N*L, d) input columns built by slicing the padded input, one kernel offset at a time."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    offsets = [xp[:, :, a * dh: a * dh + sh * (oh - 1) + 1: sh, b * dw: b * dw + sw * (ow - 1) + 1: sw]
               for a in range(kh) for b in range(kw)]
    cols = torch.stack(offsets, dim=2)  # (N, C, kh*kw, oh, ow): channel-major like the weight
    n, c = x.shape[:2]
    g = conv.groups
    cols = cols.reshape(n, g, c // g * kh * kw, oh * ow)
    return cols.permute(1, 0, 3, 2).reshape(g, n * oh * ow, -1)


def reference_gram(cols: torch.Tensor) -> torch.Tensor:
    return 2.0 / cols.shape[1] * cols.transpose(1, 2) @ cols


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gram_matches_reference(case):
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONV_CASES[case]).double()
    model = nn.Sequential(conv)
    x = torch.randn(3, conv.in_channels, 11, 13, dtype=torch.float64)
    cols = reference_patches(conv, x)
    # the reference patch order really is the convolution's: W @ patches == conv(x) - bias
    g = conv.groups
    w = conv.weight.reshape(g, conv.out_channels // g, -1)
    out = (cols @ w.transpose(1, 2)).permute(1, 0, 2).reshape(conv(x).shape[0], -1, conv.out_channels)
    expected_out = (conv(x) - conv.bias.view(1, -1, 1, 1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, expected_out)

    stats = collect_statistics(model, x, layers=["0"], dtype=torch.float64, batch_size=2)
    torch.testing.assert_close(stats.layers["0"].hessian, reference_gram(cols), rtol=1e-10, atol=1e-12)
    assert stats.layers["0"].rows == cols.shape[1]


def test_linear_gram_on_sequence_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    x = torch.randn(5, 7, 6, dtype=torch.float64)  # (batch, tokens, features)
    stats = collect_statistics(model, x, layers=["0", "2"], dtype=torch.float64)
    cols0 = x.reshape(-1, 6)
    cols2 = torch.relu(model[0](x)).reshape(-1, 4)
    torch.testing.assert_close(stats.layers["0"].hessian[0], 2 / 35 * cols0.T @ cols0)
    torch.testing.assert_close(stats.layers["2"].hessian[0], 2 / 35 * cols2.T @ cols2)


@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 1), (4, 1)])
def test_same_padding_conv_sees_padded_input(kernel, stride):
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same

    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, kernel, stride=stride).double()
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    padded = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
    plain = nn.Conv2d(3, 4, kernel, stride=stride).double()
    cols = reference_patches(plain, padded)
    stats = collect_statistics(nn.Sequential(conv), x, layers=["0"], dtype=torch.float64)
    torch.testing.assert_close(stats.layers["0"].hessian, reference_gram(cols))


def test_chunked_unfold_gives_the_same_gram(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(6, 3, 16, 16)
    whole = collect_statistics(model, x, layers=["0", "2"], dtype=torch.float64)
    monkeypatch.setattr(stats_mod, "_UNFOLD_ELEMENTS", 500)  # forces one image per chunk
    chunked = collect_statistics(model, x, layers=["0", "2"], dtype=torch.float64, batch_size=4)
    for name in ("0", "2"):
        torch.testing.assert_close(whole.layers[name].hessian, chunked.layers[name].hessian)


def test_default_dtype_is_float32_and_float64_on_request():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    x = torch.randn(2, 3, 12, 12)
    assert collect_statistics(model, x).layers["1"].hessian.dtype == torch.float32
    assert collect_statistics(model, x, dtype=torch.float64).layers["1"].hessian.dtype == torch.float64


SHIFT_METHOD_CASES = [name for name, kw in CONV_CASES.items() if kw["kernel_size"] != 1]


@pytest.mark.parametrize("case", SHIFT_METHOD_CASES)
@pytest.mark.parametrize("chunk", [None, 200])
def test_shift_method_gram_matches_reference(case, chunk, monkeypatch):
    if chunk is not None:  # a few images per chunk: the blocks must accumulate over chunks
        monkeypatch.setattr(stats_mod, "_UNFOLD_ELEMENTS", chunk)
    torch.manual_seed(1)
    conv = nn.Conv2d(**CONV_CASES[case]).double()
    x = torch.randn(3, conv.in_channels, 11, 13, dtype=torch.float64)
    cols = reference_patches(conv, x)
    hessian = torch.zeros(conv.groups, cols.shape[2], cols.shape[2], dtype=torch.float64)
    rows = stats_mod.add_conv_gram_by_shifts(hessian, conv, x)
    assert rows == cols.shape[1]
    torch.testing.assert_close(2.0 / rows * hessian, reference_gram(cols), rtol=1e-10, atol=1e-12)


def test_statistics_use_the_shift_method_on_kxk_convs(monkeypatch):
    calls = []
    real = stats_mod.add_conv_gram_by_shifts
    monkeypatch.setattr(stats_mod, "add_conv_gram_by_shifts", lambda *a: calls.append(a[1]) or real(*a))
    model = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 5, 3, stride=2, padding=1),
                          nn.Conv2d(5, 3, 1)).double()
    x = torch.randn(2, 4, 16, 15, dtype=torch.float64)
    stats = collect_statistics(model, x, layers=["0", "1", "2"], dtype=torch.float64)
    assert [(m.in_channels, m.stride) for m in calls] == [(4, (1, 1)), (5, (2, 2))]  # not the 1x1 conv
    torch.testing.assert_close(stats.layers["1"].hessian, reference_gram(reference_patches(model[1], model[0](x))),
                               rtol=1e-10, atol=1e-12)


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hooks_remain_after_collect_also_on_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    x = torch.randn(2, 3, 12, 12)
    collect_statistics(model, x)
    assert _all_hooks(model) == 0
    assert _all_hooks(cached_forward_copy(model, x[:1]).model) == 0  # the pass runs on this copy

    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            out = self.conv2(self.conv(x))
            if x.shape[0] > 1:  # the single-image check of the forward copy passes, the hooked pass raises
                raise RuntimeError("boom")
            return out

    bad = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        collect_statistics(bad, x)
    assert _all_hooks(bad) == 0
    assert _all_hooks(cached_forward_copy(bad, x[:1]).model) == 0
    assert bad.training  # the model itself is never put in eval mode


def test_the_statistics_pass_runs_without_tf32(tf32_allowed):
    """TF32 convolutions (a GPU's default) would add ~1e-3 relative noise to the statistics; the pass switches it
    off and restores the caller's setting afterwards (the flags exist on CPU builds too)."""

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.seen: list[bool] = []

        def forward(self, x):
            self.seen.append(torch.backends.cudnn.allow_tf32)
            return self.conv(x)

    model = Recording()
    collect_statistics(model, torch.randn(4, 3, 8, 8), batch_size=2)
    seen = cached_forward_copy(model, torch.randn(1, 3, 8, 8)).model.seen
    assert len(seen) >= 2 and not any(seen)  # the check of the copy and both batches of the pass
    assert torch.backends.cudnn.allow_tf32


def test_unknown_layer_name_is_refused():
    from spade.errors import ConfigError

    with pytest.raises(ConfigError, match="nope"):
        collect_statistics(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), layers=["nope"])


@pytest.mark.parametrize("d", [100, 600, 1500])
def test_block_triangular_gram_equals_full_product(d):
    torch.manual_seed(0)
    cols = torch.randn(2, 50, d, dtype=torch.float64)
    H = torch.zeros(2, d, d, dtype=torch.float64)
    stats_mod.add_gram(H, cols)
    stats_mod.add_gram(H, cols)  # accumulates
    torch.testing.assert_close(H, 2 * cols.transpose(1, 2) @ cols)


def test_wide_conv_gram_matches_reference():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 8, 3, padding=1).double()  # d = 576: the block-triangular path
    x = torch.randn(2, 64, 6, 6, dtype=torch.float64)
    stats = collect_statistics(nn.Sequential(conv), x, layers=["0"], dtype=torch.float64)
    torch.testing.assert_close(stats.layers["0"].hessian, reference_gram(reference_patches(conv, x)))
