"""Output refit: fit a trace's last layer to the dense model's outputs on the trace's own features.

Each layer of a trace is solved on inputs recorded on the *dense* network, so the errors of earlier layers add up
by the time they reach the classifier: on a near-tie photo (the bundled astronaut, whose top two classes differ by
0.04 in probability) they change the top-1 class at the default 0.5 with every solver. The refit removes that last
step's share: after the solve, the trace itself runs over the recorded inputs, and the last layer is solved again
at its target sparsity so that its output on the trace's features ``Z_s`` matches the dense layer's output on the
dense features ``Z_d``:

    minimise  sum_i w_i || W' z_s,i - W z_d,i ||^2   over W' with the layer's share of zeros.

The unconstrained (damped) least-squares optimum is ``W_t = W C^T (H + lambda I)^-1`` with
``H = Z_s^T diag(w) Z_s`` and ``C = Z_s^T diag(w) Z_d``. Since the objective equals ``(W' - W_t) H (W' - W_t)^T``
up to a constant, pruning ``W_t`` with the ``row`` sweep on ``H`` (which chooses the mask for the trace's features
and compensates each removed weight) solves the sparse problem as every layer's solve does. The un-augmented image
counts as much as all augmented views together (`OutputFit.weights`), so the trace keeps the dense logits on the
image it explains while the views keep the fit general. Every other layer stays as solved.

Not the paper's protocol and off by default (`SolverConfig.refit_output`): on efficientnet_lite0 it kept every
bundled photo's top-1 at 0.5, but the saliency maps of its traces scored worse on insertion, deletion and Trojan
AUC than those of the plain traces (README, "Classifier refit").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spade.damping import damped_cholesky
from spade.devices import full_float32, model_device
from spade.forward_copy import checked_forward_copy
from spade.progress import Progress
from spade.solver import SolverConfig, solver_for
from spade.statistics import OutputFit, record_inputs


@dataclass(frozen=True)
class RefitLayer:
    """weight: the refitted sparse weight (the solved layer's sparsity, its own mask). output_error: the relative error
    ``sum w ||W' z_s - W z_d||^2 / sum w ||W z_d||^2`` of the trace's output on the fit's inputs, before (the
    solved weight) and after the refit."""

    weight: torch.Tensor
    output_error_before: float
    output_error: float


def trace_features(trace_model: nn.Module, fit: OutputFit, batch_size: int = 64,
                   progress: Progress | None = None, inputs: torch.Tensor | None = None) -> torch.Tensor:
    """(N, d) float32: the inputs of ``fit.layer`` when ``trace_model`` runs over ``fit.inputs()`` (on its checked
    forward copy, `spade.forward_copy.checked_forward_copy`, as the statistics pass; on the model's device; the model
    is not modified). inputs: ``fit.inputs()`` when the caller already has them (several traces of one fit)."""
    device = model_device(trace_model)
    inputs = fit.inputs() if inputs is None else inputs
    work = checked_forward_copy(trace_model, inputs[:1].to(device))
    rows: list[torch.Tensor] = []

    def keep(_name: str, _module: nn.Module, x: torch.Tensor) -> None:
        rows.append(x.detach().reshape(-1, x.shape[-1]).float())

    n = inputs.shape[0]
    with record_inputs({fit.layer: work.get_submodule(fit.layer)}, keep), torch.inference_mode(), full_float32():
        for i in range(0, n, batch_size):
            work(inputs[i:i + batch_size].to(device))
            if progress is not None:
                progress("output refit", min(n, i + batch_size) / n)
    return torch.cat(rows)


def _weighted_error(weight: torch.Tensor, features: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> float:
    residual = features @ weight.T - target
    energy = float((w[:, None] * target.square()).sum())
    return float((w[:, None] * residual.square()).sum()) / energy if energy > 0 else 0.0


def refit_output(dense_weight: torch.Tensor, sparse_weight: torch.Tensor, sparsity: float, fit: OutputFit,
                 features: torch.Tensor, damp: float = SolverConfig.damp, sparsity_of: str = "nonzero") -> RefitLayer:
    """The refit of one (rows, d) output layer.

    dense_weight: the dense layer's weight; sparse_weight: the solved one at ``sparsity`` (kept when the refit does
    not fit better); features: (N, d) the trace's inputs to the layer on ``fit.inputs()`` (`trace_features`). The
    refit is solved by the ``row`` sweep at the same sparsity (each output row its share; `SolverConfig` explains
    damp and sparsity_of), choosing its own mask for the trace's features. Works in float64 on the weights'
    device; returns the weight in its dtype.
    """
    device = sparse_weight.device
    w = fit.weights.to(device, torch.float64)
    zs = features.to(device, torch.float64)
    zd = fit.dense.to(device, torch.float64)
    W = dense_weight.detach().to(device, torch.float64)
    target = zd @ W.T
    H = zs.T @ (w[:, None] * zs)
    cross = zs.T @ (w[:, None] * zd)
    lower, _ = damped_cholesky(H, damp)
    unconstrained = torch.cholesky_solve(cross @ W.T, lower).T
    if sparsity_of == "nonzero":
        unconstrained[W == 0] = 0.0  # the dense weight's zeros stay zero: the sweep keeps them as built-in zeros
    sweep = solver_for(SolverConfig(mode="row", damp=damp, sparsity_of=sparsity_of))
    # H scaled as the statistics are (2 / sum of weights): the sweep's dampening is relative, the scale only
    # keeps its numbers in the range the solver sees elsewhere
    refitted = sweep.prune(unconstrained.float(), (H * (2.0 / float(w.sum()))).float(), sparsity).weight
    before = _weighted_error(sparse_weight.double(), zs, target, w)
    after = _weighted_error(refitted.double(), zs, target, w)
    if after > before:  # the damped fit can lose to the solved weight on a layer it barely changes
        refitted, after = sparse_weight.detach().float(), before
    return RefitLayer(refitted.to(sparse_weight.dtype), before, after)

