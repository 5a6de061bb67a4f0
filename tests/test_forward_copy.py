"""The checked forward copy: BatchNorm folded when that keeps the outputs, the plain copy otherwise."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import spade.forward_copy as forward_copy
from spade.devices import full_float32
from spade.forward_copy import cached_forward_copy
from tests.tiny_models import tiny_resnet


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_full_float32_switches_tf32_off_inside_and_restores_it_also_on_error(tf32_allowed):
    with pytest.raises(RuntimeError, match="inside"), full_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        raise RuntimeError("inside")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_the_copy_is_folded_and_computes_the_model():
    model = tiny_resnet(0).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    work = cached_forward_copy(model, x[:1]).model
    assert _batchnorms(model) > 0 and _batchnorms(work) == 0
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_fold_that_changes_the_outputs_falls_back_to_the_plain_copy(monkeypatch, caplog):
    fold = forward_copy.build_forward_copy

    def folded_wrongly(model: nn.Module) -> nn.Module:
        work = fold(model)
        with torch.no_grad():
            next(m for m in work.modules() if isinstance(m, nn.Conv2d)).weight.mul_(1.1)
        return work

    monkeypatch.setattr(forward_copy, "build_forward_copy", folded_wrongly)
    model = tiny_resnet(0).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING, logger="spade.forward_copy"):
        work = cached_forward_copy(model, x).model
    assert "using the unfolded copy" in caplog.text
    assert _batchnorms(work) == _batchnorms(model)
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x))
