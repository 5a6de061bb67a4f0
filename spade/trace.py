"""The SPADE trace: a per-sample sparse copy of a model, with a report that shows it is faithful."""

from __future__ import annotations

import copy
import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from torch import nn

from spade.augment import AugmentConfig, augment
from spade.decision import KeepDecision
from spade.devices import model_device, resolve_device
from spade.errors import ConfigError
from spade.layer_pool import LayerJob, solve_layers, solve_workers
from spade.layers import LayerSelection, block_of
from spade.prediction import Prediction, top_k
from spade.preprocessing import Preprocessing
from spade.progress import Progress
from spade.refit import refit_output, trace_features
from spade.solver import SolverConfig, reconstruction_error, solver_for
from spade.sparsity import Sparsity, SparsityProfile, resolve_targets
from spade.statistics import LayerStatistics, OutputFit, collect_statistics, record_inputs

log = logging.getLogger(__name__)

FORMAT = "spade-trace/1"


@dataclass(frozen=True)
class LayerReport:
    """One pruned layer: target and achieved sparsity (as fractions of the weights the solver's ``sparsity_of``
    counts), and the relative reconstruction error ``||W_s X - W X||^2 / ||W X||^2`` on the augmentations.
    params, kept: all weights of the layer and the trace's nonzero ones."""

    name: str
    block: str
    kind: str
    weight_shape: tuple[int, ...]
    target: float
    achieved: float
    error: float
    params: int
    kept: int


def _top5_json(predictions: list[Prediction] | None) -> dict | None:
    """``{"indices": [...], "probabilities": [...]}`` (probabilities rounded to 6 digits), the report's layout."""
    if predictions is None:
        return None
    return {"indices": [p.index for p in predictions], "probabilities": [round(p.probability, 6) for p in predictions]}


