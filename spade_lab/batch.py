"""SPADE explanations of every image in a folder: per-image PNGs and a CSV / JSON summary, resumable.

For each image (files with an image suffix under the folder, recursively, in sorted order): the dense model's top-1
is the class explained; the dense model's layer statistics on augmentations of the image are recorded and the SPADE
trace solved (with ``keep_decision``, re-solved down the default `spade.decision.KeepDecision` ladder until it keeps
the dense top-1); every chosen saliency method explains that class on the dense model and on the trace. The output
folder gets

    config.json                 what the maps were computed with (checked when a run resumes)
    maps/<image>.<method>.png   image | dense map | SPADE map on one shared colour scale (`spade.visualize`)
    results.jsonl               one JSON line per image attempt, appended as it finishes
    summary.json, summary.csv   the last record of each image (written at the end of a run)

A record holds the prediction, whether the trace kept it, the requested and used sparsity, and per method the
numbers of `spade.saliency.takeaway` (share of the top saliency mass SPADE moved, overlap of the two top regions,
rank correlation, strength) and its one-sentence summary. An image that cannot be explained (not an image, too
small, ...) gets a record with ``status: "error"`` and the reason; the run goes on. A rerun skips the images that
have an ``ok`` record and tries the failed ones again. Each image is one task of an executor
(`spade_lab.executors`); only the caller writes files, so results are the same in-process and on Ray.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.defaults import default_augmentations
from spade.errors import ConfigError, SpadeError
from spade.models import LoadedModel
from spade.saliency import settings_for
from spade.solver import SolverConfig
from spade.sparsity import SparsityProfile
from spade_lab.benchmark import parse_methods, sparsity_label
from spade_lab.executors import Executor, TaskFailed, on_worker_device, portable_model
from spade_lab.records import ResultWriter, prepare_folder
from spade_lab.samples import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("saliency", "integrated_gradients", "gradcam")
"""A small sensible set: a plain gradient, a path method and a class-activation map (seconds per image on a CPU)."""
RESULTS = "results.jsonl"
MAPS = "maps"
TAKEAWAY_NUMBERS = ("moved", "overlap", "rank_correlation", "strength")


@dataclass(frozen=True)
class BatchConfig:
    """What each image is explained with. methods: saliency method names (spade.saliency.METHODS). sparsity:
    uniform target in [0, 1) or a per-block profile. augment, solver: the trace's. keep_decision: re-solve a trace
    that changes the dense top-1 at lower sparsities (see the module docstring). seed: seeds the random methods.
    absolute: draw |map| instead of signed maps. opacity: the maps' opacity over the image, in [0, 1]."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    sparsity: float | SparsityProfile = 0.5
    augment: AugmentConfig = AugmentConfig(count=default_augmentations("trace"))
    solver: SolverConfig = SolverConfig()
    keep_decision: bool = False
    seed: int = 0
    absolute: bool = False
    opacity: float = 0.5

    def __post_init__(self):
        parse_methods(list(self.methods))
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("Each saliency method may be listed only once.")
        if not 0.0 <= self.opacity <= 1.0:
            raise ConfigError(f"The opacity must be in [0, 1], got {self.opacity}.")

    def identity(self) -> dict:
        """JSON-ready settings that decide the maps and numbers (config.json of the output folder)."""
        sparsity = self.sparsity.to_json() if isinstance(self.sparsity, SparsityProfile) else float(self.sparsity)
        return {"kind": "batch", "methods": list(self.methods), "sparsity": sparsity, "augment": asdict(self.augment),
                "solver": self.solver.to_json(), "keep_decision": self.keep_decision, "seed": self.seed,
                "absolute": self.absolute, "opacity": self.opacity}


@dataclass(frozen=True)
class BatchSummary:
    """What one run did: images found, explained now, skipped (done before), failed now; seconds; the folder."""

    images: int
    explained: int
    skipped: int
    failed: int
    seconds: float
    folder: Path


