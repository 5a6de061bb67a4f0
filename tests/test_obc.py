"""The exact greedy solver (mode "obc") against a brute-force greedy OBS and closed-form least squares."""

import math

import pytest
import torch

import spade.obc
from spade.errors import ConfigError
from spade.solver import SOLVERS, SolverConfig, reconstruction_error, solver_for
from tests.test_solver import correlated_problem, damped

OBC = SolverConfig(mode="obc")


def least_squares_on(w, H, pruned):
    """The row w with the weights in `pruned` zeroed and the others optimal for the damped objective."""
    Hd = damped(H)
    P, S = pruned.nonzero().flatten(), (~pruned).nonzero().flatten()
    out = torch.zeros_like(w)
    out[S] = w[S] + w[P] @ Hd[P][:, S] @ torch.linalg.inv(Hd[S][:, S])
    return out


def brute_force_greedy(w, H, k):
    """Remove k weights of w one at a time, each time the one whose removal (with every remaining weight
    re-solved by least squares) raises the damped error least."""
    Hd = damped(H)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    current = w
    for _ in range(k):
        best = None
        for q in (~pruned).nonzero().flatten().tolist():
            trial = pruned.clone()
            trial[q] = True
            candidate = least_squares_on(w, H, trial)
            loss = float((candidate - w) @ Hd @ (candidate - w))
            if best is None or loss < best[0]:
                best = (loss, trial, candidate)
        _, pruned, current = best
    return current, pruned


@pytest.mark.parametrize("sparsity", [0.3, 0.75])
@pytest.mark.parametrize("batched,compact_every", [(False, 32), (True, 4)])
def test_obc_equals_the_brute_force_greedy(monkeypatch, sparsity, batched, compact_every):
    # One row per batch or all in one; matrices compacted often or never: the same greedy choices.
    monkeypatch.setattr(spade.obc, "CACHE_ELEMENTS", 10**6 if batched else 1)
    monkeypatch.setattr(spade.obc, "COMPACT_EVERY", compact_every)
    W, _, H = correlated_problem(rows=4, d=24)
    solved, mask, error = solver_for(OBC).prune(W, H, sparsity, 1)
    k = math.floor(sparsity * 24)
    for i in range(W.shape[0]):
        expected, expected_mask = brute_force_greedy(W[i], H, k)
        assert torch.equal(mask[i], expected_mask)
        torch.testing.assert_close(solved[i], expected, rtol=1e-9, atol=1e-9)
    assert error == pytest.approx(reconstruction_error(W, solved, H) * float(((W @ H) * W).sum()), rel=1e-9)


def test_obc_with_a_mask_is_each_rows_least_squares_optimum():
    W, _, H = correlated_problem(rows=5, d=20)
    prune = torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.6
    solved, mask, _ = solver_for(OBC).prune(W, H, 0.5, 1, mask=prune)
    assert torch.equal(mask, prune)
    expected = torch.stack([least_squares_on(W[i], H, prune[i]) for i in range(W.shape[0])])
    torch.testing.assert_close(solved, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sparsity_of", ["nonzero", "all"])
def test_obc_gives_each_row_its_share_and_zeroes_dead_inputs(sparsity_of):
    W, _, H = correlated_problem(rows=6, d=30)
    zeros = torch.rand(W.shape, generator=torch.Generator().manual_seed(4)) < 0.2
    W = W.masked_fill(zeros, 0.0)
    H[7, :] = 0.0  # a dead input
    H[:, 7] = 0.0
    solved, mask, _ = solver_for(SolverConfig(mode="obc", sparsity_of=sparsity_of)).prune(W, H, 0.5, 1)
    assert torch.equal(solved == 0, mask) and mask[:, 7].all()
    dense_zeros = zeros.clone()
    dense_zeros[:, 7] = True
    assert mask[dense_zeros].all()  # a zero of the dense weight (or a dead input) stays zero
    if sparsity_of == "nonzero":
        candidates = (~dense_zeros).sum(1)
        assert torch.equal((mask & ~dense_zeros).sum(1), torch.floor(0.5 * candidates.double()).long())
    else:
        assert (mask.sum(1) == 15).all()  # floor(0.5 * 30), the zeros (costing nothing) among them


def test_obc_reconstructs_better_than_the_sweeps():
    # What the exact solver is for: a lower output error at the same sparsity than either sweep.
    W, _, H = correlated_problem(rows=16, d=64)
    obc = solver_for(OBC).prune(W, H, 0.7, 1).error
    assert obc < solver_for().prune(W, H, 0.7, 1).error
    assert obc < solver_for(SolverConfig(mode="row", row_group=64)).prune(W, H, 0.7, 1).error


def test_obc_in_float32_follows_float64():
    W, _, H = correlated_problem(rows=8, d=48)
    exact = solver_for(OBC).prune(W, H, 0.6, 1)
    single = solver_for(OBC).prune(W.float(), H.float(), 0.6, 1)
    assert single.weight.dtype == torch.float32
    assert (single.mask != exact.mask).float().mean() < 0.05
    assert single.error == pytest.approx(exact.error, rel=0.02)


def test_cpu_batches_stay_in_the_cache():
    cpu = torch.device("cpu")
    assert spade.obc.rows_per_batch(64, cpu, torch.float32) == spade.obc.CACHE_ELEMENTS // 64**2
    assert spade.obc.rows_per_batch(10**4, cpu, torch.float64) == 1  # a row wider than the cache still runs


@pytest.mark.parametrize("mode", SOLVERS)
@pytest.mark.parametrize("sparsity_of", ["nonzero", "all"])
def test_several_levels_at_once_equal_one_solve_each(monkeypatch, mode, sparsity_of):
    # The exact solver takes the lower levels as snapshots of one greedy pass (one pass per batch of rows, not one
    # per level); the sweeps solve each level in turn. Either way the results are those of separate calls, bit for
    # bit, in the order asked, 0 (the dense copy) included.
    monkeypatch.setattr(spade.obc, "CACHE_ELEMENTS", 3 * 30**2)  # batches of 3 rows
    monkeypatch.setattr(spade.obc, "COMPACT_EVERY", 4)
    passes = []
    greedy_rows = spade.obc.greedy_rows
    monkeypatch.setattr(spade.obc, "greedy_rows",
                        lambda W, hinv, ks: passes.append(list(ks)) or greedy_rows(W, hinv, ks))
    W, _, H = correlated_problem(rows=6, d=30)
    W = W.masked_fill(torch.rand(W.shape, generator=torch.Generator().manual_seed(5)) < 0.2, 0.0)
    H[4, :] = H[:, 4] = 0.0  # a dead input
    config = SolverConfig(mode=mode, sparsity_of=sparsity_of, row_group=10)
    levels = [0.7, 0.0, 0.3, 0.5, 0.3]
    together = solver_for(config).prune_levels(W, H, levels, 1)
    separate = [solver_for(config).prune(W, H, s, 1) for s in levels]
    for a, b in zip(together, separate, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask) and a.error == b.error
    if mode == "obc":  # a pass per batch of rows, for one level or five
        passes.clear()
        solver_for(config).prune_levels(W, H, levels, 1)
        for_all = len(passes)
        passes.clear()
        solver_for(config).prune(W, H, 0.7, 1)
        assert for_all == len(passes) >= 2
    assert config.nested_levels == (mode == "obc")
    with pytest.raises(ConfigError, match="Sparsity"):
        solver_for(config).prune_levels(W, H, [0.5, 1.0], 1)
