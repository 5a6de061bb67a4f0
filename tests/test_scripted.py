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


def test_a_function_torchscript_cannot_compile_runs_in_python_with_a_warning(caplog):
    def not_scriptable(x):  # no annotations and a generator: outside TorchScript's subset
        return sum(v for v in x.tolist())

    wrapped = scripted.Scripted(not_scriptable)
    scripted.ALL.remove(wrapped)  # not one of the solvers' loops
    with caplog.at_level("WARNING", logger="spade.scripted"):
        assert not wrapped.compiled
    assert "not_scriptable runs in Python" in caplog.text
    assert wrapped(torch.tensor([1.0, 2.0, 4.0])) == 7.0


def test_sweeps_fall_back_to_one_at_a_time_where_the_sweep_runs_in_python(monkeypatch):
    import spade.solver as solver_module

    python_only = scripted.Scripted(sweep_kernel.sweep_blocks.python)
    scripted.ALL.remove(python_only)
    monkeypatch.setattr(python_only, "_tried", True)  # as if TorchScript had failed: `_compiled` stays None
    monkeypatch.setattr(solver_module, "sweep_blocks", python_only)
    torch.manual_seed(0)
    X = torch.randn(30, 200, dtype=torch.float64)
    W, H = torch.randn(8, 30, dtype=torch.float64), X @ X.T / 200
    solver = SOLVERS["group"](SolverConfig())
    assert solver.stepwise
    fallback = solver.prune(W, H, 0.6)
    monkeypatch.setattr(solver_module, "sweep_blocks", sweep_kernel.sweep_blocks)
    compiled = SOLVERS["group"](SolverConfig()).prune(W, H, 0.6)
    assert torch.equal(fallback.weight, compiled.weight) and torch.equal(fallback.mask, compiled.mask)


def test_tensors_off_the_cpu_run_the_python_function():
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    wrapped = scripted.Scripted(double)
    scripted.ALL.remove(wrapped)
    assert wrapped.compiled
    seen = []
    wrapped.python = lambda x: seen.append(x.device.type) or x * 2  # the compiled function is already made
    assert torch.equal(wrapped(torch.ones(3)), torch.full((3,), 2.0)) and seen == []
    assert wrapped(torch.ones(3, device="meta")).shape == (3,) and seen == ["meta"]
