"""The sweep's loops compiled by TorchScript (`spade.sweep_kernel`) give bit for bit what the same loops give in
Python, in every selection mode; the solvers run them compiled and then sweep layers side by side."""

import pytest
import torch

from spade import sweep_kernel
from spade.solver import SOLVERS, SolverConfig, inverse_hessian_factor


def test_torchscript_compiles_the_sweep_and_the_sweeps_are_then_not_stepwise():
    assert sweep_kernel.compiled()  # else every trace's sweep runs slower, one layer at a time
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
    for sweep in (sweep_kernel.sweep_blocks, sweep_kernel.sweep_blocks_in_python):
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
