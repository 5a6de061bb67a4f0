"""The checked forward copy: BatchNorm folded when that keeps the outputs, the plain copy otherwise."""

from __future__ import annotations

import logging
import threading

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


def test_building_copies_leaves_models_running_in_other_threads_alone():
    """torch.fx patches nn.Module.__call__ for the whole process while it traces a module to fold: a model running
    in another thread must neither fail nor change its outputs, and two builds at once must both fold."""
    runner = tiny_resnet(1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = runner(x)
    errors: list[BaseException] = []
    stop = threading.Event()

    def run_forwards() -> None:
        try:
            while not stop.is_set():
                with torch.no_grad():
                    assert torch.equal(runner(x), expected)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    def build_copies() -> None:
        try:
            for _ in range(30):
                assert _batchnorms(forward_copy.build_forward_copy(tiny_resnet(0))) == 0
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    forwards = threading.Thread(target=run_forwards)
    builders = [threading.Thread(target=build_copies) for _ in range(2)]
    forwards.start()
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    stop.set()
    forwards.join()
    assert errors == []


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
