"""Dampening of a layer's Gram matrix, shared by the solvers."""

from __future__ import annotations

import logging

import torch

from spade.errors import ConfigError

log = logging.getLogger(__name__)


def damped_cholesky(hessian: torch.Tensor, damp: float, *, overwrite: bool = False) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of ``hessian + lambda * I`` and lambda.

    hessian: (d, d) symmetric, float32 or float64, dead inputs' diagonal already set to 1. lambda =
    damp * mean(diag H), raised tenfold (with a warning) while the damped matrix is not positive definite
    (numerically singular statistics); a ConfigError after five raises. overwrite: the damping may be added to
    `hessian` itself (a caller's own copy) instead of to a clone.
    """
    mean_diag = float(torch.diagonal(hessian).mean().clamp_min(torch.finfo(hessian.dtype).tiny))
    damped = hessian if overwrite else hessian.clone()
    damping = 0.0
    for attempt in range(6):
        torch.diagonal(damped).add_(damp * 10**attempt * mean_diag - damping)
        damping = damp * 10**attempt * mean_diag
        lower, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            if attempt:
                log.warning("statistics were near-singular; dampening raised to %g", damp * 10**attempt)
            return lower, damping
    raise ConfigError("Layer statistics are singular even after heavy dampening.")
