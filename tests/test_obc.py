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
    monkeypatch.setattr(spade.obc, "MIN_BATCH_ROWS", 16 if batched else 1)
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


def test_cpu_batches_hold_a_bounded_number_of_elements():
    cpu = torch.device("cpu")
    assert spade.obc.rows_per_batch(64, cpu, torch.float32) == spade.obc.CACHE_ELEMENTS // 64**2
    assert spade.obc.rows_per_batch(1152, cpu, torch.float32) == spade.obc.MIN_BATCH_ROWS  # wider than the cache
    assert spade.obc.rows_per_batch(10**5, cpu, torch.float64) == 1  # a row wider than the budget still runs


def shared_inverse(d, n, seed, dtype=torch.float64):
    """A (d, d) inverse damped Gram matrix of n correlated samples (any d: rank-deficient Gram matrices too)."""
    _, _, H = correlated_problem(rows=1, d=d, n=n, seed=seed)
    return torch.cholesky_inverse(torch.linalg.cholesky(damped(H))).to(dtype)


@pytest.mark.parametrize("B,d,n,block,ks", [
    (1, 7, 50, 2, [0, 3, 6]),  # one row, every weight but one removed
    (5, 24, 100, 4, [6, 12, 21]),  # blocks of 4: the pending updates and the compaction run often
    (6, 40, 12, 128, [20, 36]),  # one block for the whole pass (nothing compacted); rank-deficient Gram matrix
    (4, 90, 200, 30, [10, 80]),  # blocks of a quarter of the remaining width (22, 17), then MIN_BLOCK
    (3, 61, 300, 7, [1, 30, 54]),  # a block size that divides nothing
])
def test_blocked_greedy_rows_equal_the_plain_reference(monkeypatch, B, d, n, block, ks):
    # The blocked (lazy) downdates give the plain one-at-a-time pass's choices and weights, at every snapshot.
    monkeypatch.setattr(spade.obc, "COMPACT_EVERY", block)
    if block != 30:
        monkeypatch.setattr(spade.obc, "MIN_BLOCK", block)
    hinv = shared_inverse(d, n, seed=d)
    W = torch.randn(B, d, generator=torch.Generator().manual_seed(B), dtype=torch.float64)
    fast = spade.obc.greedy_rows(W, hinv, ks)
    plain = spade.obc.greedy_rows_reference(W, hinv, ks)
    assert len(fast) == len(plain) == len(ks)
    for k, (w, gone), (w_ref, gone_ref) in zip(ks, fast, plain):
        assert torch.equal(gone, gone_ref) and (gone.sum(1) == k).all()
        assert torch.equal(w == 0, gone | (W == 0))
        torch.testing.assert_close(w, w_ref, rtol=1e-9, atol=1e-11)


