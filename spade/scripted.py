"""Solver loops compiled by TorchScript where it can, the same Python functions where not.

The solvers' inner loops are thousands of small tensor operators per layer (`spade.sweep_kernel`, `spade.obc`).
Called from Python, each call costs more than its arithmetic and holds the interpreter lock, so loops on two threads
take turns instead of running side by side. Compiled with TorchScript, the same loops run in torch's own
interpreter: fewer microseconds per operator, and the lock is released while they run, so the layer pool's workers
(`spade.layer_pool`) really solve layers at once. TorchScript is deprecated in torch 2.x but still shipped; where it
cannot compile a function, the function runs in Python with the same results. Functions wrapped here are written in
the subset of Python that TorchScript compiles, and call only such functions.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

ALL: list[Scripted] = []
"""Every `Scripted` function made so far (the tests check that each compiles and matches its Python version)."""


class Scripted:
    """A function compiled by TorchScript on its first call (once per process), or run in Python where that fails.

    python: the function itself. Calls take positional arguments only (TorchScript's calling convention). Calls whose
    first tensor argument is not on the CPU run the Python function: on a GPU the operators queue on one device
    anyway, and TorchScript's GPU fusers would compile kernels while a trace runs (untested here: no GPU yet).
    """

    def __init__(self, python: Callable[..., Any]):
        self.python = python
        self.__doc__, self.__name__ = python.__doc__, python.__name__
        self._lock = threading.Lock()
        self._compiled: Callable[..., Any] | None = None
        self._tried = False
        ALL.append(self)

    def _function(self) -> Callable[..., Any]:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
                        self._compiled = torch.jit.script(self.python)
                except Exception as error:  # any failure to compile leaves the Python function, same results
                    logger.warning("%s runs in Python: TorchScript could not compile it (%s: %s)", self.__name__,
                                   type(error).__name__, error)
        return self._compiled or self.python

    @property
    def compiled(self) -> bool:
        """Whether calls on CPU tensors run compiled (and release the interpreter lock while they run)."""
        return self._function() is not self.python

    def __call__(self, *args: Any) -> Any:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None and first.device.type != "cpu":
            return self.python(*args)
        return self._function()(*args)


def scripted(python: Callable[..., Any]) -> Scripted:
    """Decorator: `Scripted(python)`."""
    return Scripted(python)
