"""Visualizing one objective on several models at once: on the CPU, each model on its own single-threaded worker.

One optimisation step is a forward and backward pass of a single image through many small operators. On a CPU a
second thread inside those operators mostly waits for the first (as in the solvers, `spade.layer_pool`), while two
visualizations on one thread each never wait for each other. So the dense and the SPADE picture of a comparison
are optimised side by side, one thread each, as many at once as the caller has PyTorch threads. Each result is the
one `visualize` gives on one thread; the callbacks are always called from the calling thread (a UI may need that).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial

import numpy as np
from torch import nn

from spade.devices import cpu_threads, model_device
from spade.featurevis.objectives import Objective
from spade.featurevis.optimize import FeatureVisConfig, FeatureVisResult, visualize
from spade.layer_pool import cpu_workers
from spade.preprocessing import Preprocessing
from spade.progress import Progress

_POLL_SECONDS = 0.1
"""How often the calling thread passes on the workers' progress and previews."""


class _Stopped(Exception):
    """Raised inside a worker's callback once the caller has stopped waiting (its own callback raised)."""


def side_by_side_workers(models: Mapping[str, nn.Module], workers: int | None = None) -> int:
    """How many of ``models``' visualizations `visualize_each` runs at once: ``workers`` (None: the caller's PyTorch
    thread count, `spade.layer_pool.cpu_workers`), at most one per model, and 1 when a model is not on the CPU."""
    workers = cpu_workers() if workers is None else workers
    if not all(model_device(m).type == "cpu" for m in models.values()):
        return 1
    return max(1, min(workers, len(models)))


def visualize_each(models: Mapping[str, nn.Module], objective: Objective, *, preprocessing: Preprocessing,
                   config: FeatureVisConfig = FeatureVisConfig(), progress: Progress | None = None,
                   preview: Callable[[str, int, np.ndarray], None] | None = None,
                   workers: int | None = None) -> dict[str, FeatureVisResult]:
    """`visualize(model, objective, ...)` for every model, by name, with the same config and seed.

    workers: how many run at once (`side_by_side_workers`; with one, they run one after the other on the caller's
    threads). Side by side, each runs on one thread. Progress stages are prefixed with the model's name;
    ``preview(name, step, image)`` as in `visualize`. An error of any run is raised here once every run has
    stopped; so is an error of a callback, which stops the other runs at their next progress report.
    """
    workers = side_by_side_workers(models, workers)
    if workers == 1:
        return {name: visualize(m, objective, preprocessing=preprocessing, config=config,
                                progress=prefixed(progress, name),
                                preview=None if preview is None else partial(preview, name))
                for name, m in models.items()}

    events: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def run(name: str, model: nn.Module) -> FeatureVisResult:
        def report(stage: str, fraction: float) -> None:
            if stop.is_set():
                raise _Stopped
            events.put((progress, (f"{name} {stage}", fraction)))

        def show(step: int, image: np.ndarray) -> None:
            events.put((preview, (name, step, image)))

        with cpu_threads(1):
            return visualize(model, objective, preprocessing=preprocessing, config=config, progress=report,
                             preview=None if preview is None else show)

    def deliver() -> None:
        while True:
            try:
                callback, args = events.get_nowait()
            except queue.Empty:
                return
            if callback is not None:
                callback(*args)

    with ThreadPoolExecutor(workers, thread_name_prefix="spade-visualize") as pool:
        futures = {name: pool.submit(run, name, m) for name, m in models.items()}
        try:
            pending = set(futures.values())
            while pending:
                _, pending = wait(pending, timeout=_POLL_SECONDS)
                deliver()
        except BaseException:
            stop.set()
            wait(futures.values())
            raise
    return {name: future.result() for name, future in futures.items()}


def prefixed(progress: Progress | None, prefix: str) -> Progress | None:
    """``progress`` with every stage name prefixed (None stays None)."""
    if progress is None:
        return None
    return lambda stage, fraction: progress(f"{prefix} {stage}", fraction)
