"""Sparse least-squares layer solvers, one layer at a time: the SparseGPT-style OBS sweep and the exact greedy solver.

Given a weight matrix W (rows x d) and the input Gram matrix H (d x d) of its layer, find W_s with
a target fraction of zeros that keeps ``||W_s X - W X||^2`` small.

The sweep (`GroupSweep`, `RowSweep`) processes columns left to right: a pruned weight's error is compensated on the
columns to its right through the upper Cholesky factor U of the damped inverse Hessian; updates to columns beyond
the current lazy block are deferred and applied as one matrix product per block (exact for any block size), solved
with U's inverse K (an ordinary Cholesky factor of H, reversed) so that U itself is only formed block by block.
Its loops are in `spade.sweep_kernel`, compiled by TorchScript on the CPU (`spade.scripted`). The exact solver
(`ExactSolver`) removes each row's weights one at a time (`spade.obc`).

`SolverConfig` is the frozen, hashable choice of solver and settings; `solver_for` returns its `LayerSolver`, one
instance per config, which keeps what it derives from layer statistics (`LayerCache`) for every caller.
"""

from __future__ import annotations

import math
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from spade.damping import damped_cholesky
from spade.devices import cpu_threads
from spade.errors import ConfigError
from spade.obc import prune_rows_obc
from spade.statistics import symmetric_blocks
from spade.sweep_kernel import sweep_blocks

if TYPE_CHECKING:
    from spade.statistics import LayerStat

SPARSITY_OF = ("all", "nonzero")
SOLVER_CPU_THREADS = 1
"""CPU threads of every solver. The sweep's steps are thousands of small operators per layer and the exact
solver's are batched products of cache-sized blocks: on a CPU, extra threads mostly wait for each other, and on
a busy machine they spin while they wait (ResNet-50's sweep at uniform 0.9 on this project's 2-core machine at
load 8-10: 80-130 s with 2 threads, 5.5-7.9 s with 1; with OMP_WAIT_POLICY=PASSIVE 8.7-21 s against 7.3-7.5 s;
at load 3-4.4: 14-32 s against 2.7-3.1 s; at load 1.6, the nearest to quiet measured: 1.9-4.4 s against 2.3 s;
`benchmarks/bench_solve_threads.py`, `benchmarks/results/solve-threads-2026-12-06*/`; Lite0's exact solve at
load 8-10: 397 s with 2 threads, 73-127 s with 1, `benchmarks/results/obc-2026-12-06/`). A trace's layers use the
other cores side by side instead (`spade.layer_pool`)."""


def _solver_threads(tensor: torch.Tensor):
    """The thread limit for solving on `tensor`'s device (none on a GPU)."""
    return cpu_threads(SOLVER_CPU_THREADS if tensor.device.type == "cpu" else None)


