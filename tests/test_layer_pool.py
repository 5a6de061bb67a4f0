"""Layers solved side by side (`spade.layer_pool`): the same results as one after the other, progress from the
caller's thread, errors raised, as many workers as the caller's threads."""

import threading

import pytest
import torch

import spade.solver
from spade.augment import AugmentConfig
from spade.devices import cpu_threads
from spade.layer_pool import LayerJob, cpu_workers, solve_layers, solve_workers
from spade.solver import SOLVERS, GroupSweep, SolverConfig, solver_for
from spade.trace import prepare_statistics, solve
from tests.test_trace import PRE, photo
from tests.tiny_models import tiny_resnet


class StepwiseSweep(GroupSweep):
    stepwise = True  # as where TorchScript cannot compile the sweep (`spade.sweep_kernel`)


@pytest.fixture(scope="module")
def stats():
    return prepare_statistics(tiny_resnet(), photo(), preprocessing=PRE, augment_config=AugmentConfig(count=4))


def jobs_of(stats, levels=(0.5, 0.8)):
    modules = dict(stats.model.named_modules())
    return [LayerJob(modules[name].weight.detach(), stat, list(levels)) for name, stat in stats.layers.items()]


@pytest.mark.parametrize("mode", list(SOLVERS))
def test_workers_give_the_results_of_one_layer_after_the_other(stats, mode):
    jobs = jobs_of(stats)
    one = solve_layers(solver_for(SolverConfig(mode=mode)), jobs, workers=1)
    # a fresh solver, so that no factor cached by the first run is reused
    side_by_side = solve_layers(SOLVERS[mode](SolverConfig(mode=mode)), jobs, workers=3)
    assert len(side_by_side) == len(jobs)
    for a, b, job in zip(one, side_by_side, jobs):
        assert [torch.equal(x.weight, y.weight) for x, y in zip(a, b)] == [True, True]
        assert [x.error for x in a] == [y.error for y in b]
        assert a[0].weight.shape == job.weight.shape and not torch.equal(a[0].weight, a[1].weight)


def test_a_trace_does_not_depend_on_the_thread_count(stats):
    with cpu_threads(1):
        alone = solve(stats, 0.7, SolverConfig(mode="row"))
    assert solve_workers(jobs_of(stats)) == min(torch.get_num_threads(), len(stats.layers))
    together = solve(stats, 0.7, SolverConfig(mode="row"))
    assert alone.layers == together.layers
    assert all(torch.equal(w, together.sparse_weights[k]) for k, w in alone.sparse_weights.items())


# workers side by side; a stepwise sweep with preparing helpers
@pytest.mark.parametrize("solver", [SOLVERS["obc"], GroupSweep, StepwiseSweep])
def test_progress_comes_from_the_calling_thread_and_reaches_one(stats, solver):
    caller = threading.get_ident()
    seen = []
    solve_layers(solver(SolverConfig(mode="obc" if solver is SOLVERS["obc"] else "group")), jobs_of(stats), workers=2,
                 progress=lambda f: seen.append((threading.get_ident(), f)))
    assert {ident for ident, _ in seen} == {caller}
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_an_error_in_one_layer_is_raised_and_nothing_hangs(stats):
    jobs = jobs_of(stats)
    wrong = jobs[1]._replace(weight=torch.zeros(3, 5))  # cannot be this layer's weight
    with pytest.raises(RuntimeError):
        solve_layers(solver_for(SolverConfig()), [jobs[0], wrong, *jobs[2:]], workers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith(("spade-solve", "spade-prepare"))]


def test_a_stepwise_solver_is_prepared_by_helpers_and_swept_on_the_calling_thread_one_layer_at_a_time(
        stats, monkeypatch):
    caller = threading.get_ident()
    events, sweeping = [], []
    factor = spade.solver.inverse_hessian_factor
    monkeypatch.setattr(spade.solver, "inverse_hessian_factor",
                        lambda *a: events.append(("factor", threading.get_ident())) or factor(*a))

    class Recording(StepwiseSweep):
        def prepare_layer(self, weight, stat):
            super().prepare_layer(weight, stat)
            events.append(("prepared", stat.name))

        def prune_layer(self, weight, stat, sparsities, progress=None):
            sweeping.append(stat.name)
            assert len(sweeping) == 1, "two layers swept at once"
            assert ("prepared", stat.name) in events, "swept before its preparation finished"
            events.append(("swept", stat.name, threading.get_ident()))
            try:
                return super().prune_layer(weight, stat, sparsities, progress)
            finally:
                sweeping.remove(stat.name)

    jobs = jobs_of(stats)
    solve_layers(Recording(SolverConfig()), jobs, workers=3)
    assert sorted(e[1] for e in events if e[0] == "prepared") == sorted(stats.layers)  # each layer once
    assert {e[2] for e in events if e[0] == "swept"} == {caller}
    factors = [e for e in events if e[0] == "factor"]  # which thread computed them depends on timing
    assert len(factors) == len(jobs)  # once per layer: the sweep reused what the preparation cached


def test_as_many_workers_as_the_callers_threads_and_layers(stats):
    jobs = jobs_of(stats)
    with cpu_threads(1):
        assert solve_workers(jobs) == 1 and cpu_workers() == 1
    assert cpu_workers() == torch.get_num_threads()
    assert solve_workers(jobs[:1]) == 1 and solve_workers([]) == 1
    assert solve_workers(jobs) == min(torch.get_num_threads(), len(jobs))
