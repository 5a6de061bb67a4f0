"""Sparse layer solver against independent computations."""

import math

import pytest
import torch

from spade.errors import ConfigError
from spade.solver import SOLVERS, GroupSweep, SolverConfig, output_energy, reconstruction_error, solver_for
from spade.statistics import LayerStat

DAMP = 0.01


def correlated_problem(rows=12, d=36, n=400, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=dtype) / d**0.5 + torch.eye(d, dtype=dtype)
    X = torch.randn(n, d, generator=g, dtype=dtype) @ mix  # correlated inputs
    W = torch.randn(rows, d, generator=g, dtype=dtype)
    return W, X, 2.0 / n * X.T @ X


def damped(H):
    return H + DAMP * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)


def naive_sweep(W, H, prune):
    """One column at a time, every update applied to all later columns at once (SparseGPT, no laziness)."""
    U = torch.linalg.cholesky(torch.linalg.inv(damped(H))).mT  # upper factor, U^T U = H^-1
    W = W.clone()
    for i in range(W.shape[1]):
        err = torch.where(prune[:, i], W[:, i], 0.0) / U[i, i]
        W[:, i:] -= torch.outer(err, U[i, i:])
    W[prune] = 0
    return W


def test_fixed_mask_sweep_equals_naive_one_column_sweep():
    W, _, H = correlated_problem()
    prune = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.7
    for group in (1, 4, 9):
        solved, mask, _ = solver_for().prune(W, H, 0.5, group, mask=prune)
        assert torch.equal(mask, prune)
        torch.testing.assert_close(solved, naive_sweep(W, H, prune), rtol=1e-10, atol=1e-10)