@dataclass(frozen=True)
class SolverConfig:
    """mode: a name in `SOLVERS`: "group" (the authors' selection groups: exactly the target fraction zeroed in each
    group of `group_size` columns over all rows) or "row" (each output row gets exactly the target
    fraction in each group of `row_group` columns, chosen adaptively during the sweep) or "obc" (the paper's exact
    solver: each output row loses its weights one at a time, always the one whose loss costs least given all earlier
    removals; `spade.obc`; 26-27 s for a Lite0 trace at 0.9 with 128 views on this project's 2-core CPU against
    under half a second for the sweeps, with its layers solved side by side by two workers,
    `benchmarks/results/scripted-ab-2026-12-07/`).
    damp: dampening added to the diagonal, as a fraction of mean(diag H).
    block_size: lazy-update block (columns); any value gives the same result up to rounding.
    sparsity_of: "nonzero" (the dense weight's zeros stay zero and the target is a fraction of its nonzero
    entries, so the trace is a sub-network of the dense one and a layer with built-in zeros, such as a
    block-diagonal one, is pruned as much as a dense one) or "all" (the authors' code: the target fraction of every
    selection group, the dense zeros included, is zeroed; the sweep's compensation can then fill a dense zero
    that the selection keeps, a connection the dense model does not have). The same result for a weight without
    zeros (weights of dead inputs, diag H == 0, count as zeros).
    refit_output: after the solve, solve the trace's last layer (a classifier head) again, on the trace's own
    features, against the dense model's outputs (`spade.refit`), so that the errors of all earlier layers do not
    change the decision. Off by default, as in the paper: it keeps every bundled photo's decision at 0.5, but made
    the maps score worse on insertion, deletion and Trojan AUC (README, "Classifier refit").
    """

    mode: str = "group"
    damp: float = 0.01
    block_size: int = 128
    row_group: int = 128
    sparsity_of: str = "nonzero"
    refit_output: bool = False

    def __post_init__(self):
        if self.mode not in SOLVERS:
            raise ConfigError(f"Unknown solver mode {self.mode!r}; choose one of {', '.join(SOLVERS)}.")
        if self.sparsity_of not in SPARSITY_OF:
            raise ConfigError(f"Unknown sparsity_of {self.sparsity_of!r}; choose one of {', '.join(SPARSITY_OF)}.")
        if self.damp < 0 or self.block_size < 1 or self.row_group < 1:
            raise ConfigError("Solver damp must be >= 0 and block sizes >= 1.")

    def to_json(self) -> dict:
        """The settings as a JSON-ready dict for a benchmark folder's identity: every field, except ``refit_output``
        when it is off, so that folders written before the field existed still match the configurations that give
        their numbers."""
        settings = asdict(self)
        if not self.refit_output:
            del settings["refit_output"]
        return settings

    @property
    def nested_levels(self) -> bool:
        """Whether one solve to a sparsity yields every lower one on the way (`LayerSolver.nested_levels`)."""
        return SOLVERS[self.mode].nested_levels


class PrunedMatrix(NamedTuple):
    """weight: the sparse (rows, d) matrix; mask: (rows, d) bool, True = pruned; error: ``||W_s X - W X||^2`` in
    the Gram matrix's units (float64 sum; 0.0 when nothing was pruned)."""

    weight: torch.Tensor
    mask: torch.Tensor
    error: float


class PrunedLayer(NamedTuple):
    """weight: the sparse layer weight (the dense weight's shape, dtype and device); error: the relative
    reconstruction error ``||W_s X - W X||^2 / ||W X||^2`` over all its groups (0.0 for a layer whose output is
    zero)."""

    weight: torch.Tensor
    error: float


Memo = Callable[[Hashable, Callable[[], Any]], Any]
"""``memo(key, compute)``: the value stored under key, or compute()'s, then stored (`LayerCache.memo`)."""


def _compute(key: Hashable, compute: Callable[[], Any]) -> Any:
    """A `Memo` that stores nothing."""
    return compute()


class LayerCache:
    """What a solver derives once from one group's statistics and reuses at any sparsity (the sweep's
    inverse-Hessian factor, the dense output energy), by `LayerStat` (held weakly: the entries go with the
    statistics) and (group, key).

    Thread-safe: app sessions share statistics and solvers. A value is computed outside the lock (two threads
    may compute the same one; both are equal, the first stored is kept and returned to both)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: weakref.WeakKeyDictionary[LayerStat, dict[Hashable, Any]] = weakref.WeakKeyDictionary()

    def get(self, stat: LayerStat, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value under (stat, key), computed and stored if missing."""
        with self._lock:
            entries = self._entries.get(stat)
            if entries is not None and key in entries:
                return entries[key]
        value = compute()
        with self._lock:
            return self._entries.setdefault(stat, {}).setdefault(key, value)

    def memo(self, stat: LayerStat, group: int) -> Memo:
        """The `Memo` of one group of a layer's statistics."""
        return lambda key, compute: self.get(stat, (group, key), compute)


def _check_sparsities(sparsities: Sequence[float]) -> None:
    for sparsity in sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"Sparsity must be in [0, 1), got {sparsity}.")