@dataclass
class SpadeTrace:
    """A sparse copy of the dense model fitted to one sample.

    model: the sparse copy (same module names as the dense model, eval mode) usable anywhere a
    model is. layers: per-layer report. dense_logits / trace_logits: (1, classes) logits on the
    un-augmented image, when known. sparse_weights: {layer name: sparse weight} (what save stores).
    """

    model: nn.Module
    layers: list[LayerReport]
    sparse_weights: dict[str, torch.Tensor]
    dense_logits: torch.Tensor | None = None
    trace_logits: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def params_total(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def params_kept(self) -> int:
        return sum(r.kept for r in self.layers)

    @property
    def pruned_layers(self) -> list[LayerReport]:
        """The reports of the layers the trace prunes (target above 0); ``layers`` has every target layer."""
        return [r for r in self.layers if r.target > 0]

    @property
    def pruned_params(self) -> tuple[int, int]:
        """(kept, total) weights of `pruned_layers`: what a reader means by "weights kept" when a profile leaves
        most layers dense (``params_kept``/``params_total`` count every target layer)."""
        pruned = self.pruned_layers
        return sum(r.kept for r in pruned), sum(r.params for r in pruned)

    @property
    def dense_top5(self) -> list[Prediction] | None:
        """The dense model's 5 most probable classes on the un-augmented image (names ``""``: see `Prediction`)."""
        return None if self.dense_logits is None else top_k(self.dense_logits)

    @property
    def trace_top5(self) -> list[Prediction] | None:
        """The trace's 5 most probable classes on the un-augmented image (names ``""``)."""
        return None if self.trace_logits is None else top_k(self.trace_logits)

    @property
    def requested_sparsity(self):
        """The sparsity the trace was asked for, as its settings record it (``settings["sparsity"]`` is the one it
        has; they differ when `solve_keeping_decision` lowered it)."""
        return self.settings.get("requested_sparsity", self.settings["sparsity"])

    @property
    def top1_agrees(self) -> bool | None:
        if self.dense_logits is None or self.trace_logits is None:
            return None
        return int(self.dense_logits.argmax()) == int(self.trace_logits.argmax())

    @property
    def logit_cosine(self) -> float | None:
        if self.dense_logits is None or self.trace_logits is None:
            return None
        return float(torch.nn.functional.cosine_similarity(
            self.dense_logits.double().flatten(), self.trace_logits.double().flatten(), dim=0))

    def to_dict(self) -> dict:
        """JSON-ready summary: settings, per-layer table, predictions, overall numbers, timings."""
        return {
            "format": FORMAT,
            "settings": self.settings,
            "layers": [asdict(r) for r in self.layers],
            "params_total": self.params_total,
            "params_kept": self.params_kept,
            "dense_top5": _top5_json(self.dense_top5),
            "trace_top5": _top5_json(self.trace_top5),
            "top1_agrees": self.top1_agrees,
            "logit_cosine": self.logit_cosine,
            "seconds": self.seconds,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """Plain-text per-layer table (for the CLI and logs)."""
        lines = [f"{'layer':<28} {'kind':<14} {'target':>6} {'achieved':>8} {'rel.error':>9}"]
        for r in self.layers:
            lines.append(f"{r.name:<28} {r.kind:<14} {r.target:>6.2f} {r.achieved:>8.3f} {r.error:>9.4f}")
        total = self.params_total or 1
        lines.append(f"kept {self.params_kept:,} of {self.params_total:,} pruned-layer weights "
                     f"({self.params_kept / total:.1%})")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Store the sparse weights and the report (plain tensors and JSON types: weights_only-safe)."""
        torch.save({"format": FORMAT, "weights": {k: v.cpu() for k, v in self.sparse_weights.items()},
                    "report": self.to_json(indent=None),
                    "dense_logits": self.dense_logits, "trace_logits": self.trace_logits}, path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> SpadeTrace:
        """Rebuild a saved trace on top of its dense `model` (which is not modified)."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt or unsafe files
            raise ConfigError(f"Cannot read trace file {Path(path).name}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{Path(path).name} is not a SPADE trace file.")
        report = json.loads(data["report"])
        trace_model = _sparse_copy(model, data["weights"])
        layers = [LayerReport(**{**r, "weight_shape": tuple(r["weight_shape"])}) for r in report["layers"]]
        return cls(model=trace_model, layers=layers, sparse_weights=data["weights"],
                   dense_logits=data["dense_logits"], trace_logits=data["trace_logits"],
                   seconds=report["seconds"], settings=report["settings"])


def _sparse_copy(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    trace_model = copy.deepcopy(model).eval()
    modules = dict(trace_model.named_modules())
    for name, weight in weights.items():
        module = modules.get(name)
        if module is None or module.weight.shape != weight.shape:
            raise ConfigError(f"Trace layer {name} does not match this model.")
        with torch.no_grad():
            module.weight.copy_(weight)
    return trace_model


def _sparsity_settings(sparsity: Sparsity):
    if isinstance(sparsity, SparsityProfile):
        return sparsity.to_json()
    return sparsity if isinstance(sparsity, (int, float)) else dict(sparsity)


def solve(statistics: LayerStatistics, sparsity: Sparsity, solver: SolverConfig = SolverConfig(),
          progress: Progress | None = None) -> SpadeTrace:
    """Solve every target layer for the given sparsity and build the trace.

    Uses only the recorded statistics (the images are not touched again); the dense model is read,
    never modified. Runs on the device of the statistics.
    """
    return solve_many(statistics, [sparsity], solver, progress)[0]


def solve_many(statistics: LayerStatistics, sparsities: Sequence[Sparsity], solver: SolverConfig = SolverConfig(),
               progress: Progress | None = None) -> list[SpadeTrace]:
    """`solve` at each of several sparsities (uniform values, mappings or profiles), one trace each in their order;
    the same traces as one `solve` each. Each layer is solved once per distinct target, and with a solver whose
    levels nest (`SolverConfig.nested_levels`, the exact solver) once for all of them. The traces' "solve" seconds
    are the time for all of them."""
    if not sparsities:
        raise ConfigError("Give at least one sparsity to solve for.")
    start = time.perf_counter()
    dense = statistics.model
    targets = [resolve_targets(dense, list(statistics.layers), sparsity) for sparsity in sparsities]
    modules = dict(dense.named_modules())
    layer_solver = solver_for(solver)
    weights: list[dict[str, torch.Tensor]] = [{} for _ in sparsities]
    reports: list[list[LayerReport]] = [[] for _ in sparsities]
    jobs = [LayerJob(modules[name].weight.detach(), stat, sorted({t[name] for t in targets}))
            for name, stat in statistics.layers.items()]
    within = None if progress is None else (lambda f: progress("solve", f))
    solved = solve_layers(layer_solver, jobs, solve_workers(jobs), within)
    for (name, stat), job, pruned in zip(statistics.layers.items(), jobs, solved):
        weight = job.weight
        # "achieved" counts what the target counts: every weight, or the dense weight's nonzero ones
        built_in = int((weight == 0).sum()) if solver.sparsity_of == "nonzero" else 0
        for level, (sparse, error) in zip(job.levels, pruned):
            zeros = int((sparse == 0).sum())
            counted = sparse.numel() - built_in
            report = LayerReport(
                name=name, block=block_of(dense, name), kind=stat.kind, weight_shape=tuple(weight.shape),
                target=level, achieved=(zeros - built_in) / counted if counted else 0.0,
                error=error, params=sparse.numel(), kept=sparse.numel() - zeros)
            for j, t in enumerate(targets):
                if t[name] == level:
                    weights[j][name] = sparse
                    reports[j].append(report)
    seconds = {**statistics.seconds, "solve": time.perf_counter() - start}
    traces = []
    fit_inputs = None  # the refit's images, made once for all traces
    for sparsity, trace_weights, trace_reports in zip(sparsities, weights, reports):
        trace_model = _sparse_copy(dense, trace_weights)
        settings = {"sparsity": _sparsity_settings(sparsity), "solver": asdict(solver)}
        trace_seconds = dict(seconds)
        if solver.refit_output:
            t0 = time.perf_counter()
            if fit_inputs is None and statistics.output_fit is not None:
                fit_inputs = statistics.output_fit.inputs()
            trace_weights, trace_reports, settings["output_refit"] = _refit_output(
                statistics, solver, trace_model, trace_weights, trace_reports, fit_inputs, progress)
            trace_seconds["output refit"] = time.perf_counter() - t0
        trace_logits = None
        if statistics.reference is not None:
            with torch.inference_mode():
                trace_logits = trace_model(statistics.reference.to(model_device(dense))).cpu()
        traces.append(SpadeTrace(model=trace_model, layers=trace_reports, sparse_weights=trace_weights,
                                 dense_logits=statistics.reference_logits, trace_logits=trace_logits,
                                 seconds=trace_seconds, settings=settings))
    log.info("solved %d layers at %d sparsities in %.2fs", len(statistics.layers), len(sparsities), seconds["solve"])
    return traces


def _refit_output(statistics: LayerStatistics, solver: SolverConfig, trace_model: nn.Module,
                  weights: dict[str, torch.Tensor], reports: list[LayerReport], inputs: torch.Tensor | None,
                  progress: Progress | None) -> tuple[dict[str, torch.Tensor], list[LayerReport], dict | None]:
    """`spade.refit` on a solved trace: ``trace_model``'s output layer is set to the refitted weight (in place: it is
    the trace's own copy). inputs: the output fit's images (``fit.inputs()``). Returns the trace's weights and
    reports with that layer's replaced (its report's error is the usual one, on the dense inputs) and the settings'
    record (None when the statistics hold no output fit: the last target layer is no classifier head)."""
    fit = statistics.output_fit
    if fit is None:
        log.info("no output refit: the last target layer is not a linear classifier head")
        return weights, reports, None
    name = fit.layer
    features = trace_features(trace_model, fit, progress=progress, inputs=inputs)
    dense_weight = statistics.model.get_submodule(name).weight.detach()
    level = next(r.target for r in reports if r.name == name)
    refit = refit_output(dense_weight, weights[name], level, fit, features, solver.damp, solver.sparsity_of)
    module = trace_model.get_submodule(name)
    with torch.no_grad():
        module.weight.copy_(refit.weight)
    hessian = statistics.layers[name].hessian[0]
    error = reconstruction_error(dense_weight.to(hessian), refit.weight.to(hessian), hessian)
    zeros = int((refit.weight == 0).sum())
    reports = [replace(r, error=error, kept=r.params - zeros) if r.name == name else r for r in reports]
    record = {"layer": name, "output_error_before": refit.output_error_before, "output_error": refit.output_error}
    return {**weights, name: refit.weight}, reports, record


class TraceCache(Protocol):
    """Traces by sparsity for one statistics set and solver (a dict will do; the app adapts its shared store)."""

    def get(self, sparsity: Sparsity) -> SpadeTrace | None: ...

    def __setitem__(self, sparsity: Sparsity, trace: SpadeTrace) -> None: ...


@dataclass(frozen=True, eq=False)
class DecisionTrace:
    """A trace solved under a `spade.decision.KeepDecision` policy.

    trace: the first trace that keeps the dense top-1 class, or the last one tried when none does; its settings
    record ``requested_sparsity``, ``sparsity`` (the one used), ``sparsity_scale`` and ``keep_decision`` (the
    ladder's factors). requested: the sparsity asked for. used: the sparsity of ``trace``. step: the index of
    ``used`` among the policy's candidates (0: the requested one). scale: the factor of ``requested`` it used,
    in (0, 1].
    """

    trace: SpadeTrace
    requested: Sparsity
    used: Sparsity
    step: int
    scale: float

    @property
    def backed_off(self) -> bool:
        """Whether the trace is at a lower sparsity than requested."""
        return self.step > 0


def solve_keeping_decision(statistics: LayerStatistics, sparsity: Sparsity, solver: SolverConfig = SolverConfig(),
                           progress: Progress | None = None, *, decision: KeepDecision = KeepDecision(),
                           cache: TraceCache | None = None) -> DecisionTrace:
    """Solve at ``sparsity``; while the trace's top-1 class differs from the dense model's, re-solve at the next of
    ``decision.candidates(sparsity)``. Re-solving reuses the statistics and the solver's factorisations, so each
    retry costs solver time only; with a solver whose levels nest (`SolverConfig.nested_levels`, the exact solver)
    the candidates still to try are solved in one pass (`solve_many`), which costs what the sparsest of them costs.

    The statistics must hold the un-augmented image (`prepare_statistics` records it).
    cache: traces by sparsity to take instead of solving; every trace tried that was not in it is stored in it
    (as solved: the returned trace is a copy whose settings add the decision's record).
    """
    if statistics.reference is None:
        raise ConfigError("Keeping the decision needs statistics that recorded the un-augmented image.")
    candidates = decision.candidates(sparsity)
    solved_ahead: dict[int, SpadeTrace] = {}
    for index, candidate in enumerate(candidates):
        trace = cache.get(candidate) if cache is not None else None
        if trace is None:
            if index not in solved_ahead:
                batch = candidates[index:] if solver.nested_levels else [candidate]
                solved_ahead = dict(enumerate(solve_many(statistics, batch, solver, progress), start=index))
            trace = solved_ahead[index]
            if cache is not None:
                cache[candidate] = trace
        if trace.top1_agrees:
            break
        if index + 1 < len(candidates):
            log.info("the trace changed the top-1 class; trying sparsity %s", _sparsity_settings(candidates[index + 1]))
    scale = decision.scales[index]
    record = {"requested_sparsity": _sparsity_settings(sparsity), "sparsity_scale": scale,
              "keep_decision": decision.to_json()}
    return DecisionTrace(trace=replace(trace, settings={**trace.settings, **record}), requested=sparsity,
                         used=candidate, step=index, scale=scale)


def prepare_statistics(model: nn.Module, image: Image.Image, *, preprocessing: Preprocessing,
                       augment_config: AugmentConfig = AugmentConfig(), selection: LayerSelection = LayerSelection(),
                       layers: list[str] | None = None, device: str | torch.device | None = None,
                       batch_size: int = 64, dtype: torch.dtype = torch.float32,
                       progress: Progress | None = None) -> LayerStatistics:
    """Augment `image` and record the dense model's layer statistics (the expensive, reusable part).

    layers: the target layers to record (default: every layer `selection` picks; a trace solved from them prunes
    only these, the others stay dense). device: where to run (default: the model's device). A model on another
    device is copied there; the given model is never moved or modified.
    """
    target_device = model_device(model) if device is None else resolve_device(device)
    if model_device(model) != target_device:
        model = copy.deepcopy(model).to(target_device)
    t0 = time.perf_counter()
    batch = augment(image, augment_config, preprocessing, progress)
    t_aug = time.perf_counter() - t0
    stats = collect_statistics(model, batch, layers, selection=selection, batch_size=batch_size, dtype=dtype,
                               progress=progress)
    reference = preprocessing(image).unsqueeze(0)
    fit = stats.output_fit
    dense_rows: list[torch.Tensor] = []
    hooked = {} if fit is None else {fit.layer: model.get_submodule(fit.layer)}
    with record_inputs(hooked, lambda _n, _m, x: dense_rows.append(x.detach().reshape(1, -1).float().cpu())), \
            torch.inference_mode():
        reference_logits = model(reference.to(target_device)).cpu()
    if fit is not None:  # the image first, counting as much as all views together; the views made again on demand
        fit = OutputFit(fit.layer, torch.cat([dense_rows[0].to(fit.dense.device), fit.dense]),
                        torch.cat([fit.weights.sum().reshape(1), fit.weights]),
                        functools.partial(_image_and_views, image, augment_config, preprocessing))
    return replace(stats, reference=reference, reference_logits=reference_logits, output_fit=fit,
                   seconds={"augment": t_aug, **stats.seconds})


def _image_and_views(image: Image.Image, config: AugmentConfig, preprocessing: Preprocessing) -> torch.Tensor:
    """(1 + count, 3, H, W): the preprocessed image, then its augmented views (the same as the statistics saw)."""
    return torch.cat([preprocessing(image).unsqueeze(0), augment(image, config, preprocessing)])


def spade_trace(model: nn.Module, image: Image.Image, *, preprocessing: Preprocessing,
                augment: AugmentConfig = AugmentConfig(), sparsity: Sparsity = 0.9,
                solver: SolverConfig = SolverConfig(), selection: LayerSelection = LayerSelection(),
                device: str | torch.device | None = None, batch_size: int = 64, keep_decision: bool = False,
                progress: Progress | None = None) -> SpadeTrace:
    """Augment + collect statistics + solve: the SPADE trace of `model` for one RGB PIL `image`.

    keep_decision: lower the sparsity along the default `spade.decision.KeepDecision` ladder until the trace keeps
    the dense top-1 class (`solve_keeping_decision`; the trace's settings record the requested and the used
    sparsity)."""
    stats = prepare_statistics(model, image, preprocessing=preprocessing, augment_config=augment,
                               selection=selection, device=device, batch_size=batch_size, progress=progress)
    trace = solve_keeping_decision(stats, sparsity, solver, progress, decision=KeepDecision().when(keep_decision)).trace
    trace.settings["augment"] = asdict(augment)
    return trace
