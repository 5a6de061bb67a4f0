"""The solvers' loops compiled by TorchScript (`spade.scripted`) give bit for bit what the same loops give in Python:
the sweep in every selection mode, the exact solver's greedy passes; the sweeps then run side by side."""

import pytest
import torch

import spade.obc
import spade.solver  # noqa: F401  (imports every module with compiled loops)
from spade import scripted, sweep_kernel
from spade.solver import SOLVERS, SolverConfig, inverse_hessian_factor


@pytest.mark.parametrize("function", scripted.ALL, ids=lambda f: f.__name__)
def test_torchscript_compiles_every_solver_loop(function):
    assert function.compiled  # else the solvers run slower, and the sweeps one layer at a time


def test_compiled_sweeps_are_not_stepwise():
    assert not any(SOLVERS[mode](SolverConfig(mode=mode)).stepwise for mode in ("group", "row"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("width", "per_row"), [(1, False), (9, False), (4, True), (16, True)])
@pytest.mark.parametrize("zeros", [False, True])  # dense zeros that stay fixed
@pytest.mark.parametrize("choose", [True, False])  # a mask chosen by the sweep or given
def test_the_compiled_sweep_equals_the_python_one(dtype, width, per_row, zeros, choose):
    torch.manual_seed(0)
    d, rows, block, inner = 45, 12, 4 * width, 2 * width  # blocks and spans of whole selection groups
    X = torch.randn(d, 300, dtype=torch.float64)
    F, _ = inverse_hessian_factor((X @ X.T / 300).to(dtype), 0.01, block)
    W = torch.randn(d, rows, dtype=dtype)
    fixed = None
    if zeros:
        fixed = torch.rand(d, rows) < 0.2
        W[fixed] = 0.0
    mask = torch.rand(d, rows) < 0.6
    results = []
    for sweep in (sweep_kernel.sweep_blocks, sweep_kernel.sweep_blocks.python):
        WT = W.clone()
        prune = (torch.zeros(d, rows, dtype=torch.bool) if choose else mask.clone())
        if fixed is not None:
            prune |= fixed
        error = sweep(WT, W, F, prune, fixed, 0.7, choose, width, per_row, block, inner)
        results.append((WT, prune, error))
    (a, mask_a, error_a), (b, mask_b, error_b) = results
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b) and float(error_a) == float(error_b)
    if choose:  # floor(0.7 n) of each group's (or row's) n live entries: 2 of 4 for per_row groups of 4
        fixed_count = 0 if fixed is None else int(fixed.sum())
        assert 0.4 * (d * rows - fixed_count) < int(mask_a.sum()) - fixed_count <= 0.7 * (d * rows - fixed_count)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_greedy_passes_equal_the_python_ones(dtype):
    torch.manual_seed(0)
    B, m, r = 5, 40, 6
    X = torch.randn(m, 3 * m, dtype=torch.float64)
    hinv = torch.linalg.inv(X @ X.T / m + 0.1 * torch.eye(m, dtype=torch.float64)).to(dtype)
    F = torch.randn(m, r, dtype=dtype)
    W = torch.randn(B, m, dtype=dtype)
    ks = [0, 7, 30]
    dense = [spade.obc._greedy_rows(W, hinv, ks, 8, 4), spade.obc._greedy_rows.python(W, hinv, ks, 8, 4)]
    low_rank = [spade.obc._greedy_rows_low_rank(W, F, 0.5, ks), spade.obc._greedy_rows_low_rank.python(W, F, 0.5, ks)]
    for compiled, python in (dense, low_rank):
        assert len(compiled) == len(python) == len(ks)
        for (w, gone), (w_py, gone_py), k in zip(compiled, python, ks):
            assert torch.equal(w, w_py) and torch.equal(gone, gone_py)
            assert gone.sum(1).tolist() == [k] * B and bool((w[gone] == 0).all())
