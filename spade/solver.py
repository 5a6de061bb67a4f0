"""Sparse least-squares layer solver (SparseGPT-style OBS sweep), one layer at a time.

Given a weight matrix W (rows x d) and the input Gram matrix H (d x d) of its layer, find W_s with
a target fraction of zeros that keeps ``||W_s X - W X||^2`` small. Columns are processed left to
right: a pruned weight's error is compensated on the columns to its right through the upper
Cholesky factor U of the damped inverse Hessian; updates to columns beyond the current lazy block are
deferred and applied as one matrix product per block (exact for any block size), solved with U's inverse
K (an ordinary Cholesky factor of H, reversed) so that U itself is only formed block by block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from spade.damping import damped_cholesky
from spade.errors import ConfigError
from spade.obc import prune_rows_obc

MODES = ("group", "row", "obc")
SPARSITY_OF = ("all", "nonzero")


@dataclass(frozen=True)
class SolverConfig:
    """mode: "group" (the authors' selection groups: exactly the target fraction zeroed in each
    group of `group_size` columns over all rows) or "row" (each output row gets exactly the target
    fraction in each group of `row_group` columns, chosen adaptively during the sweep) or "obc" (the paper's exact
    solver: each output row loses its weights one at a time, always the one whose loss costs least given all earlier
    removals; `spade.obc`; hundreds of times slower on a CPU).
    damp: dampening added to the diagonal, as a fraction of mean(diag H).
    block_size: lazy-update block (columns); any value gives the same result up to rounding.
    sparsity_of: "nonzero" (the dense weight's zeros stay zero and the target is a fraction of its nonzero
    entries, so the trace is a sub-network of the dense one and a layer with built-in zeros, such as a
    block-diagonal one, is pruned as much as a dense one) or "all" (the authors' code: the target fraction of every
    selection group, the dense zeros included, is zeroed; the sweep's compensation can then fill a dense zero
    that the selection keeps, a connection the dense model does not have). The same result for a weight without
    zeros (weights of dead inputs, diag H == 0, count as zeros).
    """

    mode: str = "group"
    damp: float = 0.01
    block_size: int = 128
    row_group: int = 128
    sparsity_of: str = "nonzero"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"Unknown solver mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        if self.sparsity_of not in SPARSITY_OF:
            raise ConfigError(f"Unknown sparsity_of {self.sparsity_of!r}; choose one of {', '.join(SPARSITY_OF)}.")
        if self.damp < 0 or self.block_size < 1 or self.row_group < 1:
            raise ConfigError("Solver damp must be >= 0 and block sizes >= 1.")

    @property
    def nested_levels(self) -> bool:
        """Whether one solve to a sparsity yields every lower one on the way (the exact solver's greedy path; see
        `prune_matrix_levels`)."""
        return self.mode == "obc"


class PrunedMatrix(NamedTuple):
    """weight: the sparse (rows, d) matrix; mask: (rows, d) bool, True = pruned; error: ``||W_s X - W X||^2`` in
    the Gram matrix's units (float64 sum; 0.0 when nothing was pruned)."""

    weight: torch.Tensor
    mask: torch.Tensor
    error: float


def inverse_hessian_factor(hessian: torch.Tensor, damp: float, block: int) -> tuple[torch.Tensor, float]:
    """What the sweep needs of the damped inverse Hessian, for lazy blocks of `block` columns, and lambda.

    With U the upper Cholesky factor of (H + lambda*I)^-1 (U^T U = H_damped^-1) and K = U^-1 (upper, K K^T =
    H_damped), returns F, upper block-triangular: its diagonal blocks are U's (U_BB = K_BB^-1) and above
    them F_CB = K_CB U_BB. The sweep pulls each block's deferred update through F_CB (see `prune_matrix`),
    so U's off-diagonal blocks, a d^3/3 triangular inverse, are never formed. K comes from one Cholesky:
    with J the reversal permutation and J H J = L L^T, K = J L J.

    lambda = damp*mean(diag H), raised tenfold (with a warning) while the damped matrix is not positive
    definite (numerically singular statistics). Dead inputs (diag H == 0) must already have their diagonal
    set to 1.
    """
    d = hessian.shape[0]
    lower, damping = damped_cholesky(hessian.flip(0, 1), damp)  # of J H J
    factor = lower.flip(0, 1)  # K
    eye = torch.eye(block, dtype=hessian.dtype, device=hessian.device)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        inverse = torch.linalg.solve_triangular(factor[i1:i2, i1:i2], eye[:i2 - i1, :i2 - i1], upper=True)
        factor[:i1, i1:i2] = factor[:i1, i1:i2] @ inverse
        factor[i1:i2, i1:i2] = inverse
    return factor, damping


