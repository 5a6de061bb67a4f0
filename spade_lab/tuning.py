"""Tuning a per-block sparsity profile on a calibration set (never on the benchmark's test photos or trigger).

Coordinate search in the authors' spirit: blocks are grouped into stages (``blocks.3.*`` -> ``blocks.3``,
``layer2.*`` -> ``layer2``; a top-level block such as ``conv_head`` or ``fc`` is its own group, or every
block is its own group with ``granularity="block"``). Starting from 0 everywhere (the dense model), or from
a given profile (``start``: e.g. a profile tuned for several methods, refined for one; the search only
accepts improvements, so the result scores at least as well as the start on the calibration samples), the
groups are visited from the output towards the input; for each, every level of the grid is tried with the
other groups fixed, and the level with the best mean score of the tuning methods on the calibration samples is
kept, among the levels whose trace keeps the dense top-1 on at least ``min_agreement`` of them. The score
(``objective``) is the Trojan AUC on Trojan samples, or on clean samples insertion AUC minus deletion AUC, both
curves measured on the dense model as in the benchmark's Table 2 (`spade.metrics.insertion_deletion`).
Levels are tried in increasing order and the search moves on after the first one that breaks the constraint.
With ``keep_decision`` a sample whose trace loses the top-1 is scored, as the benchmark's ``--keep-decision``
does, on the trace at the candidate's levels times the first factor of the default `spade.decision.KeepDecision`
ladder that keeps it.

Cost: the layer statistics of each calibration sample are recorded once; a candidate only re-solves the
layers of the group being changed (``spade.trace.solve_many`` on those layers' statistics, which never touches the
model or the images again) and reuses every other layer's solved weights. With the exact solver, whose levels
nest, a group's whole grid is solved in the one pass that its highest level costs.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.defaults import default_augmentations
from spade.errors import ConfigError
from spade.layers import LayerSelection, blocks
from spade.metrics import insertion_deletion
from spade.models import LoadedModel
from spade.progress import Progress
from spade.saliency import get_method, mask_scores, settings_for
from spade.solver import SolverConfig
from spade.sparsity import SparsityProfile, load_profile, resolve_targets
from spade.statistics import LayerStatistics
from spade.trace import prepare_statistics, solve_many
from spade_lab.executors import Executor, on_worker_device, portable_model, split
from spade_lab.samples import SampleRecord, SampleSet

log = logging.getLogger(__name__)

AUTHORS_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
"""The grid the SPADE authors tuned their ResNet-50 profiles on."""
GRANULARITIES = ("stage", "block")
OBJECTIVES = {"trojan": "Trojan AUC", "insertion": "insertion - deletion AUC"}
"""What a tuning run maximises (see the module doc) -> how its score is named."""


@dataclass(frozen=True)
class TuningConfig:
    """methods: saliency methods whose mean score is maximised (cheap gradient ones by default). objective: the
    score (`OBJECTIVES`): "trojan" on Trojan samples, "insertion" on clean ones; steps: the points of its curves.
    levels: the sparsity grid (0 included: a group may stay dense). augment, solver: as for the trace.
    rounds: passes over the groups. min_agreement: the fraction of calibration samples on which the trace must
    keep the dense top-1. granularity: "stage" or "block" groups. seed: seeds random methods. batch_size:
    images per pass for methods that batch (None: the library's default). keep_decision: score a sample that
    loses the top-1 on its trace at lower levels (see the module doc), as the benchmark's option of that name.
    start: the profile the search starts from (None: dense); it must give every group one level."""

    methods: tuple[str, ...] = ("saliency", "input_x_gradient")
    levels: tuple[float, ...] = AUTHORS_LEVELS
    augment: AugmentConfig = AugmentConfig(count=default_augmentations("benchmark"))
    solver: SolverConfig = SolverConfig()
    rounds: int = 1
    min_agreement: float = 1.0
    granularity: str = "stage"
    seed: int = 0
    batch_size: int | None = None
    keep_decision: bool = False
    start: SparsityProfile | None = None
    objective: str = "trojan"
    steps: int = 100

    def __post_init__(self):
        for name in self.methods:
            get_method(name)
        if not self.methods:
            raise ConfigError("Choose at least one saliency method to tune for.")
        if not self.levels or any(not 0 <= v < 1 for v in self.levels):
            raise ConfigError("Sparsity levels must be values in [0, 1).")
        if self.rounds < 1 or not 0 < self.min_agreement <= 1:
            raise ConfigError("rounds must be >= 1 and min_agreement in (0, 1].")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"Unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"Unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}.")
        if self.steps < 2:
            raise ConfigError("Insertion / deletion curves need at least 2 steps.")


def _start_levels(model: torch.nn.Module, groups: dict[str, list[str]], layer_group: dict[str, str],
                  start: SparsityProfile | None) -> dict[str, float]:
    """{group: level} where the search starts: 0 everywhere, or ``start``'s target of each group's layers."""
    if start is None:
        return dict.fromkeys(groups, 0.0)
    targets = resolve_targets(model, list(layer_group), start)
    levels = {}
    for group in groups:
        values = sorted({targets[layer] for layer, g in layer_group.items() if g == group})
        if len(values) > 1:
            raise ConfigError(f"The start profile {start.name!r} gives the layers of {group} different targets "
                              f"({', '.join(f'{v:g}' for v in values)}); tune per block to start from it.")
        levels[group] = values[0]
    return levels


def stage_groups(model: torch.nn.Module, selection: LayerSelection = LayerSelection(),
                 granularity: str = "stage") -> dict[str, list[str]]:
    """{group: [block names]} in input-to-output order (see the module docstring)."""
    groups: dict[str, list[str]] = {}
    for block in blocks(model, selection):
        key = block if granularity == "block" or "." not in block else block.rsplit(".", 1)[0]
        groups.setdefault(key, []).append(block)
    return groups


@dataclass
class _Calibration:
    """One calibration sample: statistics, input, mask (None on a clean sample), target, dense top-1, and solved
    weights per (layer, level)."""

    stats: LayerStatistics
    x: torch.Tensor
    mask: object
    target: int
    dense_top1: int
    solved: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class TuningResult:
    """profile: the tuned per-block profile. score / dense_score: mean score (the config's objective: a Trojan AUC
    in 0..1, or insertion - deletion AUC in -1..1) of the tuning methods on the trace with the profile / on the
    dense model; agreement: fraction of calibration samples where the trace
    keeps the dense top-1. history: every evaluated candidate (group, level, score, agreement, chosen)."""

    profile: SparsityProfile
    score: float
    dense_score: float
    agreement: float
    history: list[dict]
    samples: int
    seconds: float


class _Evaluator:
    def __init__(self, loaded: LoadedModel, calibration: list[_Calibration], config: TuningConfig,
                 layer_group: dict[str, str]):
        self.loaded, self.calibration, self.config = loaded, calibration, config
        self.layer_group = layer_group
        self.work = copy.deepcopy(loaded.model).eval()
        self.modules = dict(self.work.named_modules())
        self.dense = {name: self.modules[name].weight.detach().clone() for name in layer_group}
        self.settings = {}
        for name in config.methods:
            method = get_method(name)
            extra = {"batch_size": config.batch_size} if config.batch_size and method.accepts("batch_size") else {}
            self.settings[name] = (method, settings_for(name, layer=loaded.spec.last_conv_stage, seed=config.seed,
                                                        **extra))
        self.allowed = int((1 - config.min_agreement) * len(calibration) + 1e-9)
        self.varying: str | None = None  # the group whose levels the search is trying
        self.decision = KeepDecision().when(config.keep_decision)

    def _levels_to_solve(self, group: str, level: float) -> list[float]:
        """The levels to solve a group's missing layers at: ``level`` alone, or with a solver whose levels nest
        (one pass to the highest yields the others), every level the search may still ask of the group: the grid
        while the group is the one being varied, and their back-off levels."""
        if not self.config.solver.nested_levels:
            return [level]
        bases = (*self.config.levels, level) if group == self.varying else (level,)
        return sorted({v * f for v in bases for f in self.decision.scales} - {0.0})

    def _weights(self, sample: _Calibration, levels: dict[str, float], group: str) -> None:
        layers = [n for n, g in self.layer_group.items() if g == group]
        level = levels[group]
        missing = [n for n in layers if level > 0 and (n, level) not in sample.solved]
        if missing:
            subset = LayerStatistics(model=sample.stats.model, layers={n: sample.stats.layers[n] for n in missing})
            solve_at = self._levels_to_solve(group, level)
            for value, trace in zip(solve_at, solve_many(subset, solve_at, self.config.solver)):
                for n in missing:
                    sample.solved[(n, value)] = trace.sparse_weights[n]
        with torch.no_grad():
            for n in layers:
                weight = self.dense[n] if level == 0 else sample.solved[(n, level)]
                self.modules[n].weight.copy_(weight)

    def _keeps_top1(self, sample: _Calibration, levels: dict[str, float]) -> bool:
        """Load the sample's solved weights at ``levels`` into the working copy; whether it keeps the top-1."""
        for group in levels:
            self._weights(sample, levels, group)
        with torch.inference_mode():
            return int(self.work(sample.x[None]).argmax()) == sample.dense_top1

    def outcome(self, sample: _Calibration, levels: dict[str, float]) -> tuple[bool, list[float]]:
        """(whether the trace at ``levels``, or at a back-off of them, keeps the sample's dense top-1; the score of
        each tuning method on that trace, empty when it does not)."""
        keeps = self._keeps_top1(sample, levels)
        for factor in self.decision.factors:
            if keeps:
                break
            keeps = self._keeps_top1(sample, {group: level * factor for group, level in levels.items()})
        if not keeps:
            return False, []
        scores = []
        for method, settings in self.settings.values():
            attribution = method.explain(self.work, sample.x, sample.target, settings)
            scores.append(self._score(attribution, sample))
        return True, scores

    def _score(self, attribution, sample: _Calibration) -> float:
        if self.config.objective == "trojan":
            return mask_scores(attribution, sample.mask).trojan_auc
        curves = insertion_deletion(self.loaded.model, sample.x, attribution.signed_map, sample.target,
                                    steps=self.config.steps, batch_size=self.config.batch_size)
        return curves.insertion_auc - curves.deletion_auc

    def outcomes(self, levels: dict[str, float], varying: str | None = None) -> list[tuple[bool, list[float]]]:
        """Every sample's `outcome`, in order (``varying``: the group the search is trying)."""
        self.varying = varying
        return [self.outcome(sample, levels) for sample in self.calibration]

    def evaluate(self, levels: dict[str, float]) -> tuple[float | None, float]:
        """(mean score or None when the top-1 constraint fails, fraction keeping the top-1)."""
        lazy = (self.outcome(sample, levels) for sample in self.calibration)  # stops at the first excess miss
        return aggregate(lazy, len(self.calibration), self.allowed)

    def forget(self, levels: dict[str, float]) -> None:
        """Drop the solved weights at levels other than their group's in ``levels`` and its back-off levels
        (bounded memory)."""
        for sample in self.calibration:
            for key in [k for k in sample.solved
                        if all(k[1] != levels[self.layer_group[k[0]]] * f for f in self.decision.scales)]:
                del sample.solved[key]


def aggregate(outcomes: Iterable[tuple[bool, list[float]]], count: int, allowed: int) -> tuple[float | None, float]:
    """A candidate's (mean score over the samples that keep the top-1, or None once more than ``allowed`` of
    the ``count`` samples do not; fraction keeping it, over the samples seen when it gave up) from the samples'
    outcomes in sample order (`_Evaluator.outcome`)."""
    aucs, misses = [], 0
    for i, (keeps, sample_aucs) in enumerate(outcomes):
        if not keeps:
            misses += 1
            if misses > allowed:
                return None, 1 - misses / (i + 1)
            continue
        aucs.extend(sample_aucs)
    agreement = 1 - misses / count
    return (float(sum(aucs) / len(aucs)) if aucs else None), agreement


def _calibration_sample(loaded: LoadedModel, sample_set: SampleSet, record: SampleRecord,
                        config: TuningConfig) -> _Calibration:
    """One calibration sample: its dense layer statistics on augmentations of its stamped crop, input and mask."""
    rendered = sample_set.render(record)
    stats = prepare_statistics(loaded.model, rendered.image, preprocessing=loaded.spec.preprocessing,
                               augment_config=config.augment, selection=loaded.spec.layer_selection,
                               batch_size=128 if loaded.device.type == "cuda" else 32)
    x = loaded.spec.preprocessing(rendered.image).to(loaded.device)
    return _Calibration(stats, x, rendered.mask, record.target, int(stats.reference_logits.argmax()))


@dataclass
class _TuneJob:
    """What each part of a spread tuning needs, shipped once."""

    loaded: LoadedModel
    sample_set: SampleSet
    config: TuningConfig
    layer_group: dict[str, str]


class _CalibrationPart:
    """Some calibration samples, their statistics and solved weights, where they were computed (a Ray actor)."""

    def __init__(self, job: _TuneJob, records: list[SampleRecord]):
        loaded = on_worker_device(job.loaded)
        calibration = [_calibration_sample(loaded, job.sample_set, record, job.config) for record in records]
        self.evaluator = _Evaluator(loaded, calibration, job.config, job.layer_group)

    def outcomes(self, levels: dict[str, float], varying: str | None) -> list[tuple[bool, list[float]]]:
        return self.evaluator.outcomes(levels, varying)

    def forget(self, levels: dict[str, float]) -> None:
        self.evaluator.forget(levels)


class _SpreadEvaluator:
    """`_Evaluator`'s interface over calibration samples spread across an executor's workers: every part scores
    its samples at once and the outcomes are aggregated in sample order, so the numbers equal the in-process
    search's (which stops scoring a candidate at its first excess miss; here every sample is scored)."""

    def __init__(self, executor: Executor, loaded: LoadedModel, sample_set: SampleSet, config: TuningConfig,
                 layer_group: dict[str, str]):
        job = _TuneJob(portable_model(loaded), replace(sample_set, photos=sample_set.photos.portable()), config,
                       layer_group)
        parts = split(sample_set.records, executor.workers)
        self.shared = executor.put(job)  # held for the search: a restarted actor fetches it again
        self.group = executor.spread(_CalibrationPart, self.shared, parts)
        self.count = len(sample_set.records)
        self.allowed = int((1 - config.min_agreement) * self.count + 1e-9)
        self.varying: str | None = None

    def evaluate(self, levels: dict[str, float]) -> tuple[float | None, float]:
        parts = self.group.call("outcomes", levels, self.varying)
        return aggregate(itertools.chain.from_iterable(parts), self.count, self.allowed)

    def forget(self, levels: dict[str, float]) -> None:
        self.group.call("forget", levels)


def tune_profile(loaded: LoadedModel, sample_set: SampleSet, config: TuningConfig = TuningConfig(), *,
                 name: str = "tuned", progress: Progress | None = None,
                 on_step: Callable[[dict], None] | None = None, executor: Executor | None = None) -> TuningResult:
    """Tune a per-group sparsity profile on calibration samples (see module doc).

    loaded: the model (never modified). sample_set: calibration samples: for the "trojan" objective the calibration
    photos stamped with the calibration trigger of the back-doored model, for "insertion" clean ones. on_step(entry)
    is called after every evaluated candidate with
    {"group", "level", "score", "agreement", "feasible"}; progress("tune", fraction of candidates done).
    executor: None or the in-process one: the search as described above; another (Ray): the calibration samples
    are split over its workers, which keep their statistics and solved weights, and each candidate is scored on
    all of them at once (same result).
    """
    if (sample_set.trigger is None) != (config.objective != "trojan"):
        raise ConfigError("Tuning for Trojan AUC needs samples stamped with a calibration trigger"
                          if config.objective == "trojan" else
                          f"Tuning for {OBJECTIVES[config.objective]} needs clean samples, without a trigger.")
    start = time.perf_counter()
    selection = loaded.spec.layer_selection
    groups = stage_groups(loaded.model, selection, config.granularity)
    block_layers = blocks(loaded.model, selection)
    layer_group = {layer: g for g, names in groups.items() for b in names for layer in block_layers[b]}
    levels = _start_levels(loaded.model, groups, layer_group, config.start)
    if executor is None or executor.name == "in-process":
        calibration = []
        for i, record in enumerate(sample_set.records):
            calibration.append(_calibration_sample(loaded, sample_set, record, config))
            if progress is not None:
                progress("statistics", (i + 1) / len(sample_set.records))
        evaluator = _Evaluator(loaded, calibration, config, layer_group)
    else:
        evaluator = _SpreadEvaluator(executor, loaded, sample_set, config, layer_group)
    try:
        return _search(evaluator, groups, levels, config, name, start, progress, on_step)
    finally:
        if isinstance(evaluator, _SpreadEvaluator):
            evaluator.group.close()


def _search(evaluator: _Evaluator | _SpreadEvaluator, groups: dict[str, list[str]], levels: dict[str, float],
            config: TuningConfig, name: str, start: float, progress: Progress | None,
            on_step: Callable[[dict], None] | None) -> TuningResult:
    """The coordinate search of `tune_profile` from ``levels`` (see the module docstring)."""
    dense_score, dense_agreement = evaluator.evaluate(dict.fromkeys(groups, 0.0))
    if dense_score is None:  # cannot happen: at 0 the trace is the dense model
        raise ConfigError("The dense model does not keep its own top-1; check the calibration samples.")
    history = [{"round": 0, "group": None, "level": None, "score": dense_score, "agreement": dense_agreement,
                "feasible": True, "chosen": config.start is None}]
    current = dense_score
    if config.start is not None:
        current, agreement = evaluator.evaluate(levels)
        if current is None:
            raise ConfigError(f"The start profile {config.start.name!r} changes the dense top-1 on more calibration "
                              f"samples than min_agreement ({config.min_agreement:g}) allows; start from another "
                              "profile or lower min_agreement.")
        history.append({"round": 0, "group": "start", "level": None, "score": current, "agreement": agreement,
                        "feasible": True, "chosen": True})
    start_score = current
    order = list(reversed(groups))
    total = config.rounds * len(order) * len(config.levels)
    done = 0
    for round_ in range(1, config.rounds + 1):
        for group in order:
            evaluator.varying = group
            best_level, best_score = levels[group], current
            for level in sorted(config.levels):
                done += 1
                if level == levels[group]:
                    continue
                candidate = {**levels, group: level}
                score, agreement = evaluator.evaluate(candidate)
                entry = {"round": round_, "group": group, "level": level, "score": score, "agreement": agreement,
                         "feasible": score is not None, "chosen": False}
                history.append(entry)
                if on_step is not None:
                    on_step(entry)
                if progress is not None:
                    progress("tune", done / total)
                if score is None:
                    if level > levels[group]:
                        done += sum(1 for v in config.levels if v > level)
                        break
                    continue
                if score > best_score + 1e-12:
                    best_level, best_score = level, score
            levels[group] = best_level
            current = best_score
            evaluator.forget(levels)
            history.append({"round": round_, "group": group, "level": best_level, "score": best_score,
                            "agreement": None, "feasible": True, "chosen": True})
            log.info("%s -> %g (score %.4f)", group, best_level, best_score)
    # restore the chosen weights and measure the agreement of the final profile
    final_score, final_agreement = evaluator.evaluate(levels)
    targets = {block: levels[g] for g, names in groups.items() for block in names}
    origin = "" if config.start is None else f", starting from {config.start.name} ({100 * start_score:.2f})"
    description = (f"Tuned on {evaluator_count(evaluator)} calibration samples for {', '.join(config.methods)}"
                   f"{origin}: mean {OBJECTIVES[config.objective]} {100 * dense_score:.2f} dense -> "
                   f"{100 * (final_score or 0):.2f} traced, "
                   f"top-1 kept on {100 * final_agreement:.0f}% of them.")
    profile = SparsityProfile.from_mapping(targets, name=name, description=description)
    return TuningResult(profile, final_score if final_score is not None else current, dense_score, final_agreement,
                        history, evaluator_count(evaluator), time.perf_counter() - start)


def evaluator_count(evaluator: _Evaluator | _SpreadEvaluator) -> int:
    return evaluator.count if isinstance(evaluator, _SpreadEvaluator) else len(evaluator.calibration)


def save_profile(result: TuningResult, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the tuned profile as JSON that ``spade.sparsity.load_profile(path)`` reads (name, description,
    default, targets), plus a ``tuning`` section (scores, history, ``metadata``); checked by loading it back."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    document = {**result.profile.to_json(),
                "tuning": {"score": result.score, "dense_score": result.dense_score, "agreement": result.agreement,
                           "samples": result.samples, "seconds": round(result.seconds, 1),
                           **(metadata or {}), "history": result.history}}
    path.write_text(json.dumps(document, indent=2) + "\n")
    load_profile(path)
    return path


def tuning_metadata(config: TuningConfig, extra: dict | None = None) -> dict:
    """JSON-ready settings of a tuning run."""
    out = asdict(config)
    out["methods"], out["levels"] = list(config.methods), list(config.levels)
    out["start"] = config.start.to_json() if config.start is not None else None
    return {**out, **(extra or {})}