def test_blocked_greedy_rows_follow_the_reference_in_float32(monkeypatch):
    monkeypatch.setattr(spade.obc, "COMPACT_EVERY", 16)
    hinv = shared_inverse(96, 400, seed=1)
    W = torch.randn(8, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (w, gone), = spade.obc.greedy_rows(W.float(), hinv.float(), [86])
    (w_ref, gone_ref), = spade.obc.greedy_rows_reference(W, hinv, [86])
    assert (gone != gone_ref).float().mean() < 0.02
    err, err_ref = [float(((x.double() - W) @ torch.linalg.inv(hinv) * (x.double() - W)).sum()) for x in (w, w_ref)]
    assert err == pytest.approx(err_ref, rel=0.01)


def low_rank_problem(rows, d, n, seed=0):
    """W (rows, d) and a Gram matrix of n < d samples: rank n, as a linear layer fed one vector per view."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(d, generator=g, dtype=torch.float64)
    return torch.randn(rows, d, generator=g, dtype=torch.float64), 2.0 / n * X.T @ X


@pytest.mark.parametrize("sparsity_of", ["nonzero", "all"])
def test_low_rank_path_equals_the_dense_pass(monkeypatch, sparsity_of):
    # A Gram matrix of rank 12 on 96 inputs takes the Woodbury path (no (d, d) matrix per row): the same masks and
    # weights as the dense pass, at every level of one pass, with dense zeros and a dead input.
    W, H = low_rank_problem(rows=9, d=96, n=12)
    W = W.masked_fill(torch.rand(W.shape, generator=torch.Generator().manual_seed(6)) < 0.1, 0.0)
    H[5, :] = H[:, 5] = 0.0
    levels = [0.2, 0.5, 0.9]
    calls = []
    low_rank = spade.obc.greedy_rows_low_rank
    monkeypatch.setattr(spade.obc, "greedy_rows_low_rank", lambda *a, **k: calls.append(1) or low_rank(*a, **k))
    fast = spade.obc.prune_rows_obc(W, H, levels, 0.01, sparsity_of)
    assert calls  # the low-rank path ran
    for level, (w, m) in zip(levels, fast):  # every lower level of the pass equals a pass to it alone
        ((w_alone, m_alone),) = spade.obc.prune_rows_obc(W, H, [level], 0.01, sparsity_of)
        assert torch.equal(m, m_alone)
        torch.testing.assert_close(w, w_alone, rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(spade.obc, "LOW_RANK_SHARE", 0.0)  # the dense pass
    dense = spade.obc.prune_rows_obc(W, H, levels, 0.01, sparsity_of)
    monkeypatch.setattr(spade.obc, "greedy_rows", spade.obc.greedy_rows_reference)
    plain = spade.obc.prune_rows_obc(W, H, levels, 0.01, sparsity_of)
    for (w, m), (w_d, m_d), (w_p, m_p) in zip(fast, dense, plain):
        assert torch.equal(m, m_d) and torch.equal(m, m_p)
        torch.testing.assert_close(w, w_d, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(w, w_p, rtol=1e-8, atol=1e-10)


def test_low_rank_factor_only_where_the_rank_is_low():
    _, H = low_rank_problem(rows=1, d=120, n=20)
    F = spade.obc.low_rank_factor(H, damping=0.01 * float(H.diagonal().mean()))
    assert F.shape == (120, 20)
    torch.testing.assert_close(F @ F.T, H, rtol=0, atol=1e-10)
    _, _, full = correlated_problem(rows=1, d=120, n=400)
    assert spade.obc.low_rank_factor(full, damping=0.01 * float(full.diagonal().mean())) is None
    assert spade.obc.low_rank_factor(H, damping=0.0) is None  # no dampening: nothing to invert through


@pytest.mark.parametrize("mode", SOLVERS)
@pytest.mark.parametrize("sparsity_of", ["nonzero", "all"])
def test_several_levels_at_once_equal_one_solve_each(monkeypatch, mode, sparsity_of):
    # The exact solver takes the lower levels as snapshots of one greedy pass (one pass per batch of rows, not one
    # per level); the sweeps solve each level in turn. Either way the results are those of separate calls, bit for
    # bit, in the order asked, 0 (the dense copy) included.
    monkeypatch.setattr(spade.obc, "CACHE_ELEMENTS", 3 * 30**2)  # batches of 3 rows
    monkeypatch.setattr(spade.obc, "MIN_BATCH_ROWS", 1)
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


def test_cost_counts_follow_the_algorithm(monkeypatch):
    from spade.obc_cost import matrix_work

    assert matrix_work(10, 64, 0.0).fma == 0 and matrix_work(10, 64, 0.01).steps == 0  # floor(0.64) = 0 removals
    # one block, nothing compacted: removal b of the block costs m * b for its column, nothing else
    monkeypatch.setattr(spade.obc, "MIN_BLOCK", 256)
    one = matrix_work(3, 100, 0.5)
    assert one.fma == 3 * 100 * 50 * 49 / 2 and one.steps == 50  # 3 rows in one batch
    # the low-rank path: m * r + 2 r^2 per removal and row, and it is taken only for a low rank
    low = matrix_work(5, 256, 0.5, rank=16)
    assert low.fma == 5 * 128 * (256 * 16 + 2 * 16**2)
    assert matrix_work(5, 256, 0.5, rank=200).fma == matrix_work(5, 256, 0.5).fma
    assert matrix_work(5, 256, 0.9).fma > matrix_work(5, 256, 0.5).fma


def test_model_cost_sums_its_target_layers():
    from torch import nn

    from spade.layers import LayerSelection
    from spade.obc_cost import in_words, matrix_work, model_work

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, groups=4), nn.Flatten(),
                          nn.Linear(256, 10))
    work = model_work(model, 0.5, views=32, selection=LayerSelection(include_depthwise=True))
    parts = [matrix_work(16, 8, 0.5), matrix_work(4, 36, 0.5), matrix_work(10, 256, 0.5, rank=32)]
    assert work.fma == parts[0].fma + 4 * parts[1].fma + parts[2].fma  # the stem is not a target; 4 groups
    assert work.steps == parts[0].steps + 4 * parts[1].steps + parts[2].steps
    assert [in_words(s) for s in (1, 12.4, 47, 130)] == ["under 5 s", "about 12 s", "about 50 s", "about 2 min"]


def test_side_by_side_estimate_schedules_the_largest_layer_first(monkeypatch):
    import spade.obc_cost
    from spade.obc_cost import ObcWork, layer_work, model_work, side_by_side_seconds

    monkeypatch.setattr(spade.obc_cost, "SECONDS_PER_GFMA", 1.0)
    works = [ObcWork(fma=s * 1e9) for s in (3, 5, 3, 4, 3)]
    # largest first, each to the worker free first: [5, 3, 3] and [4, 3, 3] ... by hand: 5 | 4, 4+3 | 5+3 | 7+3
    assert side_by_side_seconds(works, 2) == pytest.approx(10.0)
    assert side_by_side_seconds(works, 1) == pytest.approx(18.0)
    assert side_by_side_seconds(works, 8) == pytest.approx(5.0)  # never below the largest layer
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 16, 1), torch.nn.Flatten(),
                                torch.nn.Linear(16, 4))
    per_layer = layer_work(model, 0.5, views=8)
    assert sum(w.fma for w in per_layer.values()) == model_work(model, 0.5, views=8).fma and len(per_layer) == 2