def list_images(folder: str | Path) -> list[str]:
    """The image files under ``folder`` (recursive, by suffix), as sorted POSIX paths relative to it."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{folder} is not a folder.")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def file_stem(name: str) -> str:
    """A flat file-name stem for image ``name`` (a relative POSIX path), unique per name: the name itself when it
    has only letters, digits, dot, dash and underscore; otherwise those others become "_" and a short hash of the
    name is appended ("cats/tom 1.jpg" -> "cats_tom_1.jpg-<6 hex digits>"), so that "a/b.png" and "a_b.png" differ."""
    import hashlib

    flat = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return flat if flat == name else f"{flat}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def read_results(folder: str | Path) -> dict[str, dict]:
    """{image: its last record} of a batch folder's results.jsonl (a line cut short is skipped)."""
    path = Path(folder) / RESULTS
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: an incomplete line is ignored", path)
            continue
        if isinstance(record, dict) and "image" in record:
            out[record["image"]] = record
    return out


@dataclass
class _Job:
    loaded: LoadedModel
    config: BatchConfig


def run_batch(loaded: LoadedModel, folder: str | Path, out: str | Path, config: BatchConfig = BatchConfig(), *,
              executor: Executor | None = None, identity: dict | None = None,
              on_record: Callable[[dict], None] | None = None) -> BatchSummary:
    """Explain every image of ``folder`` not yet done in ``out`` (see the module docstring); write the summary.

    identity: JSON-ready settings besides ``config`` that decide the numbers (the model), stored in config.json
    and checked on resume. on_record(record) is called after each record is written."""
    names = list_images(folder)
    if not names:
        raise ConfigError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}.")
    root = prepare_folder(out, {**(identity or {}), **config.identity()})
    (root / MAPS).mkdir(exist_ok=True)
    done = {name for name, record in read_results(root).items() if record.get("status") == "ok"}
    todo = [name for name in names if name not in done]
    writer = ResultWriter(root / RESULTS)
    executor = executor or Executor()
    start = time.perf_counter()
    explained = failed = 0
    if todo:
        shipped = loaded if executor.name == "in-process" else portable_model(loaded)
        job = executor.put(_Job(shipped, config))
        source = Path(folder)
        items = ((name, _read(source / name)) for name in todo)  # the bytes travel: no shared disk needed
        for index, result in executor.map(_explain_task, job, items, keep_going=True):
            if isinstance(result, TaskFailed):  # a crash the task could not catch (e.g. its worker died each time)
                result = {"image": todo[index], "status": "error", "error": result.reason}, {}
            record, pngs = result
            for filename, data in pngs.items():
                (root / MAPS / filename).write_bytes(data)
            writer.append(record)
            if record["status"] == "ok":
                explained += 1
            else:
                failed += 1
            if on_record is not None:
                on_record(record)
    write_summary(root, names)
    return BatchSummary(len(names), explained, len(names) - len(todo), failed, time.perf_counter() - start, root)


