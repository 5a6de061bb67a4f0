"""Solving a model's layers side by side on the CPU.

Given the statistics, every layer's solve is independent of the others, so the layers of a trace can be solved by
several single-threaded workers at once instead of one after the other. That is how the solvers use more than one
CPU core: inside one layer, extra threads mostly wait for each other (`spade.solver.SOLVER_CPU_THREADS`), while
workers on different layers never synchronise, so a busy machine only slows them down, never makes them spin.
Results do not depend on the number of workers or the order the layers finish in.

A stepwise solve (`LayerSolver.stepwise`: the sweep, where TorchScript cannot compile its loops, `spade.scripted`)
is the exception: after its factorisation it is thousands of small operators called from Python, which runs one
thread's operator calls at a time, so two such sweeps side by side are slower than one after the other. Its layers
are prepared (`LayerSolver.prepare_layer`: factorisation and dense energy, large products that release the
interpreter) by the other workers while the calling thread sweeps one layer at a time.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import NamedTuple

import torch

from spade.solver import LayerSolver, PrunedLayer
from spade.statistics import LayerStat

_PROGRESS_SECONDS = 0.25
"""How often the caller's progress callback hears of layers still running on workers."""


class LayerJob(NamedTuple):
    """One layer to solve: its dense weight (the statistics' shape), statistics and sparsity levels (ascending)."""

    weight: torch.Tensor
    stat: LayerStat
    levels: Sequence[float]


def cpu_workers() -> int:
    """Workers for solving on the CPU: the caller's PyTorch CPU thread count, so a process or a task limited to one
    thread (such as a Ray task) solves one layer at a time."""
    return max(1, torch.get_num_threads())


def solve_workers(jobs: Sequence[LayerJob]) -> int:
    """How many workers solve `jobs`: `cpu_workers`, at most one per layer; one on a GPU, whose kernels queue on one
    device anyway."""
    if not jobs or jobs[0].stat.hessian.device.type != "cpu":
        return 1
    return min(cpu_workers(), len(jobs))


def _work(job: LayerJob) -> float:
    """Relative cost of a layer's solve, to start the largest first: a d x d factorisation per group plus a sweep
    of every row over d columns."""
    groups, d, _ = job.stat.hessian.shape
    return groups * d**3 + job.weight.shape[0] * d**2


def _largest_first(jobs: Sequence[LayerJob]) -> list[int]:
    """The jobs' indices, the costliest first (`_work`)."""
    return sorted(range(len(jobs)), key=lambda i: -_work(jobs[i]))


def solve_layers(solver: LayerSolver, jobs: Sequence[LayerJob], workers: int = 1,
                 progress: Callable[[float], None] | None = None) -> list[list[PrunedLayer]]:
    """`solver.prune_layer` for every job, by `workers` threads: one list of `PrunedLayer` (one per level) per job,
    in the jobs' order.

    progress: the fraction of all jobs solved, always called from the calling thread (a UI callback may need it),
    several times a second while workers run. The first error raised by a job is raised here; jobs not yet started
    are cancelled and running ones finish first.
    """
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for i, job in enumerate(jobs):
            within = None if progress is None else (lambda f, i=i: progress((i + f) / len(jobs)))
            results.append(solver.prune_layer(job.weight, job.stat, job.levels, within))
            if progress is not None:
                progress((i + 1) / len(jobs))
        return results

    if solver.stepwise:
        return _sweep_while_preparing(solver, jobs, workers - 1, progress)
    done = [0.0] * len(jobs)  # each job's solved fraction: written by its worker, read here

    def run(i: int) -> list[PrunedLayer]:
        def within(fraction: float) -> None:
            done[i] = fraction

        result = solver.prune_layer(jobs[i].weight, jobs[i].stat, jobs[i].levels, within)
        done[i] = 1.0
        return result

    largest_first = _largest_first(jobs)
    with ThreadPoolExecutor(workers, thread_name_prefix="spade-solve") as pool:
        futures = {i: pool.submit(run, i) for i in largest_first}
        pending = set(futures.values())
        try:
            while pending:
                finished, pending = wait(pending, timeout=_PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                if progress is not None:
                    progress(math.fsum(done) / len(jobs))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [futures[i].result() for i in range(len(jobs))]


def _sweep_while_preparing(solver: LayerSolver, jobs: Sequence[LayerJob], helpers: int,
                           progress: Callable[[float], None] | None) -> list[list[PrunedLayer]]:
    """`solve_layers` for a stepwise solver: `helpers` threads prepare the layers, largest first, while the calling
    thread solves each prepared layer; when none is ready it prepares and solves the smallest unclaimed one itself
    rather than wait. Preparation counts as half of a layer's progress."""
    claim = threading.Lock()
    unclaimed = _largest_first(jobs)  # helpers take from the front (largest), the calling thread from the back
    ready: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()
    done = [0.0] * len(jobs)
    results: dict[int, list[PrunedLayer]] = {}

    def take(front: bool) -> int | None:
        with claim:
            return (unclaimed.pop(0) if front else unclaimed.pop()) if unclaimed else None

    def prepare(i: int) -> None:
        solver.prepare_layer(jobs[i].weight, jobs[i].stat)
        done[i] = 0.5

    def helper() -> None:
        while not stop.is_set() and (i := take(front=True)) is not None:
            try:
                prepare(i)
                ready.put((i, None))
            except BaseException as error:  # handed to the calling thread, which raises it
                ready.put((i, error))
                return

    def report() -> None:
        if progress is not None:
            progress(math.fsum(done) / len(jobs))

    def solve(i: int) -> None:
        def within(fraction: float) -> None:
            done[i] = 0.5 + 0.5 * fraction
            report()

        results[i] = solver.prune_layer(jobs[i].weight, jobs[i].stat, jobs[i].levels, within)
        done[i] = 1.0
        report()

    with ThreadPoolExecutor(helpers, thread_name_prefix="spade-prepare") as pool:
        for _ in range(helpers):
            pool.submit(helper)
        try:
            while len(results) < len(jobs):
                try:
                    i, error = ready.get_nowait()
                except queue.Empty:
                    if (i := take(front=False)) is not None:
                        prepare(i)
                        solve(i)
                        continue
                    try:
                        i, error = ready.get(timeout=_PROGRESS_SECONDS)
                    except queue.Empty:
                        report()
                        continue
                if error is not None:
                    raise error
                solve(i)
        finally:
            stop.set()
    return [results[i] for i in range(len(jobs))]

