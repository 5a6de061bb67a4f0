"""App-side orchestration of the expensive library calls: an LRU store shared by all sessions
(statistics, traces, attributions); ``spade_app.runner`` runs them with progress in ``st.status``, one session
at a time per work slot (``spade_app.work_queue``).

Why not ``st.cache_resource`` on the functions directly: Streamlit replays the elements a cached
function draws and forbids drawing into containers created outside it, but the per-stage progress of
a run must be drawn into the page's ``st.status`` box. The store itself *is* a cache resource, so it
is shared across sessions and survives reruns; objects in it are never mutated.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import replace
from typing import Any

import streamlit as st
import torch

from spade.augment import AugmentConfig, augment
from spade.decision import KeepDecision
from spade.models import LoadedModel
from spade.progress import Progress
from spade.saliency import METHODS
from spade.solver import SolverConfig
from spade.sparsity import Sparsity
from spade.statistics import LayerStatistics
from spade.trace import DecisionTrace, SpadeTrace, prepare_statistics, solve_keeping_decision


class LRUStore:
    """Thread-safe least-recently-used map with a per-kind capacity (values are never copied)."""

    def __init__(self, capacity: dict[str, int]):
        self._capacity = capacity
        self._data: dict[str, OrderedDict] = {kind: OrderedDict() for kind in capacity}
        self._lock = threading.Lock()
        self._computing: dict[tuple, list] = {}  # (kind, key) -> [its lock, how many hold or wait for it]

    def get(self, kind: str, key: Hashable) -> Any | None:
        with self._lock:
            table = self._data[kind]
            if key not in table:
                return None
            table.move_to_end(key)
            return table[key]

    def put(self, kind: str, key: Hashable, value: Any) -> None:
        with self._lock:
            table = self._data[kind]
            table[key] = value
            table.move_to_end(key)
            while len(table) > self._capacity[kind]:
                table.popitem(last=False)

    @contextlib.contextmanager
    def computing(self, kind: str, key: Hashable) -> Iterator[None]:
        """Hold the one lock of (kind, key) while computing its value: a second session that asks for the same
        value waits for the first's (then finds it stored) instead of computing and holding a copy."""
        with self._lock:
            entry = self._computing.setdefault((kind, key), [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._computing[(kind, key)]

    def clear(self) -> None:
        with self._lock:
            for table in self._data.values():
                table.clear()


@st.cache_resource
def store() -> LRUStore:
    """The process-wide store (a few statistics sets are ~100 MB each for large models)."""
    return LRUStore({"statistics": 3, "trace": 6, "attribution": 64})


#: Images per forward pass of the statistics: small enough that its progress moves every second or two on a 2-core
#: CPU (the Gram matrices accumulate the same sums in any batch size).
STATISTICS_BATCH = 16


def statistics_key(model_key: str, image_key: str, cfg: AugmentConfig) -> tuple:
    return (model_key, image_key, cfg)


def get_statistics(model_key: str, image_key: str, loaded: LoadedModel, image, cfg: AugmentConfig,
                   progress: Progress | None = None) -> tuple[LayerStatistics, bool]:
    """Layer statistics for (model, image, augmentation settings): (statistics, computed_now)."""
    key = statistics_key(model_key, image_key, cfg)
    cached = store().get("statistics", key)
    if cached is not None:
        return cached, False
    with store().computing("statistics", key):  # with several work slots, two sessions never compute one set twice
        cached = store().get("statistics", key)
        if cached is not None:
            return cached, False
        stats = prepare_statistics(loaded.model, image, preprocessing=loaded.preprocessing, augment_config=cfg,
                                   selection=loaded.spec.layer_selection, batch_size=STATISTICS_BATCH,
                                   progress=progress)
        store().put("statistics", key, stats)
    return stats, True


def trace_key(stats_key: tuple, sparsity_key: Hashable, solver: SolverConfig) -> tuple:
    return (stats_key, sparsity_key, solver)


class _StoredTraces:
    """The store's traces of one statistics set and solver, by sparsity (a `spade.trace.TraceCache`).
    Remembers whether anything was stored (computed) through it."""

    def __init__(self, stats_key: tuple, solver: SolverConfig):
        self.stats_key, self.solver, self.stored = stats_key, solver, False

    def get(self, sparsity: Sparsity) -> SpadeTrace | None:
        return store().get("trace", trace_key(self.stats_key, sparsity, self.solver))

    def __setitem__(self, sparsity: Sparsity, trace: SpadeTrace) -> None:
        store().put("trace", trace_key(self.stats_key, sparsity, self.solver), trace)
        self.stored = True


def get_trace_keeping_decision(stats_key: tuple, stats: LayerStatistics, sparsity: Sparsity, decision: KeepDecision,
                               solver: SolverConfig, progress: Progress | None = None
                               ) -> tuple[DecisionTrace, bool]:
    """The trace at ``sparsity``, lowered along ``decision`` until it keeps the dense top-1 class
    (`spade.trace.solve_keeping_decision` with the store as cache, each sparsity its own key; re-solving never
    redoes statistics): (the trace with its requested and used sparsity, whether any trace was computed now)."""
    cache = _StoredTraces(stats_key, solver)
    kept = solve_keeping_decision(stats, sparsity, solver, progress, decision=decision, cache=cache)
    return kept, cache.stored


def get_trace(model_key: str, image_key: str, loaded: LoadedModel, image, cfg: AugmentConfig, sparsity: Sparsity,
              decision: KeepDecision, solver: SolverConfig, progress: Progress | None = None
              ) -> tuple[DecisionTrace, bool, bool]:
    """`get_statistics` then `get_trace_keeping_decision` on them: (the trace with its requested and used
    sparsity, statistics computed now, a trace computed now)."""
    stats, fresh_stats = get_statistics(model_key, image_key, loaded, image, cfg, progress)
    kept, fresh_trace = get_trace_keeping_decision(statistics_key(model_key, image_key, cfg), stats, sparsity,
                                                   decision, solver, progress)
    return kept, fresh_stats, fresh_trace


def cached_trace(model_key: str, image_key: str, cfg: AugmentConfig, sparsity: Sparsity, decision: KeepDecision,
                 solver: SolverConfig) -> tuple[DecisionTrace, bool, bool] | None:
    """`get_trace`'s result when the store already holds everything it needs (the statistics and every trace of
    the back-off ladder up to the first that keeps the decision), so that a rerun needs no work slot; else None."""
    stats_key = statistics_key(model_key, image_key, cfg)
    stats = store().get("statistics", stats_key)
    if stats is None:
        return None
    for candidate in decision.candidates(sparsity):
        trace = store().get("trace", trace_key(stats_key, candidate, solver))
        if trace is None:
            return None
        if trace.top1_agrees:
            break
    kept, _ = get_trace_keeping_decision(stats_key, stats, sparsity, decision, solver)
    return kept, False, False


@st.cache_data(show_spinner=False, max_entries=16)
def augmentation_preview(model_key: str, image_key: str, cfg: AugmentConfig, _loaded: LoadedModel, _image,
                         n: int = 6) -> list:
    """`n` views with the same settings (and seed) as the run's first `n` augmentations, as uint8 HxWx3
    (the model's crop size, hence `model_key` in the cache key)."""
    views = augment(_image, replace(cfg, count=n), _loaded.preprocessing)
    return [_loaded.preprocessing.to_uint8(v) for v in views]


def get_attribution(model_key: Hashable, model: torch.nn.Module, x: torch.Tensor, method: str, target: int,
                    settings: Any, progress: Progress | None = None):
    """`spade.saliency` attribution of `model` (identified by `model_key`: the dense model or a trace's key)."""
    key = (model_key, method, int(target), settings)
    cached = store().get("attribution", key)
    if cached is not None:
        return cached
    attribution = METHODS[method].explain(model, x, target, settings, progress=progress)
    store().put("attribution", key, attribution)
    return attribution
