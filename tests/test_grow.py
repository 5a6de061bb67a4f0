"""Growing layers in place to the shapes of a state dict (how widened models load into their base architecture)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spade.errors import CheckpointError
from spade.grow import grow_modules


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Conv2d(4, 5, 1),
                         nn.Flatten(), nn.Linear(5 * 2 * 2, 7))


def test_layers_grow_to_the_state_and_compute_with_it():
    small = _net()
    state = {k: v.clone() for k, v in small.state_dict().items()}
    state["0.weight"] = torch.randn(6, 3, 3, 3)
    for key in ("1.weight", "1.bias", "1.running_mean"):
        state[key] = torch.randn(6)
    state["1.running_var"] = torch.rand(6) + 0.5
    state["2.weight"] = torch.randn(6, 1, 3, 3)
    state["3.weight"] = torch.randn(5, 6, 1, 1)
    big = _net()
    assert grow_modules(big, state) == ["0", "1", "2", "3"]
    big.load_state_dict(state)
    assert big[2].groups == big[2].in_channels == big[2].out_channels == 6 and big[1].num_features == 6
    x = torch.randn(2, 3, 2, 2)
    reference = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                              nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.Conv2d(6, 5, 1),
                              nn.Flatten(), nn.Linear(20, 7))
    reference.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(big.eval()(x), reference.eval()(x))


def test_nothing_grows_when_the_shapes_fit():
    net = _net()
    assert grow_modules(net, net.state_dict()) == []


def test_a_grouped_convolution_that_is_not_depthwise_cannot_grow():
    net = nn.Sequential(nn.Conv2d(4, 4, 1, groups=2))
    with pytest.raises(CheckpointError, match="depthwise"):
        grow_modules(net, {"0.weight": torch.zeros(6, 2, 1, 1)})


def test_other_layers_cannot_change_shape():
    net = nn.Sequential(nn.Embedding(4, 3))
    with pytest.raises(CheckpointError, match="Embedding"):
        grow_modules(net, {"0.weight": torch.zeros(5, 3)})
