"""The paper's saliency benchmarks: Trojan AUC / pointing game (Table 1) and insertion / deletion (Table 2).

For every sample: the dense model's layer statistics on augmentations of the (stamped) image are recorded once
and the SPADE trace is solved once per distinct sparsity (one, unless some methods have their own profile, as the
authors tuned one per method); then every selected saliency method explains the target class on the dense model
and on its trace, and the maps are scored:

* ``trojan``: target = the Trojan class; Trojan AUC of the signed and the absolute map against the trigger
  mask (the better one is the headline, as the authors reported) and the pointing game (signed, absolute,
  and the variant the AUC chose);
* ``insertion``: clean crops, target = the dense model's top-1 on the crop (no labels are needed);
  insertion and deletion AUC of the signed map, both measured on the dense model (the authors' protocol).

One JSON line per (sample, method) is appended to the results folder as soon as it is done (see
``spade_lab.records``); finished pairs are skipped, so a rerun resumes. Each sample is one task of an executor
(``spade_lab.executors``: in this process, or on Ray, where a sample's records arrive when its task finishes); only
the calling process writes the folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.defaults import default_augmentations
from spade.errors import ConfigError
from spade.models import LoadedModel
from spade.progress import Progress
from spade.saliency import METHODS, PAPER_METHODS, MapScores, MaskScores, attribution_pair, get_method, settings_for
from spade.solver import SolverConfig
from spade.sparsity import SparsityProfile
from spade.statistics import LayerStatistics
from spade.trace import SpadeTrace, prepare_statistics, solve_keeping_decision
from spade_lab.executors import Executor, on_worker_device, portable_model
from spade_lab.records import ResultWriter, done_pairs, prepare_folder, shard_file
from spade_lab.samples import SampleRecord, SampleSet

log = logging.getLogger(__name__)

KINDS = ("trojan", "insertion")
METRICS = {"trojan": ("trojan_auc", "pointing_game"), "insertion": ("insertion_auc", "deletion_auc")}
GPU_BATCH = 256
"""Images per forward pass of the perturbation methods, Integrated Gradients, GradientShap and the
insertion/deletion curves on a GPU (one pass for IG's 50 steps, 3 for Occlusion's 730 windows)."""

SMOKE_METHODS = ("saliency", "input_x_gradient")


@dataclass(frozen=True)
class BenchmarkConfig:
    """What each sample is scored with.

    kind: "trojan" or "insertion". methods: saliency method names (spade.saliency.METHODS), in table order.
    sparsity: uniform target in [0, 1) or a per-block SparsityProfile. method_sparsity: ((method, sparsity), ...),
    the sparsity of the listed methods' traces instead of ``sparsity`` (the authors tuned a profile per saliency
    method; the layer statistics are shared, so each extra profile costs one solve per sample). augment: the
    trace's augmentations (the authors used 256 views in their Trojan experiments). solver: the layer solver.
    seed: seeds the random methods (LIME, GradientShap). batch_size: images per pass for methods/curves that batch
    (None: the library's 8 on the CPU, GPU_BATCH on a GPU). steps: points of the insertion/deletion curves.
    keep_decision: when a trace changes the dense model's top-1 class, re-solve it down the default
    `spade.decision.KeepDecision` ladder until it keeps it (not the paper's protocol, which keeps every trace at
    the requested sparsity; records then carry ``trace.requested_sparsity``, ``trace.used_sparsity`` (labels, see
    `sparsity_label`) and the factor used, ``trace.sparsity_scale``).
    """

    kind: str = "trojan"
    methods: tuple[str, ...] = PAPER_METHODS
    sparsity: float | SparsityProfile = 0.5
    method_sparsity: tuple[tuple[str, float | SparsityProfile], ...] = ()
    augment: AugmentConfig = AugmentConfig(count=default_augmentations("benchmark"))
    solver: SolverConfig = SolverConfig()
    seed: int = 0
    batch_size: int | None = None
    steps: int = 100
    keep_decision: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"Unknown benchmark {self.kind!r}; choose one of {', '.join(KINDS)}.")
        if not self.methods:
            raise ConfigError("Choose at least one saliency method.")
        for name in self.methods:
            get_method(name)
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("Each saliency method may be listed only once.")
        overridden = [name for name, _ in self.method_sparsity]
        for name in overridden:
            get_method(name)
        if len(set(overridden)) != len(overridden):
            raise ConfigError("Each saliency method may have only one sparsity of its own.")
        labels = [sparsity_label(s) for s in dict.fromkeys([self.sparsity, *(s for _, s in self.method_sparsity)])]
        if len(set(labels)) != len(labels):  # records tell a sample's traces apart by this label
            raise ConfigError(f"Different profiles share a name ({', '.join(labels)}); give each its own name "
                              "(benchmark tune --name).")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"The batch size must be at least 1, got {self.batch_size}.")
        if self.steps < 2:
            raise ConfigError("Insertion/deletion curves need at least 2 steps.")

    @property
    def decision(self) -> KeepDecision:
        """The keep-the-decision policy of every trace (no back-off without ``keep_decision``)."""
        return KeepDecision().when(self.keep_decision)

    def sparsity_for(self, method: str) -> float | SparsityProfile:
        """The sparsity of ``method``'s trace: its own from ``method_sparsity``, else ``sparsity``."""
        return dict(self.method_sparsity).get(method, self.sparsity)

    def identity(self) -> dict:
        """JSON-ready settings that decide the numbers (not the methods, which may be added later)."""
        out = {"kind": self.kind, "sparsity": _sparsity_json(self.sparsity), "augment": asdict(self.augment),
               "solver": self.solver.to_json(), "seed": self.seed,
               "method_sparsity": {name: _sparsity_json(value) for name, value in self.method_sparsity},
               "keep_decision": self.decision.to_json()}
        if self.kind == "insertion":
            out["steps"] = self.steps
        return out


def _sparsity_json(sparsity: float | SparsityProfile) -> float | dict:
    return sparsity.to_json() if isinstance(sparsity, SparsityProfile) else float(sparsity)


def sparsity_label(sparsity: float | SparsityProfile) -> str:
    """A profile's name or a uniform target as text: how records tell a sample's traces apart."""
    return sparsity.name if isinstance(sparsity, SparsityProfile) else f"{float(sparsity):g}"


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """'paper' (the ten), 'all' (every registered method) or comma-separated names -> names; ConfigError for
    unknown ones."""
    if isinstance(text, str):
        if text == "paper":
            return PAPER_METHODS
        if text == "all":
            return tuple(METHODS)
        text = [n.strip() for n in text.split(",") if n.strip()]
    names = tuple(text)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ConfigError(f"Unknown saliency method(s) {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(METHODS)} (or 'paper', 'all').")
    return names


def method_settings(name: str, loaded: LoadedModel, config: BenchmarkConfig):
    """The authors' settings of method ``name`` with this model's CAM layer, the config's seed and batch size."""
    method = get_method(name)
    batch = config.batch_size
    if batch is None and loaded.device.type == "cuda":
        batch = GPU_BATCH
    extra = {"batch_size": batch} if batch is not None and method.accepts("batch_size") else {}
    return settings_for(name, layer=loaded.spec.last_conv_stage, seed=config.seed, **extra)


def statistics_for(loaded: LoadedModel, image, config: BenchmarkConfig) -> LayerStatistics:
    """The dense model's layer statistics on augmentations of ``image`` (on the model's device; larger
    batches on a GPU)."""
    return prepare_statistics(loaded.model, image, preprocessing=loaded.spec.preprocessing,
                              augment_config=config.augment, selection=loaded.spec.layer_selection,
                              batch_size=128 if loaded.device.type == "cuda" else 32)


def trace_summary(trace: SpadeTrace) -> dict:
    dense_top1, trace_top1 = int(trace.dense_logits.argmax()), int(trace.trace_logits.argmax())
    return {"top1_agrees": dense_top1 == trace_top1, "dense_top1": dense_top1, "trace_top1": trace_top1,
            "logit_cosine": trace.logit_cosine, "params_kept": trace.params_kept,
            "params_total": trace.params_total, "seconds": {k: round(v, 4) for k, v in trace.seconds.items()}}


def trojan_record(scores: MaskScores) -> dict:
    """A record's Trojan scores of one map: Trojan AUC (best, signed, absolute) and pointing game (of the variant
    with the better AUC, signed, absolute)."""
    return {"trojan_auc": scores.trojan_auc, "pointing_game": scores.pointing_game, "variant": scores.variant,
            "trojan_auc_signed": scores.auc.signed, "trojan_auc_absolute": scores.auc.absolute,
            "pointing_game_signed": scores.pointing_signed, "pointing_game_absolute": scores.pointing_absolute}


def map_record(scores: MapScores) -> dict:
    """A record's scores of one map: :func:`trojan_record` of its mask scores, or its insertion / deletion AUCs."""
    if scores.mask is not None:
        return trojan_record(scores.mask)
    return {"insertion_auc": scores.curves.insertion_auc, "deletion_auc": scores.curves.deletion_auc}


@dataclass(frozen=True)
class RunSummary:
    """What one run did: samples in its share, (sample, method) pairs computed and skipped, seconds."""

    samples: int
    computed: int
    skipped: int
    seconds: float
    path: Path


def run_benchmark(loaded: LoadedModel, sample_set: SampleSet, config: BenchmarkConfig, folder: str | Path,
                  identity: dict, *, shard: tuple[int, int] | None = None,
                  on_record: Callable[[dict], None] | None = None,
                  progress: Progress | None = None, executor: Executor | None = None) -> RunSummary:
    """Score every (sample, method) of this shard that the folder does not hold yet, appending each record.

    identity: the JSON-ready description of everything that decides the numbers besides ``config`` (model,
    weights, photos, trigger, target, sample settings); stored in the folder's config.json and checked on
    resume. shard: (i, n), 1-based, to score only every n-th sample. on_record(record) is called after each
    record is written; progress("benchmark", fraction of this shard's samples done). executor: where the samples
    are scored (`spade_lab.executors`; None: in this process, one after the other). Each sample is one task; only
    this process writes records, so each (sample, method) is written once whatever the executor.
    """
    if config.kind == "trojan" and sample_set.trigger is None:
        raise ConfigError("The Trojan benchmark needs samples stamped with a trigger.")
    executor = executor or Executor()
    root = prepare_folder(folder, {**identity, **config.identity()})
    records = sample_set.records if shard is None else sample_set.shard(*shard)
    writer = ResultWriter(root / ("results.jsonl" if shard is None else shard_file(*shard)))
    done = done_pairs(root)
    start = time.perf_counter()
    computed = skipped = finished = 0
    work = []
    for record in records:
        todo = [m for m in config.methods if (record.id, m) not in done]
        skipped += len(config.methods) - len(todo)
        if todo:
            work.append((record, tuple(todo)))
        else:
            finished += 1
    if progress is not None and finished:
        progress("benchmark", finished / len(records))
    if work:
        job = executor.put(_job(loaded, sample_set, config, executor))
        for _, results in executor.map(_score_task, job, work):
            for result in results:
                writer.append(result)
                computed += 1
                if on_record is not None:
                    on_record(result)
            finished += 1
            if progress is not None:
                progress("benchmark", finished / len(records))
    return RunSummary(len(records), computed, skipped, time.perf_counter() - start, writer.path)


@dataclass
class _Job:
    """What every sample's task needs: shipped once per run (per worker on Ray)."""

    loaded: LoadedModel
    sample_set: SampleSet
    config: BenchmarkConfig


def _job(loaded: LoadedModel, sample_set: SampleSet, config: BenchmarkConfig, executor: Executor) -> _Job:
    """The job as ``executor`` ships it: as it is in-process; for Ray with the model's parameters on the CPU (a
    worker moves them to its own device, see `on_worker_device`) and the photos as encoded bytes."""
    if executor.name == "in-process":
        return _Job(loaded, sample_set, config)
    return _Job(portable_model(loaded), replace(sample_set, photos=sample_set.photos.portable()), config)


def _score_task(job: _Job, work: tuple[SampleRecord, tuple[str, ...]]):
    """One sample's records (see `score_sample`): the task that an executor runs."""
    job.loaded = on_worker_device(job.loaded)
    record, methods = work
    return score_sample(job.loaded, job.sample_set, record, methods, job.config)


def score_sample(loaded: LoadedModel, sample_set: SampleSet, record: SampleRecord, methods: Sequence[str],
                 config: BenchmarkConfig):
    """Yield one JSON-ready record per method for one sample (the traces are computed first: the statistics once,
    one solve per distinct sparsity among ``methods``).

    With per-method sparsities, each record's ``trace`` also names its sparsity (``"sparsity"``: the profile's
    name or the uniform value), so that tables can tell a sample's traces apart."""
    rendered = sample_set.render(record)
    t0 = time.perf_counter()
    stats = statistics_for(loaded, rendered.image, config)
    stats_seconds = time.perf_counter() - t0
    traces: dict[float | SparsityProfile, tuple[SpadeTrace, dict, float]] = {}
    for sparsity in dict.fromkeys(config.sparsity_for(m) for m in methods):
        t1 = time.perf_counter()
        kept = solve_keeping_decision(stats, sparsity, config.solver, decision=config.decision)
        trace, summary = kept.trace, trace_summary(kept.trace)
        if config.keep_decision:
            summary.update(requested_sparsity=sparsity_label(kept.requested), used_sparsity=sparsity_label(kept.used),
                           sparsity_scale=kept.scale)
        if config.method_sparsity:
            summary["sparsity"] = sparsity_label(sparsity)
        traces[sparsity] = trace, summary, stats_seconds + time.perf_counter() - t1
    del stats
    x = loaded.spec.preprocessing(rendered.image).to(loaded.device)
    base = {"sample": record.id, "index": record.index, "photo": record.photo, "crop": list(record.crop),
            "stamp_seed": record.stamp_seed, "target": record.target, "device": loaded.device.type}
    curve_batch = config.batch_size or (GPU_BATCH if loaded.device.type == "cuda" else None)
    for name in methods:
        trace, summary, trace_seconds = traces[config.sparsity_for(name)]
        pair = attribution_pair(name, loaded.model, trace, x, record.target, method_settings(name, loaded, config))
        if config.kind == "trojan":
            scores = pair.scores(rendered.mask)
        else:
            scores = pair.scores(model=loaded.model, steps=config.steps, batch_size=curve_batch)
        dense, spade = map_record(scores.dense), map_record(scores.spade)
        log.debug("%s %s: dense %s, spade %s", record.id, name, dense, spade)
        yield {**base, "trace": summary, "method": name, "dense": dense, "spade": spade,
               "seconds": {"trace": trace_seconds, "dense": pair.dense.seconds, "spade": pair.spade.seconds}}


def model_identity(loaded: LoadedModel) -> dict:
    """The model as results folders record it: registry name and a SHA-256 prefix of the parameters and buffers
    (not the weights' path, so that a folder is recognised on another machine)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"name": loaded.spec.name, "weights_sha256": digest.hexdigest()[:16]}
