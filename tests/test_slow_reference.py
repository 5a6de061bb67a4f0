"""The fast paths against slow, simple references in float64 on small layers: whole-model statistics against
explicit Gram matrices of unfolded inputs recorded on the original model, and the group-mode solve (mask selection
included) against a one-column-at-a-time loop of the SparseGPT sweep as the authors' code runs it.

(tests/test_statistics.py checks single layers' Gram matrices; tests/test_solver.py checks the sweep with a *given*
mask against a naive sweep. These add the whole pass on a model and the selection.)"""

import math

import pytest
import torch
from torch import nn

from spade.layers import prunable_layers
from spade.solver import SolverConfig, reconstruction_error, solver_for
from spade.statistics import collect_statistics
from tests.test_statistics import reference_gram, reference_patches
from tests.tiny_models import TinyMobileNet, TinyResNet

DAMP = 0.01


def explicit_grams(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """(groups, d, d) Gram matrices 2/n X^T X of every target layer's unfolded inputs, recorded by hooks on the
    original model (BatchNorm not folded, no forward copy)."""
    layers = prunable_layers(model)
    grams = {}

    def record(name, module, inputs):
        inp = inputs[0].detach()
        cols = reference_patches(module, inp) if isinstance(module, nn.Conv2d) else inp.reshape(1, -1, inp.shape[-1])
        grams[name] = reference_gram(cols)

    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: record(n, mod, a)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return grams


@pytest.mark.parametrize("model_class", [TinyResNet, TinyMobileNet])
def test_whole_model_statistics_equal_explicit_grams(model_class):
    torch.manual_seed(0)
    model = model_class().double().eval()
    for module in model.modules():  # non-trivial BatchNorm, so that folding it matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(5, 3, 29, 31, dtype=torch.float64)
    expected = explicit_grams(model, x)
    stats = collect_statistics(model, x, dtype=torch.float64, batch_size=2)
    assert set(stats.layers) == set(expected)  # (the hooks record in execution order)
    for name, stat in stats.layers.items():
        torch.testing.assert_close(stat.hessian, expected[name], rtol=1e-9, atol=1e-10)


def slow_group_sweep(W: torch.Tensor, H: torch.Tensor, sparsity: float, group: int) -> torch.Tensor:
    """The SparseGPT sweep as the authors run it, one column at a time, every update applied at once: each group
    of `group` columns (over all rows) prunes its floor(sparsity * size) lowest w^2 / U_jj^2 of the weights as
    updated by the columns to its left; U is the upper Cholesky factor of the damped inverse Hessian."""
    Hd = H + DAMP * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(Hd)).mT
    W = W.clone()
    prune = torch.zeros_like(W, dtype=torch.bool)
    for g1 in range(0, W.shape[1], group):
        g2 = min(g1 + group, W.shape[1])
        scores = W[:, g1:g2] ** 2 / torch.diagonal(U)[g1:g2] ** 2
        k = math.floor(sparsity * scores.numel() + 1e-9)
        lowest = scores.flatten().argsort()[:k]
        block = torch.zeros(scores.numel(), dtype=torch.bool)
        block[lowest] = True
        prune[:, g1:g2] = block.view_as(scores)
        for i in range(g1, g2):
            err = torch.where(prune[:, i], W[:, i], 0.0) / U[i, i]
            W[:, i:] -= torch.outer(err, U[i, i:])
    W[prune] = 0
    return W


@pytest.mark.parametrize("group, d", [(1, 40), (9, 36), (9, 171), (4, 300)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_group_solve_equals_the_slow_sweep(group, d, sparsity):
    g = torch.Generator().manual_seed(d + group)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    X = torch.randn(3 * d, d, generator=g, dtype=torch.float64) @ mix
    H = 2.0 / X.shape[0] * X.T @ X
    W = torch.randn(10, d, generator=g, dtype=torch.float64)
    solved, mask, error = solver_for(SolverConfig(mode="group", damp=DAMP)).prune(W, H, sparsity, group)
    expected = slow_group_sweep(W, H, sparsity, group)
    assert torch.equal(mask, expected == 0)
    torch.testing.assert_close(solved, expected, rtol=1e-9, atol=1e-9)
    delta = solved - W
    assert error == pytest.approx(float(((delta @ H) * delta).sum()), rel=1e-8)
    assert reconstruction_error(W, solved, H) == pytest.approx(error / float(((W @ H) * W).sum()), rel=1e-8)
