"""How much work the exact solver (`spade.obc`) does on a model, and about how long it takes, from the layer shapes
alone: before any statistics exist, so that the app and the CLI can say what choosing it costs.

The counts follow the algorithm of `spade.obc` step by step (blocked downdates of each row's (m, m) inverse, or the
low-rank path for a linear layer fed fewer samples than it has inputs); the seconds come from two constants fitted to
per-layer times measured by ``benchmarks/bench_trace.py --solvers group,obc`` (see `SECONDS_PER_GFMA`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from spade import obc
from spade.layers import LayerSelection, prunable_layers
from spade.sparsity import Sparsity, resolve_targets

SECONDS_PER_GFMA = 0.06
"""Seconds per 10^9 multiply-adds of the solver's work (float32, one torch thread), fitted to the per-layer obc
times on the 2-core development machine at a quieter moment (load 3 to 4; benchmarks/results/obc-2026-12-06,
bench-quieter.log: 584 G multiply-adds per Lite0 trace at 0.9 in 33 to 36 s). While other jobs kept both cores busy
(load 8 to 10) the same solve took 73 to 127 s (a fit of 0.17)."""
SECONDS_PER_STEP = 0.0
"""Seconds per removal step of one batch of rows (the fixed cost of the step's dozen small tensor operations); the
fit on the busy machine gave it no weight (a negative value), so it is 0 until a quieter measurement."""


@dataclass(frozen=True)
class ObcWork:
    """The exact solver's work on some rows: fma, multiply-adds; bytes, an estimate of the bytes read and written
    from memory (float32); steps, removal steps summed over the batches of rows (each a round of small tensor
    operations, whatever the batch's size)."""

    fma: float = 0.0
    bytes: float = 0.0
    steps: int = 0

    def __add__(self, other: ObcWork) -> ObcWork:
        return ObcWork(self.fma + other.fma, self.bytes + other.bytes, self.steps + other.steps)

    @property
    def seconds(self) -> float:
        """The estimated solve time on a CPU like the development machine's (`SECONDS_PER_GFMA`)."""
        return self.fma / 1e9 * SECONDS_PER_GFMA + self.steps * SECONDS_PER_STEP


def matrix_work(rows: int, d: int, sparsity: float, rank: int | None = None, itemsize: int = 4) -> ObcWork:
    """The work of `spade.obc.prune_rows_obc` on a (rows, d) matrix without zeros at ``sparsity`` in [0, 1).

    rank: the rank of its Gram matrix where it is known to be low (a linear layer's samples); the low-rank path is
    counted where `spade.obc` would take it (rank <= LOW_RANK_SHARE * d), else the blocked dense one.
    """
    k = math.floor(sparsity * d + 1e-9)
    if k == 0 or rows == 0:
        return ObcWork()
    if rank is not None and d >= 64 and rank <= obc.LOW_RANK_SHARE * d:
        batch = max(1, obc.CACHE_ELEMENTS // (rank**2 + 4 * d))
        batches = math.ceil(rows / batch)
        per_step = d * rank + 2 * rank**2  # F a, and G^-1 f and its rank-one update
        traffic = (2 * rank**2 + 8 * d) * rows + d * rank * batches  # G^-1 read and written, row vectors; F
        return ObcWork(fma=float(k * rows * per_step), bytes=float(k * traffic * itemsize), steps=k * batches)
    batch = obc.rows_per_batch(d, torch.device("cpu"), torch.float32)
    batches = math.ceil(rows / batch)
    fma = traffic = 0.0
    m, done = d, 0
    while done < k:
        size = min(obc.COMPACT_EVERY, k - done)
        fma += m * size * (size - 1) / 2  # the pending updates of each removal's column
        traffic += m * size * (size - 1) / 2 + 8 * m * size  # V read for them; H's row and the row vectors
        done += size
        m -= size
        if done < k:  # compaction (a gather with an int64 index), then the block's update
            fma += m * m * size
            traffic += (1 + 1 + 2) * m * m + 2 * m * m + 2 * m * size
    return ObcWork(fma=fma * rows, bytes=traffic * rows * itemsize, steps=k * batches)


def layer_work(model: nn.Module, sparsity: Sparsity, views: int,
               selection: LayerSelection = LayerSelection()) -> dict[str, ObcWork]:
    """The exact solver's work on each target layer of ``model`` at ``sparsity`` (uniform or a profile; several
    levels nest, so a profile's or a keep-the-decision ladder's lower levels cost nothing more) with ``views``
    augmented views, by layer name. A linear layer's Gram matrix is taken to have rank min(views, d) (one input
    vector per view, as a classifier after global pooling); a convolution's to be full (every output position is a
    sample)."""
    layers = prunable_layers(model, selection)
    targets = resolve_targets(model, list(layers), sparsity)
    works = {}
    for name, module in layers.items():
        weight = module.weight
        groups = getattr(module, "groups", 1)
        d = weight[0].numel()
        rank = min(views, d) if isinstance(module, nn.Linear) else None
        one = matrix_work(weight.shape[0] // groups, d, targets[name], rank)  # a group of a grouped convolution
        works[name] = ObcWork(one.fma * groups, one.bytes * groups, one.steps * groups)
    return works


def model_work(model: nn.Module, sparsity: Sparsity, views: int,
               selection: LayerSelection = LayerSelection()) -> ObcWork:
    """The exact solver's work on every target layer together (`layer_work`)."""
    return sum(layer_work(model, sparsity, views, selection).values(), ObcWork())


def side_by_side_seconds(works: Iterable[ObcWork], workers: int) -> float:
    """Estimated wall time of solving layers of these works with `workers` side by side (`spade.layer_pool`): the
    largest first, each to the worker that is free first."""
    finish = [0.0] * max(1, workers)
    for seconds in sorted((w.seconds for w in works), reverse=True):
        finish[finish.index(min(finish))] += seconds
    return max(finish)


def in_words(seconds: float) -> str:
    """An estimate in round words: "under 5 s", "about 40 s", "about 3 min"."""
    if seconds < 5:
        return "under 5 s"
    if seconds < 100:
        return f"about {round(seconds, -1 if seconds >= 20 else 0):.0f} s"
    return f"about {round(seconds / 60):.0f} min"