def _dense_copy(weight: torch.Tensor) -> PrunedMatrix:
    """Sparsity 0 without a mask: an exact copy of `weight`, nothing pruned."""
    return PrunedMatrix(weight.clone(), torch.zeros_like(weight, dtype=torch.bool), 0.0)


def output_energy(weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||weight X||^2`` up to the Gram scale, from H = X X^T: sum((W H) * W). weight: (rows, d); hessian: (d, d).
    The products run in the statistics' dtype, the sums in float64 (a reported figure, not part of the solve).
    H is symmetric, so only its upper block triangle is multiplied (`spade.statistics.symmetric_blocks`; with 8
    blocks, 36 of the 64 block products)."""
    w = weight.to(hessian.dtype)
    edges = symmetric_blocks(w.shape[1])
    total = torch.zeros((), dtype=torch.float64, device=w.device)
    for i in range(len(edges) - 1):
        rows_i = slice(edges[i], edges[i + 1])
        right = w[:, rows_i] @ hessian[rows_i, edges[i]:]  # (W_i H_ij) for every block j >= i at once
        products = right.double() * w[:, edges[i]:].double()
        within = edges[i + 1] - edges[i]
        total += products[:, :within].sum() + 2 * products[:, within:].sum()
    return float(total)


def _layer_rows(weight: torch.Tensor, stat: LayerStat) -> tuple[int, torch.Tensor, int]:
    """(groups, the weight as (groups, rows, d) on the statistics' device, the selection group width kh*kw)."""
    groups = stat.hessian.shape[0]
    rows = weight.detach().reshape(groups, weight.shape[0] // groups, -1).to(stat.hessian.device)
    return groups, rows, math.prod(stat.weight_shape[2:])


def _dense_energy(weight: torch.Tensor, hessian: torch.Tensor, memo: Memo) -> float:
    """`output_energy` of one group, kept in its memo."""
    return memo("dense_energy", lambda: output_energy(weight, hessian))


class LayerSolver(ABC):
    """A sparse least-squares solver of one layer's weight matrices, configured by a `SolverConfig`.

    `prune` and `prune_levels` solve one (rows, d) matrix; `prune_layer` solves a whole layer from its `LayerStat`
    and keeps what does not depend on the sparsity in the solver's `LayerCache`, so re-solving the same statistics
    at another sparsity skips it. The statistics are only read.
    """

    nested_levels: ClassVar[bool] = False
    """Whether one solve to a sparsity yields every lower one on the way, so that `prune_levels` costs what its
    highest level costs."""

    stepwise: ClassVar[bool] = False
    """Whether a solve, once `prepare_layer` has run, is thousands of small operators called from Python, one after
    the other. Python runs only one thread's operator calls at a time, so two such solves side by side take longer
    than one after the other (ResNet-50's re-solve from cached factors at 0.8 with `bench_trace.py`: 6.0 s with two
    workers, 4.5-5.9 s with one, `benchmarks/results/solve-ab-2026-12-07/`); `spade.layer_pool` then prepares
    layers on its other workers while one thread solves. The sweep is stepwise only where TorchScript cannot
    compile it (`spade.scripted`)."""

    def __init__(self, config: SolverConfig):
        self.config = config
        self.cache = LayerCache()

    def prune(self, weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, group_size: int = 1, *,
              mask: torch.Tensor | None = None, progress: Callable[[float], None] | None = None) -> PrunedMatrix:
        """Sparse solution of one weight matrix.

        weight: (rows, d) float tensor; hessian: (d, d) Gram matrix of the layer's inputs (same device).
        sparsity in [0, 1): fraction of zeros. group_size: the layer's selection group width, kh*kw for a
        convolution, 1 for linear and 1x1 layers (used by `GroupSweep`).
        mask: optional fixed (rows, d) boolean prune mask (True = zero) that replaces mask selection.
        progress: optional callback with the fraction of this matrix solved (`ExactSolver` only, whose layers can
        take minutes, reports per batch of rows).
        Returns the sparse weight (in weight's dtype), the prune mask and the output error. Sparsity 0 without a
        mask returns an exact copy of `weight`.
        """
        _check_sparsities([sparsity])
        with _solver_threads(weight):
            return self._prune(weight, hessian, sparsity, group_size, mask, progress, _compute)

    def prune_levels(self, weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float],
                     group_size: int = 1, *, progress: Callable[[float], None] | None = None) -> list[PrunedMatrix]:
        """`prune` at each of several sparsities, in their order; the same results as one call each. With
        `nested_levels` one pass to the highest yields them all, for about its cost alone.
        progress: the fraction of all of them solved."""
        _check_sparsities(sparsities)
        with _solver_threads(weight):
            return self._prune_levels(weight, hessian, sparsities, group_size, progress, _compute)

    def prune_layer(self, weight: torch.Tensor, stat: LayerStat, sparsities: Sequence[float],
                    progress: Callable[[float], None] | None = None) -> list[PrunedLayer]:
        """One layer at each of several sparsities, in their order, group by group of a grouped convolution.

        weight: the dense weight the statistics were recorded on, (out, in/groups, kh, kw) or (out, in); stat: its
        statistics (on any device: the work runs there). The selection group width is kh*kw (1 for a linear
        layer). progress: the fraction of the layer solved.
        """
        _check_sparsities(sparsities)
        groups, rows, group_size = _layer_rows(weight, stat)
        solved: list[list[torch.Tensor]] = [[] for _ in sparsities]
        errors = [0.0] * len(sparsities)
        energy = 0.0
        with _solver_threads(rows):  # once per layer: a depthwise layer has hundreds of groups
            for g in range(groups):
                memo = self.cache.memo(stat, g)
                within = None if progress is None else (lambda f, g=g: progress((g + f) / groups))
                pruned = self._prune_levels(rows[g], stat.hessian[g], sparsities, group_size, within, memo)
                for i, result in enumerate(pruned):
                    solved[i].append(result.weight)
                    errors[i] += result.error  # relative error over groups: numerator and denominator summed apart
                energy += _dense_energy(rows[g], stat.hessian[g], memo)
        return [PrunedLayer(torch.stack(parts).reshape(weight.shape).to(weight.device, weight.dtype),
                            error / energy if energy > 0 else 0.0) for parts, error in zip(solved, errors)]

    def prepare_layer(self, weight: torch.Tensor, stat: LayerStat) -> None:
        """Compute and cache what `prune_layer` derives from the statistics alone, at any sparsity (the dense output
        energy, a sweep's factorisation), so that another thread can do it ahead of the solve
        (`spade.layer_pool`). The same arguments as `prune_layer`; its results do not change."""
        groups, rows, group_size = _layer_rows(weight, stat)
        with _solver_threads(rows):
            for g in range(groups):
                memo = self.cache.memo(stat, g)
                _dense_energy(rows[g], stat.hessian[g], memo)
                self._prepare(stat.hessian[g], group_size, memo)

    def _prepare(self, hessian: torch.Tensor, group_size: int, memo: Memo) -> None:
        """`prepare_layer` for one group, beyond the dense energy: nothing by default."""
        return None

    def _prune(self, weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, group_size: int,
               mask: torch.Tensor | None, progress: Callable[[float], None] | None, memo: Memo) -> PrunedMatrix:
        if sparsity == 0.0 and mask is None:
            return _dense_copy(weight)
        return self._solve(weight, hessian, sparsity, group_size, mask, progress, memo)

    def _prune_levels(self, weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float],
                      group_size: int, progress: Callable[[float], None] | None, memo: Memo) -> list[PrunedMatrix]:
        """One `_prune` per level (sharing what `memo` keeps)."""
        results = []
        for i, sparsity in enumerate(sparsities):
            share = None if progress is None else (lambda f, i=i: progress((i + f) / len(sparsities)))
            results.append(self._prune(weight, hessian, sparsity, group_size, None, share, memo))
        return results

    @abstractmethod
    def _solve(self, weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, group_size: int,
               mask: torch.Tensor | None, progress: Callable[[float], None] | None, memo: Memo) -> PrunedMatrix:
        """`prune` for 0 < sparsity < 1 or a given mask; memo keeps what does not depend on the sparsity."""


def inverse_hessian_factor(hessian: torch.Tensor, damp: float, block: int) -> tuple[torch.Tensor, float]:
    """What the sweep needs of the damped inverse Hessian, for lazy blocks of `block` columns, and lambda.

    With U the upper Cholesky factor of (H + lambda*I)^-1 (U^T U = H_damped^-1) and K = U^-1 (upper, K K^T =
    H_damped), returns F, upper block-triangular: its diagonal blocks are U's (U_BB = K_BB^-1) and above
    them F_CB = K_CB U_BB. The sweep pulls each block's deferred update through F_CB
    (`spade.sweep_kernel.sweep_blocks`), so U's off-diagonal blocks, a d^3/3 triangular inverse, are never formed.
    K comes from one Cholesky: with J the reversal permutation and J H J = L L^T, K = J L J.

    lambda = damp*mean(diag H), raised tenfold (with a warning) while the damped matrix is not positive
    definite (numerically singular statistics). Dead inputs (diag H == 0) count with a unit diagonal. The work runs
    in `_working_dtype(hessian)`; `hessian` is only read.
    """
    d = hessian.shape[0]
    reversed_h = hessian.to(_working_dtype(hessian)).flip(0, 1)  # J H J: a copy of our own
    torch.diagonal(reversed_h).masked_fill_(torch.diagonal(reversed_h) == 0, 1.0)  # dead inputs
    lower, damping = damped_cholesky(reversed_h, damp, overwrite=True)
    factor = lower.flip(0, 1)  # K
    eye = torch.eye(block, dtype=factor.dtype, device=factor.device)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        inverse = torch.linalg.solve_triangular(factor[i1:i2, i1:i2], eye[:i2 - i1, :i2 - i1], upper=True)
        factor[:i1, i1:i2] = factor[:i1, i1:i2] @ inverse
        factor[i1:i2, i1:i2] = inverse
    return factor, damping


def _working_dtype(hessian: torch.Tensor) -> torch.dtype:
    """The sweep's dtype: float64 for float64 statistics, else float32."""
    return torch.float64 if hessian.dtype == torch.float64 else torch.float32


def _working_copy(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W^T (d, rows) in the working dtype, with the weights of dead inputs (diag H == 0) set to zero, and the (d,)
    dead mask. W^T so that every column slice of W is a contiguous row slice."""
    WT = weight.to(_working_dtype(hessian)).T.contiguous()
    dead = torch.diagonal(hessian) == 0
    if dead.any():
        WT[dead] = 0.0
    return WT, dead


class SweepSolver(LayerSolver):
    """The SparseGPT sweep: columns left to right in lazy blocks, each selection group's mask chosen from its
    weights as updated by all columns to its left. Subclasses choose the selection groups (`width`, `per_row`).

    The error comes from the sweep itself: zeroing a weight with the optimal compensation of the columns to
    its right raises ``dW H_damped dW^T`` by exactly the squared scaled error, so the scaled errors' sum is
    that quadratic form, and subtracting ``lambda * ||dW||^2`` leaves ``dW H dW^T`` (no extra d x d product).
    """

    per_row: ClassVar[bool]
    """Whether each output row gets the target fraction of each selection group, instead of the group as a whole."""

    @property
    def stepwise(self) -> bool:  # type: ignore[override]
        return not sweep_blocks.compiled

    @abstractmethod
    def width(self, group_size: int) -> int:
        """Columns per selection group for a layer whose selection group width is `group_size`."""

    def _block(self, width: int) -> int:
        """Lazy block size in columns: whole selection groups of `width` columns."""
        return max(width, self.config.block_size // width * width)

    def _factor(self, hessian: torch.Tensor, block: int, memo: Memo) -> tuple[torch.Tensor, float]:
        """`inverse_hessian_factor` of one group, kept in its memo."""
        return memo(("factor", _working_dtype(hessian), block),
                    lambda: inverse_hessian_factor(hessian, self.config.damp, block))

    def _prepare(self, hessian: torch.Tensor, group_size: int, memo: Memo) -> None:
        self._factor(hessian, self._block(self.width(group_size)), memo)

    def _solve(self, weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, group_size: int,
               mask: torch.Tensor | None, progress: Callable[[float], None] | None, memo: Memo) -> PrunedMatrix:
        WT, dead = _working_copy(weight, hessian)
        before = WT.clone()
        prune = torch.zeros_like(WT, dtype=torch.bool) if mask is None else mask.T.contiguous()
        fixed = None  # the dense weight's zeros, when they stay zero and do not count towards the target
        if mask is None and self.config.sparsity_of == "nonzero" and not WT.all():
            fixed = WT == 0
            prune |= fixed
        width = self.width(group_size)
        block = self._block(width)
        inner = max(width, 16 // width * width)  # eager updates reach only this far; the rest is deferred
        F, damping = self._factor(hessian, block, memo)
        damped_error = sweep_blocks(WT, before, F, prune, fixed, sparsity, mask is None, width, self.per_row,
                                    block, inner)
        prune |= dead.unsqueeze(1)
        WT[prune] = 0.0  # exact zeros (the sweep leaves them at rounding level)
        error = float(damped_error) - damping * float((WT - before).double().square().sum())
        return PrunedMatrix(WT.T.to(weight.dtype).contiguous(), prune.T.contiguous(), max(error, 0.0))


class GroupSweep(SweepSolver):
    """The authors' selection: exactly the target fraction zeroed in each group of the layer's `group_size` columns
    over all rows."""

    per_row = False

    def width(self, group_size: int) -> int:
        return group_size


class RowSweep(SweepSolver):
    """Each output row gets exactly the target fraction in each group of ``config.row_group`` columns."""

    per_row = True

    def width(self, group_size: int) -> int:
        return self.config.row_group


class ExactSolver(LayerSolver):
    """The exact greedy solver (`spade.obc.prune_rows_obc`): each row is one selection group; several levels come
    from one pass to the highest. It keeps nothing in its cache but the dense output energy."""

    nested_levels = True

    def _solve(self, weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, group_size: int,
               mask: torch.Tensor | None, progress: Callable[[float], None] | None, memo: Memo) -> PrunedMatrix:
        return self._obc(weight, hessian, [sparsity], mask, progress)[0]

    def _prune_levels(self, weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float],
                      group_size: int, progress: Callable[[float], None] | None, memo: Memo) -> list[PrunedMatrix]:
        positive = [s for s in sparsities if s > 0]
        solved = iter(self._obc(weight, hessian, positive, None, progress) if positive else ())
        return [next(solved) if s > 0 else _dense_copy(weight) for s in sparsities]

    def _obc(self, weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float],
             mask: torch.Tensor | None, progress: Callable[[float], None] | None) -> list[PrunedMatrix]:
        results = []
        for solved, prune in prune_rows_obc(weight, hessian, sparsities, self.config.damp, self.config.sparsity_of,
                                            mask, progress):
            delta = solved.double() - weight.double()
            error = float(((delta @ hessian.double()) * delta).sum())
            results.append(PrunedMatrix(solved.to(weight.dtype), prune, max(error, 0.0)))
        return results


SOLVERS: dict[str, type[LayerSolver]] = {"group": GroupSweep, "row": RowSweep, "obc": ExactSolver}
"""The solvers by `SolverConfig.mode`, in the order the app and the CLI offer them."""

_instances: dict[SolverConfig, LayerSolver] = {}
_instances_lock = threading.Lock()


def solver_for(config: SolverConfig = SolverConfig()) -> LayerSolver:
    """The solver of `config`: one instance per config in this process, so that its `LayerCache` serves every
    caller (every app session) that solves the same statistics with these settings."""
    with _instances_lock:
        if config not in _instances:
            _instances[config] = SOLVERS[config.mode](config)
        return _instances[config]


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