def _read(path: Path) -> bytes | str:
    """The file's bytes, or why it cannot be read (gone since the folder was listed, no permission, ...)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc})"


def _explain_task(job: _Job, item: tuple[str, bytes | str]) -> tuple[dict, dict[str, bytes]]:
    job.loaded = on_worker_device(job.loaded)
    name, data = item
    if isinstance(data, str):
        return {"image": name, "status": "error", "error": data}, {}
    try:
        return explain_image(job.loaded, name, data, job.config)
    except SpadeError as exc:
        return {"image": name, "status": "error", "error": str(exc)}, {}
    except Exception as exc:  # one odd image must not end a run of thousands; the reason is recorded
        log.warning("%s failed", name, exc_info=True)
        return {"image": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"}, {}


def explain_image(loaded: LoadedModel, name: str, data: bytes, config: BatchConfig) -> tuple[dict, dict[str, bytes]]:
    """One image (``data``: its encoded bytes) -> (its record, {PNG file name: PNG bytes}); SpadeError (e.g.
    ImageLoadError) for an image that cannot be explained."""
    import torch

    from spade.images import load_image
    from spade.prediction import Prediction
    from spade.saliency import METHODS, attribution_pair
    from spade.trace import prepare_statistics, solve_keeping_decision
    from spade.visualize import comparison_png

    start = time.perf_counter()
    image = load_image(data)
    preprocessing = loaded.spec.preprocessing
    stats = prepare_statistics(loaded.model, image, preprocessing=preprocessing, augment_config=config.augment,
                               selection=loaded.spec.layer_selection,
                               batch_size=128 if loaded.device.type == "cuda" else 32)
    kept = solve_keeping_decision(stats, config.sparsity, config.solver,
                                  decision=KeepDecision().when(config.keep_decision))
    del stats
    trace = kept.trace
    x = preprocessing(image).to(loaded.device)

    def prediction(logits: torch.Tensor) -> Prediction:
        probabilities = logits.detach().float().softmax(-1).flatten()
        index = int(probabilities.argmax())
        return Prediction(index, loaded.class_name(index), float(probabilities[index]))

    dense_top1, trace_top1 = prediction(trace.dense_logits), prediction(trace.trace_logits)
    picture = preprocessing.to_uint8(x)
    kind = "absolute" if config.absolute else "signed"
    methods, pngs = {}, {}
    for method in config.methods:
        settings = settings_for(method, layer=loaded.spec.last_conv_stage, seed=config.seed)
        pair = attribution_pair(method, loaded.model, trace, x, dense_top1.index, settings)
        filename = f"{file_stem(name)}.{method}.png"
        pngs[filename] = comparison_png(picture, *pair.maps(kind), METHODS[method].label, signed=not config.absolute,
                                        opacity=config.opacity)
        takeaway = pair.takeaway(dense_top1=dense_top1, trace_top1=trace_top1)
        methods[method] = {**{key: _number(getattr(takeaway, key)) for key in TAKEAWAY_NUMBERS},
                           "sentence": takeaway.sentence(), "png": f"{MAPS}/{filename}",
                           "seconds": {"dense": pair.dense.seconds, "spade": pair.spade.seconds}}
    record = {"image": name, "status": "ok",
              "prediction": {"index": dense_top1.index, "name": dense_top1.name,
                             "probability": dense_top1.probability},
              "trace_prediction": {"index": trace_top1.index, "name": trace_top1.name,
                                   "probability": trace_top1.probability},
              "kept_decision": dense_top1.index == trace_top1.index,
              "requested_sparsity": sparsity_label(kept.requested), "used_sparsity": sparsity_label(kept.used),
              "sparsity_scale": kept.scale, "logit_cosine": trace.logit_cosine, "methods": methods,
              "device": loaded.device.type, "seconds": time.perf_counter() - start}
    return record, pngs


def _number(value) -> float | None:
    """A takeaway number for JSON: None for NaN (a constant map)."""
    value = float(value)
    return None if value != value else value


def summary_rows(records: list[dict], methods: list[str]) -> Iterator[dict]:
    """One flat CSV row per image record (the columns of summary.csv)."""
    for r in records:
        row = {"image": r["image"], "status": r["status"], "error": r.get("error", "")}
        if r["status"] == "ok":
            row.update(prediction=r["prediction"]["index"], prediction_name=r["prediction"]["name"],
                       probability=r["prediction"]["probability"], trace_prediction=r["trace_prediction"]["index"],
                       kept_decision=r["kept_decision"], requested_sparsity=r["requested_sparsity"],
                       used_sparsity=r["used_sparsity"])
            for method in methods:
                for key in TAKEAWAY_NUMBERS:
                    row[f"{method}.{key}"] = r["methods"].get(method, {}).get(key)
        yield row


def write_summary(folder: str | Path, names: list[str] | None = None) -> tuple[Path, Path]:
    """summary.json (config, counts, one record per image: its last one) and summary.csv (`summary_rows`) of a
    batch folder, for ``names`` (None: every image with a record), in that order."""
    root = Path(folder)
    config = json.loads((root / "config.json").read_text())
    latest = read_results(root)
    records = [latest[n] for n in (names if names is not None else sorted(latest)) if n in latest]
    methods = list(config.get("methods", []))
    ok = sum(r["status"] == "ok" for r in records)
    document = {"config": config, "images": len(records), "ok": ok, "errors": len(records) - ok,
                "kept_decision": sum(bool(r.get("kept_decision")) for r in records), "records": records}
    json_path = root / "summary.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    columns = ["image", "status", "error", "prediction", "prediction_name", "probability", "trace_prediction",
               "kept_decision", "requested_sparsity", "used_sparsity",
               *(f"{m}.{key}" for m in methods for key in TAKEAWAY_NUMBERS)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(summary_rows(records, methods))
    csv_path = root / "summary.csv"
    csv_path.write_text(text.getvalue())
    return json_path, csv_path