def test_prefix_mask_equals_closed_form_least_squares():
    # With every pruned column to the left of every kept one, sequential OBS is the exact optimum:
    # w_K = w_K + H_KK^-1 H_KP w_P on the damped objective.
    W, _, H = correlated_problem()
    k = 20
    prune = torch.zeros_like(W, dtype=torch.bool)
    prune[:, :k] = True
    solved, _, _ = solver_for().prune(W, H, 0.5, 1, mask=prune)
    Hd = damped(H)
    P, K = slice(0, k), slice(k, None)
    expected = torch.zeros_like(W)
    expected[:, K] = W[:, K] + W[:, P] @ Hd[P, K] @ torch.linalg.inv(Hd[K, K])
    torch.testing.assert_close(solved, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode,group", [("group", 1), ("group", 9), ("row", 9)])
def test_lazy_block_size_does_not_change_the_result(mode, group):
    W, _, H = correlated_problem(d=270)
    small = 1 if mode == "group" else 256
    a, ma, _ = solver_for(SolverConfig(mode=mode, block_size=128)).prune(W, H, 0.8, group)
    b, mb, _ = solver_for(SolverConfig(mode=mode, block_size=small)).prune(W, H, 0.8, group)
    assert torch.equal(ma, mb)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode,group", [("group", 1), ("group", 9), ("row", 1), ("obc", 1)])
@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_nonzero_sparsity_prunes_a_block_diagonal_layer_like_its_blocks_alone(mode, group, sparsity):
    # Two independent layers stacked block-diagonally (as the gated demo model widens its late blocks): counting
    # only the nonzero weights, each block must get exactly the trace it gets alone. Damping 0 so that the blocks'
    # damping (a fraction of mean diag H) is not the stacked matrix's.
    config = SolverConfig(mode=mode, row_group=18, damp=0.0, sparsity_of="nonzero")
    (Wa, _, Ha), (Wb, _, Hb) = correlated_problem(rows=6, d=18, seed=1), correlated_problem(rows=5, d=18, seed=2)
    W, H = torch.block_diag(Wa, Wb), torch.block_diag(Ha, Hb)
    solved, mask, _ = solver_for(config).prune(W, H, sparsity, group)
    alone = [solver_for(SolverConfig(mode=mode, row_group=18, damp=0.0)).prune(w, h, sparsity, group)
             for w, h in ((Wa, Ha), (Wb, Hb))]
    torch.testing.assert_close(solved, torch.block_diag(alone[0].weight, alone[1].weight), rtol=1e-9, atol=1e-9)
    off_diagonal = torch.block_diag(torch.ones_like(Wa), torch.ones_like(Wb)) == 0
    assert torch.equal(mask, off_diagonal | torch.block_diag(alone[0].mask, alone[1].mask))
    # Counted over all weights instead, a selection group spanning both blocks (every group here except a row
    # mode group, which lies inside one block's columns; an obc group is a whole row) fills its target with the
    # built-in zeros first.
    counting_all = SolverConfig(mode=mode, row_group=18, damp=0.0, sparsity_of="all")
    _, all_mask, _ = solver_for(counting_all).prune(W, H, sparsity, group)
    real_all, real_nonzero = (all_mask & ~off_diagonal).sum(), (mask & ~off_diagonal).sum()
    assert real_all < real_nonzero if mode != "row" else real_all == real_nonzero


@pytest.mark.parametrize("mode,group", [("group", 1), ("group", 9), ("row", 9), ("obc", 1)])
def test_nonzero_sparsity_equals_all_on_a_weight_without_zeros(mode, group):
    W, _, H = correlated_problem(d=36)
    a = solver_for(SolverConfig(mode=mode, row_group=18, sparsity_of="all")).prune(W, H, 0.7, group)
    b = solver_for(SolverConfig(mode=mode, row_group=18, sparsity_of="nonzero")).prune(W, H, 0.7, group)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_every_selection_group_has_exactly_the_target_fraction(sparsity):
    W, _, H = correlated_problem(rows=10, d=9 * 6)  # a 3x3 conv: 6 input channels x 9 taps
    _, mask, _ = solver_for().prune(W, H, sparsity, 9)
    per_group = mask.reshape(10, 6, 9).sum(dim=(0, 2))
    assert per_group.tolist() == [math.floor(sparsity * 90 + 1e-9)] * 6
    _, mask, _ = solver_for().prune(W, H, sparsity, 1)  # linear / 1x1: one input column
    assert mask.sum(0).tolist() == [math.floor(sparsity * 10 + 1e-9)] * W.shape[1]
    _, mask, _ = solver_for(SolverConfig(mode="row", row_group=18)).prune(W, H, sparsity)
    assert (mask.reshape(10, 3, 18).sum(2) == math.floor(sparsity * 18 + 1e-9)).all()


@pytest.mark.parametrize("seed", range(5))
def test_error_never_worse_than_magnitude_pruning(seed):
    W, X, H = correlated_problem(rows=16, d=64, seed=seed, dtype=torch.float32)
    for sparsity in (0.5, 0.8, 0.9):
        solved, _, _ = solver_for().prune(W, H, sparsity, 1)
        k = math.floor(sparsity * W.shape[0] + 1e-9)  # magnitude pruning with the same per-column count
        order = W.abs().argsort(dim=0)[:k]
        magnitude = W.clone().scatter_(0, order, 0.0)
        assert reconstruction_error(W, solved, H) < reconstruction_error(W, magnitude, H)


def test_reconstruction_error_matches_direct_computation():
    W, X, H = correlated_problem()
    Ws, _, _ = solver_for().prune(W, H, 0.7, 1)
    direct = ((Ws @ X.T - W @ X.T) ** 2).sum() / ((W @ X.T) ** 2).sum()
    assert reconstruction_error(W, Ws, H) == pytest.approx(float(direct), rel=1e-9)


@pytest.mark.parametrize("d", [40, 700, 2100])  # one block, two, eight
def test_output_energy_is_the_squared_output(d):
    gen = torch.Generator().manual_seed(d)
    X = torch.randn(d + 50, d, generator=gen, dtype=torch.float64)
    W = torch.randn(30, d, generator=gen, dtype=torch.float64)
    assert output_energy(W, X.T @ X) == pytest.approx(float(((W @ X.T) ** 2).sum()), rel=1e-9)


def test_zero_sparsity_is_bit_identical():
    W, _, H = correlated_problem(dtype=torch.float32)
    solved, mask, _ = solver_for().prune(W, H, 0.0, 9)
    assert torch.equal(solved, W) and not mask.any()


@pytest.mark.parametrize("mode", SOLVERS)
def test_degenerate_statistics_give_finite_weights(mode):
    config = SolverConfig(mode=mode)
    W, X, _ = correlated_problem(rows=8, d=30)
    H_rank2 = 2.0 / 2 * X[:2].T @ X[:2]  # two samples for 30 inputs: rank 2
    for H in (torch.zeros(30, 30, dtype=W.dtype), H_rank2):
        solved, mask, _ = solver_for(config).prune(W, H, 0.9, 1)
        assert torch.isfinite(solved).all()
        assert (solved[mask] == 0).all()
    H_dead = damped(X.T @ X)
    H_dead[:, 3] = 0
    H_dead[3, :] = 0  # input 3 never fires: its column is zeroed
    solved, _, _ = solver_for(config).prune(W, H_dead, 0.5, 1)
    assert (solved[:, 3] == 0).all() and torch.isfinite(solved).all()


@pytest.mark.parametrize("mode", SOLVERS)
def test_singular_statistics_without_dampening_are_refused(mode):
    from spade.errors import ConfigError

    W, X, _ = correlated_problem(rows=4, d=12)
    with pytest.raises(ConfigError, match="singular"):
        solver_for(SolverConfig(mode=mode, damp=0.0)).prune(W, X[:2].T @ X[:2], 0.5, 1)


def test_invalid_settings_are_refused():
    from spade.errors import ConfigError

    W, _, H = correlated_problem()
    with pytest.raises(ConfigError):
        solver_for().prune(W, H, 1.0)
    with pytest.raises(ConfigError):
        SolverConfig(mode="diagonal")


def layer_stat(W, H, name="fc"):
    """The statistics of a linear layer with weight W and Gram matrix H (one group)."""
    return LayerStat(name=name, kind="linear", weight_shape=tuple(W.shape), hessian=H.unsqueeze(0), rows=400)


def test_a_layers_factor_is_computed_once_and_gives_the_same_solution(monkeypatch):
    import spade.solver

    factorisations = []
    factor = spade.solver.inverse_hessian_factor
    monkeypatch.setattr(spade.solver, "inverse_hessian_factor",
                        lambda *args: factorisations.append(args) or factor(*args))
    W, _, H = correlated_problem()
    stat = layer_stat(W, H)
    solver = GroupSweep(SolverConfig())  # a fresh instance: nothing cached yet
    first = solver.prune_layer(W, stat, [0.6, 0.8])
    again = solver.prune_layer(W, stat, [0.6])
    assert len(factorisations) == 1
    assert torch.equal(first[0].weight, again[0].weight) and first[0].error == again[0].error
    uncached = solver.prune(W, H, 0.8, 1)
    assert len(factorisations) == 2  # prune keeps nothing
    assert torch.equal(first[1].weight, uncached.weight)
    assert first[1].error == pytest.approx(reconstruction_error(W, uncached.weight, H), rel=1e-9)
    solver.prune_layer(W, layer_stat(W, H.clone()), [0.6])  # other statistics: their own factor
    assert len(factorisations) == 3


@pytest.mark.parametrize("mode", SOLVERS)
def test_every_solver_hits_the_target_and_leaves_a_layer_alone_at_zero(mode):
    # A grouped 3x3 convolution (two groups of 4 input channels): every solver, in each group, zeroes exactly the
    # target fraction (each solver's selection groups divide the counts evenly here) and keeps the others.
    (Wa, _, Ha), (Wb, _, Hb) = correlated_problem(rows=8, d=36, seed=1), correlated_problem(rows=8, d=36, seed=2)
    weight = torch.cat([Wa, Wb]).reshape(16, 4, 3, 3)
    stat = LayerStat(name="conv", kind="conv3x3", weight_shape=tuple(weight.shape),
                     hessian=torch.stack([Ha, Hb]), rows=400)
    solver = solver_for(SolverConfig(mode=mode, row_group=12))
    levels = [0.5, 0.0, 0.75]
    pruned = solver.prune_layer(weight, stat, levels)
    for sparsity, (solved, error) in zip(levels, pruned, strict=True):
        assert solved.shape == weight.shape and solved.dtype == weight.dtype
        assert int((solved == 0).sum()) == sparsity * weight.numel()
        assert 0.0 < error < 1.0 if sparsity else error == 0.0
    assert torch.equal(pruned[1].weight, weight)
    dense = solver.prune(Wa, Ha, 0.0, 9)
    assert torch.equal(dense.weight, Wa) and not dense.mask.any() and dense.error == 0.0


def test_solvers_share_their_cache_safely_between_threads():
    from concurrent.futures import ThreadPoolExecutor

    W, _, H = correlated_problem(d=72)
    stat = layer_stat(W, H)
    solver = solver_for(SolverConfig(damp=0.02))
    assert solver_for(SolverConfig(damp=0.02)) is solver  # one instance, one cache per config
    alone = GroupSweep(SolverConfig(damp=0.02)).prune_layer(W, stat, [0.7])[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: solver.prune_layer(W, stat, [0.7])[0], range(8)))
    assert all(torch.equal(r.weight, alone.weight) and r.error == alone.error for r in results)