def _select(scores: torch.Tensor, sparsity: float, per_row: bool, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (True = prune) of the lowest scores, floor(sparsity * n) of them (never a whole
    group for sparsity < 1, however small the group).

    scores: (s, rows) for one selection group (columns of W are rows here). per_row: count per
    output row (dim 1) instead of over the whole group. fixed: optional (s, rows) mask of entries that are
    pruned anyway; then n counts only the others and the lowest are chosen among them.
    """
    if fixed is not None:
        live = ~fixed
        ranks = torch.empty_like(scores, dtype=torch.long)
        if per_row:
            order = scores.masked_fill(fixed, math.inf).argsort(dim=0)
            ranks.scatter_(0, order, torch.arange(scores.shape[0], device=scores.device).unsqueeze(1).expand_as(order))
            k = torch.floor(sparsity * live.sum(0) + 1e-9)
        else:
            order = scores.masked_fill(fixed, math.inf).flatten().argsort()
            ranks.view(-1).scatter_(0, order, torch.arange(order.numel(), device=scores.device))
            k = math.floor(sparsity * int(live.sum()) + 1e-9)
        return fixed | (ranks < k)
    if per_row:
        k = math.floor(sparsity * scores.shape[0] + 1e-9)
        order = scores.topk(k, dim=0, largest=False, sorted=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(0, order, True)
    k = math.floor(sparsity * scores.numel() + 1e-9)
    order = scores.flatten().topk(k, largest=False, sorted=False).indices
    return torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device).scatter_(0, order, True).view_as(scores)


def _group_errors(w: torch.Tensor, prune: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Scaled errors of a column group swept left to right with a fixed mask.

    w: (s, rows) group weights (transposed) at the group's start; prune: (s, rows) mask; U: (s, s)
    upper block of the inverse-Hessian factor. The one-column-at-a-time recurrence
    ``e_i = prune_i * (w_i - sum_{j<i} e_j U_ji) / U_ii`` is, per output row, a lower-triangular system;
    solved by forward substitution for all rows at once, one matrix-vector product per column (faster than a
    batched triangular solve, which needs an (s, s) system per row: 1.7x for s = 9, 20x for s = 128).
    """
    scale = prune * (1.0 / torch.diagonal(U)).unsqueeze(1)
    err = torch.empty_like(w)
    torch.mul(w[0], scale[0], out=err[0])
    for i in range(1, w.shape[0]):
        torch.addmv(w[i], err[:i].T, U[:i, i], alpha=-1, out=err[i]).mul_(scale[i])
    return err


def prune_matrix(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, group_size: int = 1,
                 config: SolverConfig = SolverConfig(), mask: torch.Tensor | None = None,
                 factor_cache: dict | None = None, progress: Callable[[float], None] | None = None) -> PrunedMatrix:
    """Sparse solution of one weight matrix.

    weight: (rows, d) float tensor; hessian: (d, d) Gram matrix of the layer's inputs (same device).
    sparsity in [0, 1): fraction of zeros. group_size: selection group width in "group" mode
    (kh*kw for a convolution, 1 for linear and 1x1 layers); "row" mode uses `config.row_group`, "obc" none (each row
    is one group).
    The mask of each group is chosen from its weights as updated by all columns to its left.
    mask: optional fixed (rows, d) boolean prune mask (True = zero) that replaces mask selection.
    factor_cache: optional dict kept by the caller for this Hessian; the inverse-Hessian factor does
    not depend on the sparsity, so re-solving the same statistics reuses it (keyed by damp, dtype, block).
    progress: optional callback with the fraction of this matrix solved; only "obc" mode, whose layers can take
    minutes, reports (per batch of rows).
    Returns the sparse weight (in weight's dtype), the prune mask and the output error. Sparsity 0 without a
    mask returns an exact copy of `weight`.

    The error comes from the sweep itself: zeroing a weight with the optimal compensation of the columns to
    its right raises ``dW H_damped dW^T`` by exactly the squared scaled error, so the scaled errors' sum is
    that quadratic form, and subtracting ``lambda * ||dW||^2`` leaves ``dW H dW^T`` (no extra d x d product).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"Sparsity must be in [0, 1), got {sparsity}.")
    if sparsity == 0.0 and mask is None:
        return PrunedMatrix(weight.clone(), torch.zeros_like(weight, dtype=torch.bool), 0.0)
    if config.mode == "obc":
        return _prune_obc(weight, hessian, [sparsity], config, mask, progress)[0]
    dtype = torch.float64 if hessian.dtype == torch.float64 else torch.float32
    # Work on W^T so that every column slice of W is a contiguous row slice.
    WT = weight.to(dtype).T.contiguous()
    H = hessian.to(dtype)
    d = WT.shape[0]
    dead = torch.diagonal(H) == 0
    if dead.any():
        H = H.clone()
        H[dead, dead] = 1.0
        WT[dead] = 0.0
    before = WT.clone()
    prune = torch.zeros_like(WT, dtype=torch.bool) if mask is None else mask.T.contiguous()
    fixed = None  # the dense weight's zeros, when they stay zero and do not count towards the target
    if mask is None and config.sparsity_of == "nonzero" and not WT.all():
        fixed = WT == 0
        prune |= fixed
    per_row = config.mode == "row"
    sel = config.row_group if per_row else group_size
    block = max(sel, config.block_size // sel * sel)  # lazy blocks hold whole selection groups
    inner = max(sel, 16 // sel * sel)  # eager updates reach only this far; the rest is deferred
    key = (config.damp, dtype, block)
    cached = None if factor_cache is None else factor_cache.get(key)
    if cached is None:
        cached = inverse_hessian_factor(H, config.damp, block)
        if factor_cache is not None:
            factor_cache[key] = cached
    F, damping = cached
    diag = torch.diagonal(F).unsqueeze(1)  # U_jj
    single = sel == 1 and not per_row
    if single:
        # Per-column views and Python numbers made once: a one-column step is a handful of small operations,
        # so the indexing around them is a large part of its cost.
        columns, column_masks = WT.unbind(0), prune.unbind(0)
        scales = (1.0 / diag).flatten().tolist()
        candidates = [WT.shape[1]] * d if fixed is None else (~fixed).sum(1).tolist()  # per column
        k_columns = [math.floor(sparsity * n + 1e-9) for n in candidates]

    # Indices into U (the current block's diagonal block of the factor) are counted from the block start i1.
    def column_step(j: int, s2: int, err: torch.Tensor, u_rows: tuple[torch.Tensor, ...], i1: int) -> None:
        # One-column group (linear, 1x1): the lowest |w| of the column are the lowest w^2 / U_jj^2.
        w, pruned = columns[j], column_masks[j]
        if mask is None:
            scores = w.abs() if fixed is None else w.abs().masked_fill(pruned, math.inf)  # pruned: the fixed zeros
            pruned.index_fill_(0, scores.topk(k_columns[j], largest=False, sorted=False).indices, True)
        torch.mul(w, pruned, out=err).mul_(scales[j])
        WT[j:s2].addr_(u_rows[j - i1][j - i1:s2 - i1], err, alpha=-1)

    def group_step(g1: int, g2: int, s2: int, U: torch.Tensor, i1: int) -> torch.Tensor:
        current = WT[g1:g2]
        if mask is None:
            prune[g1:g2] = _select(current**2 / diag[g1:g2] ** 2, sparsity, per_row,
                                   None if fixed is None else fixed[g1:g2])
        err = _group_errors(current, prune[g1:g2], U[g1 - i1:g2 - i1, g1 - i1:g2 - i1])
        WT[g1:s2].addmm_(U[g1 - i1:g2 - i1, g1 - i1:s2 - i1].T, err, alpha=-1)
        return err

    # Column k receives (Err U)_k from the swept columns' scaled errors Err. Rather than pushing each block's
    # errors to all later columns through U's off-diagonal blocks, a block B pulls its share when it comes:
    # with C the columns before B, Z_C = (Err U)_C is all that C received, W_C before minus after the sweep, and
    # Z K = Err (K = U^-1 upper) with Err_B = 0 so far, so B has received -(Z_C K_CB) U_BB = -Z_C F_CB.
    # The same products as pushing.
    swept = torch.empty_like(WT)  # Z transposed like WT, filled block by block
    damped_error = torch.zeros((), dtype=torch.float64, device=WT.device)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        U = F[i1:i2, i1:i2]
        WT[i1:i2].addmm_(F[:i1, i1:i2].T, swept[:i1])
        Err = torch.empty(i2 - i1, WT.shape[1], dtype=dtype, device=WT.device)
        u_rows = U.unbind(0)
        for s1 in range(i1, i2, inner):
            s2 = min(s1 + inner, i2)
            if single:
                for j, err in enumerate(Err[s1 - i1:s2 - i1].unbind(0), start=s1):
                    column_step(j, s2, err, u_rows, i1)
            else:
                for g1 in range(s1, s2, sel):
                    g2 = min(g1 + sel, s2)
                    Err[g1 - i1:g2 - i1] = group_step(g1, g2, s2, U, i1)
            if s2 < i2:
                WT[s2:i2].addmm_(U[s1 - i1:s2 - i1, s2 - i1:].T, Err[s1 - i1:s2 - i1], alpha=-1)
        damped_error += Err.double().square().sum()
        torch.sub(before[i1:i2], WT[i1:i2], out=swept[i1:i2])
    prune |= dead.unsqueeze(1)
    WT[prune] = 0.0  # exact zeros (the sweep leaves them at rounding level)
    error = float(damped_error) - damping * float((WT - before).double().square().sum())
    return PrunedMatrix(WT.T.to(weight.dtype).contiguous(), prune.T.contiguous(), max(error, 0.0))


def _prune_obc(weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float], config: SolverConfig,
               mask: torch.Tensor | None = None, progress: Callable[[float], None] | None = None) -> list[PrunedMatrix]:
    results = []
    for solved, prune in prune_rows_obc(weight, hessian, sparsities, config.damp, config.sparsity_of, mask, progress):
        delta = solved.double() - weight.double()
        error = float(((delta @ hessian.double()) * delta).sum())
        results.append(PrunedMatrix(solved.to(weight.dtype), prune, max(error, 0.0)))
    return results


def prune_matrix_levels(weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float], group_size: int = 1,
                        config: SolverConfig = SolverConfig(), factor_cache: dict | None = None,
                        progress: Callable[[float], None] | None = None) -> list[PrunedMatrix]:
    """`prune_matrix` at each of several sparsities, in their order; the same results as one call each.

    With ``config.nested_levels`` (the exact solver) one pass to the highest sparsity yields them all, for about
    the cost of the highest alone; the sweeps solve each in turn (sharing the factorisation through factor_cache).
    progress: the fraction of all of them solved.
    """
    for sparsity in sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"Sparsity must be in [0, 1), got {sparsity}.")
    if config.nested_levels:
        positive = [s for s in sparsities if s > 0]
        solved = iter(_prune_obc(weight, hessian, positive, config, progress=progress) if positive else ())
        return [next(solved) if s > 0 else prune_matrix(weight, hessian, 0.0) for s in sparsities]
    results = []
    for i, sparsity in enumerate(sparsities):
        share = None if progress is None else (lambda f, i=i: progress((i + f) / len(sparsities)))
        results.append(prune_matrix(weight, hessian, sparsity, group_size, config, factor_cache=factor_cache,
                                    progress=share))
    return results


def reconstruction_error(weight: torch.Tensor, sparse_weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative error ``||W_s X - W X||^2 / ||W X||^2`` computed from the Gram matrix H = X X^T.

    weight, sparse_weight: (rows, d); hessian: (d, d). Returns 0.0 for a layer whose output is zero.
    """
    H = hessian.to(torch.float64)
    W = weight.to(H)
    delta = sparse_weight.to(H) - W
    num = ((delta @ H) * delta).sum()
    den = ((W @ H) * W).sum()
    return float(num / den) if den > 0 else 0.0
