"""Where the lab's per-sample work runs: in this process, or as tasks on a Ray cluster, behind one small interface.

An :class:`Executor` does three things:

* ``put(obj)`` ships an object that every task needs (the model, the samples' photos, the configuration) once and
  returns a handle to it. In-process the handle is the object itself; on Ray it is a reference into Ray's object
  store, and each worker process deserialises it once and keeps it (`_resolve`), so tasks carry only their item;
* ``map(fn, shared, items)`` runs ``fn(shared_object, item)`` for every item and yields ``(index, result)`` as
  results come back (in-process: in order, one after the other, and a generator ``fn`` returns is handed over
  as it is, so its results stream; on Ray: in the order tasks finish, a generator as a list). Only the caller
  (the driver) sees the results, so it alone writes them: a task that a dead worker left half done is re-run by Ray
  and its result still arrives exactly once. With ``keep_going`` a task that failed for good (its own exception, or
  a worker that died on every retry) yields a `TaskFailed` instead of ending the run (batch: one bad image);
* ``spread(cls, shared, parts)`` builds one stateful ``cls(shared_object, part)`` per part (on Ray: one actor each,
  restarted on failure) and ``WorkerGroup.call(method, *args)`` calls a method on all of them at once, returning
  the results in part order (tuning keeps each calibration sample's statistics where they were computed).

`executor_for(None)` is the in-process executor; `executor_for("auto" | "HOST:PORT")` imports Ray (only then: the
library, the app and the in-process lab never import it) and starts a local Ray or joins a cluster.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import GeneratorType
from typing import TYPE_CHECKING, Any

from spade.errors import ConfigError

if TYPE_CHECKING:
    from spade.models import LoadedModel

log = logging.getLogger(__name__)

LOCAL = "auto"
"""The ``--ray`` value that starts a Ray on this machine instead of joining a cluster."""
MAX_RETRIES = 3
"""How often Ray re-runs a task whose worker process died (a crash, a lost node), or restarts an actor."""


@dataclass(frozen=True)
class RaySettings:
    """How to reach Ray. address: "auto" (start a local Ray) or a cluster's "HOST:PORT". cpus: CPUs of a local
    start (None: all of this machine's), ignored when joining. gpus_per_task: GPUs each task asks for (0 on the
    CPU; 1 when the model runs on a GPU). max_retries: how often a task whose worker died is re-run (and an actor
    restarted)."""

    address: str = LOCAL
    cpus: int | None = None
    gpus_per_task: float = 0.0
    max_retries: int = MAX_RETRIES

    def __post_init__(self):
        if not self.address or not self.address.strip():
            raise ConfigError("--ray needs 'auto' or a cluster address HOST:PORT.")
        if self.address != LOCAL and ":" not in self.address:
            raise ConfigError(f"--ray {self.address!r} is neither 'auto' nor an address HOST:PORT (e.g. "
                              "10.0.0.5:6379, printed by 'ray start --head').")
        if self.cpus is not None and self.cpus < 1:
            raise ConfigError(f"--ray-cpus must be at least 1, got {self.cpus}.")
        if self.cpus is not None and self.address != LOCAL:
            raise ConfigError("--ray-cpus applies to a local start (--ray auto); a cluster has the CPUs its "
                              "nodes were started with.")
        if self.gpus_per_task < 0 or self.max_retries < 0:
            raise ConfigError("GPUs per task and retries cannot be negative.")


@dataclass(frozen=True)
class TaskFailed:
    """What `Executor.map` with ``keep_going`` yields for a task that failed for good: the reason, as text."""

    reason: str


class WorkerGroup:
    """Stateful workers built by `Executor.spread`; ``call`` runs a method on all of them at once."""

    def call(self, method: str, *args) -> list:
        raise NotImplementedError

    def close(self) -> None:
        """Let the workers go (Ray: end the actors and free their CPUs)."""


class Executor:
    """Runs the lab's per-sample work; see the module docstring. ``workers``: how many tasks run at once."""

    workers: int = 1
    name: str = "in-process"

    def put(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Iterable[Any], *,
            keep_going: bool = False) -> Iterator[tuple[int, Any]]:
        """``(index, fn(shared, item))`` for every item. keep_going: a task that fails for good (an exception; on
        Ray also a worker that died on every retry) yields ``(index, TaskFailed)`` instead of ending the run."""
        for index, item in enumerate(items):
            if not keep_going:
                yield index, fn(shared, item)
                continue
            try:
                result = fn(shared, item)
            except Exception as exc:
                result = TaskFailed(f"{type(exc).__name__}: {exc}")
            yield index, result

    def spread(self, cls: type, shared: Any, parts: Sequence[Any]) -> WorkerGroup:
        return _LocalGroup([cls(shared, part) for part in parts])

    def close(self) -> None:
        """Give back what the executor started (a local Ray); nothing in-process."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LocalGroup(WorkerGroup):
    def __init__(self, members: list):
        self.members = members

    def call(self, method: str, *args) -> list:
        return [getattr(member, method)(*args) for member in self.members]


# ----------------------------------------------------------------------------------------------------------------
# Ray
_SHARED: dict[str, Any] = {}
"""In a Ray worker process: the shared objects it has deserialised, by object id (one run's worth)."""


def _resolve(box: list) -> Any:
    """The shared object behind ``box`` = [ObjectRef] (boxed so that Ray does not fetch it for every task):
    fetched from the object store on this worker's first task, then kept."""
    import ray

    key = box[0].hex()
    if key not in _SHARED:
        _SHARED.clear()  # a new run: drop the previous one's model
        _SHARED[key] = ray.get(box[0])
    return _SHARED[key]


def _run_task(fn: Callable[[Any, Any], Any], box: list, item: Any) -> Any:
    result = fn(_resolve(box), item)
    return list(result) if isinstance(result, GeneratorType) else result


class _Holder:
    """A Ray actor's body: one ``cls(shared_object, part)`` and a generic method call."""

    def __init__(self, cls: type, box: list, part: Any):
        self.member = cls(_resolve(box), part)

    def call(self, method: str, *args):
        return getattr(self.member, method)(*args)


class _RayGroup(WorkerGroup):
    def __init__(self, actors: list):
        self.actors = actors

    def call(self, method: str, *args) -> list:
        import ray

        return ray.get([actor.call.remote(method, *args) for actor in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


class RayExecutor(Executor):
    """Tasks on Ray: a local Ray started here (``address="auto"``), a cluster joined, or the Ray this process
    already runs (tests share one). ``close`` shuts down only a Ray that this executor started."""

    name = "ray"

    def __init__(self, settings: RaySettings = RaySettings()):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is pinned in requirements.txt
            raise ConfigError("--ray needs the 'ray' package (pip install 'ray==2.60.0').") from exc
        self.settings = settings
        self.started = False
        if not ray.is_initialized():
            if settings.address != LOCAL:
                check_reachable(settings.address)
            env = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
            kwargs = {"num_cpus": settings.cpus} if settings.address == LOCAL else {}
            try:
                ray.init(address="local" if settings.address == LOCAL else settings.address, runtime_env=env,
                         include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"Cannot reach Ray at {settings.address} ({exc}); start the head node with "
                                  "'ray start --head' and pass the address it prints.") from exc
            self.started = True
        resources = ray.cluster_resources()
        gpu = settings.gpus_per_task > 0
        if gpu and resources.get("GPU", 0) < settings.gpus_per_task:
            self.close()
            raise ConfigError("The model runs on a GPU but the Ray cluster has no GPU; run on --device cpu or "
                              "start the Ray nodes on GPU machines.")
        self.workers = max(1, int(resources.get("GPU", 0) // settings.gpus_per_task if gpu
                                  else resources.get("CPU", 1)))
        self.in_flight = 2 * self.workers
        self._remote = ray.remote(_run_task).options(num_cpus=1, num_gpus=settings.gpus_per_task,
                                                     max_retries=settings.max_retries, retry_exceptions=False)
        self._actor = ray.remote(_Holder).options(num_cpus=1, num_gpus=settings.gpus_per_task,
                                                  max_restarts=settings.max_retries,
                                                  max_task_retries=settings.max_retries)
        log.info("Ray at %s: %d worker(s)", settings.address, self.workers)

    def put(self, obj: Any) -> list:
        import ray

        return [ray.put(obj)]

    def map(self, fn: Callable[[Any, Any], Any], shared: list, items: Iterable[Any], *,
            keep_going: bool = False) -> Iterator[tuple[int, Any]]:
        """Submit up to ``in_flight`` tasks ahead and yield each result as its task finishes. A task's own error
        is raised here as Ray raises it (an instance of the original exception's class too), and so is a worker
        that died on every retry; tasks still pending are then cancelled. With ``keep_going`` both yield
        ``(index, TaskFailed)`` instead and the run goes on."""
        import ray
        from ray.exceptions import RayError

        queue = iter(enumerate(items))
        pending: dict[Any, int] = {}
        try:
            while True:
                while len(pending) < self.in_flight:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    pending[self._remote.remote(fn, shared, nxt[1])] = nxt[0]
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayError as exc:
                        if not keep_going:
                            raise
                        cause = getattr(exc, "cause", None)
                        result = TaskFailed(f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception)
                                            else f"the worker died on every try ({type(exc).__name__})")
                    yield index, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def spread(self, cls: type, shared: list, parts: Sequence[Any]) -> WorkerGroup:
        return _RayGroup([self._actor.remote(cls, shared, part) for part in parts])

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """ConfigError unless a TCP connection to ``address`` ("HOST:PORT") opens within ``timeout`` seconds (Ray itself
    keeps retrying an unreachable head for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--ray {address!r}: the port must be a number, e.g. HOST:6379.") from None
    try:
        socket.create_connection((host.strip("[]"), number), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"Cannot reach a Ray head node at {address} ({exc}); start one with 'ray start --head' "
                          "and pass the address it prints, or use --ray auto for a Ray on this machine.") from None


# ----------------------------------------------------------------------------------------------------------------
# Shipping a model
def portable_model(loaded: LoadedModel) -> LoadedModel:
    """A copy of ``loaded`` with its parameters on the CPU, to pickle for a machine that may have no GPU; its
    ``device`` still says where it should run (`on_worker_device`)."""
    if loaded.device.type == "cpu":
        return loaded
    return replace(loaded, model=copy.deepcopy(loaded.model).cpu())


def on_worker_device(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with its parameters on the device it should run on (the GPU Ray gave this worker, as cuda)."""
    import torch

    device = torch.device("cuda") if loaded.device.type == "cuda" else torch.device("cpu")
    if next(loaded.model.parameters()).device.type == device.type:
        return loaded
    return replace(loaded, model=loaded.model.to(device), device=device)


def executor_for(address: str | None, *, cpus: int | None = None, gpu: bool = False) -> Executor:
    """The in-process executor (``address`` None) or a `RayExecutor` (``"auto"`` or ``"HOST:PORT"``; ``gpu``:
    each task gets one GPU)."""
    if address is None:
        if cpus is not None:
            raise ConfigError("--ray-cpus needs --ray auto.")
        return Executor()
    return RayExecutor(RaySettings(address=address, cpus=cpus, gpus_per_task=1.0 if gpu else 0.0))


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous runs of near-equal length (no empty ones; order kept when chained)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out