@pytest.mark.parametrize(("n", "block"), [(1, 4), (7, 3), (300, 128), (300, 300)])
def test_inverse_hessian_factor_blocks(n, block):
    """Diagonal blocks of the factor are those of U (U^T U = H_damped^-1, U upper); above them K U_BB, K = U^-1."""
    from spade.solver import inverse_hessian_factor

    _, _, H = correlated_problem(d=n, seed=n)
    factor, damping = inverse_hessian_factor(H, DAMP, block)
    assert damping == pytest.approx(DAMP * float(torch.diagonal(H).mean()))
    U = torch.linalg.cholesky(torch.linalg.inv(damped(H))).T
    K = torch.linalg.inv(U)
    assert torch.equal(factor, factor.triu())
    for i1 in range(0, n, block):
        B = slice(i1, i1 + block)
        torch.testing.assert_close(factor[B, B], U[B, B])
        torch.testing.assert_close(factor[:i1, B], K[:i1, B] @ U[B, B])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("group", "mode"), [(1, "group"), (9, "group"), (9, "row")])
def test_sweep_error_equals_the_output_error(dtype, group, mode):
    """The error the sweep reports equals ||W_s X - W X||^2 computed from the inputs, dead inputs included."""
    W, X, _ = correlated_problem(rows=10, d=72, seed=3)
    X[:, 5] = 0  # a dead input: its weights are dropped at no cost
    H = 2.0 / X.shape[0] * X.T @ X
    config = SolverConfig(mode=mode, row_group=18, block_size=36)
    solved, _, error = solver_for(config).prune(W.to(dtype), H.to(dtype), 0.7, group)
    direct = 2.0 / X.shape[0] * ((solved.double() - W) @ X.T).square().sum()
    assert error == pytest.approx(float(direct), rel=1e-9 if dtype == torch.float64 else 1e-4)


def test_cpu_threads_limits_the_block_and_restores_the_count_also_on_error():
    from spade.devices import cpu_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="inside"), cpu_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        with cpu_threads(4):  # never raises the count
            assert torch.get_num_threads() == 2
        with pytest.raises(ConfigError, match="at least 1"), cpu_threads(0):
            pass
    finally:
        torch.set_num_threads(before)


def test_the_sweep_runs_on_its_thread_count_and_gives_the_same_result_on_more(monkeypatch):
    import spade.solver as solver_module

    torch.manual_seed(0)
    X = torch.randn(48, 200, dtype=torch.float64)
    W, H = torch.randn(24, 48, dtype=torch.float64), X @ X.T / 200
    seen = []
    original = solver_module.sweep_blocks

    def spy(*args):
        seen.append(torch.get_num_threads())
        return original(*args)

    monkeypatch.setattr(solver_module, "sweep_blocks", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = solver_for(SolverConfig(mode="row")).prune(W, H, 0.5)
        monkeypatch.setattr(solver_module, "SOLVER_CPU_THREADS", None)
        two = solver_for(SolverConfig(mode="row")).prune(W, H, 0.5)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
    assert torch.equal(one.weight, two.weight) and torch.equal(one.mask, two.mask)
