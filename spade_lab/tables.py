"""The paper's tables from benchmark records: means with 95 % confidence intervals, as Markdown, CSV and JSON.

Layout (the paper's Table 1 / Table 2): one row per saliency method plus an *Average* row; columns Dense,
SPADE and SPADE - Dense (paired, per sample), for each metric. Values are percentages: Trojan AUC x 100,
pointing-game hit rate, insertion / deletion AUC x 100.

Confidence intervals (``ci``): ``"t"`` = Student-t interval of the mean, mean +- t(0.975, n-1) * s / sqrt(n)
with the sample standard deviation s (ddof=1); ``"bootstrap"`` = percentile interval of the mean over
``resamples`` resamples of the samples drawn with a seeded numpy Generator. The Average row averages each
sample's values over the methods (only samples scored with every method), then takes the same interval.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from spade.errors import ConfigError
from spade.saliency import METHODS
from spade_lab.provenance import COPIED_FROM

METRIC_LABELS = {"trojan_auc": "Trojan AUC %", "pointing_game": "Pointing game %",
                 "insertion_auc": "Insertion AUC % (higher is better)",
                 "deletion_auc": "Deletion AUC % (lower is better)"}
KIND_METRICS = {"trojan": ("trojan_auc", "pointing_game"), "insertion": ("insertion_auc", "deletion_auc")}
COLUMNS = ("dense", "spade", "difference")
COLUMN_LABELS = {"dense": "Dense", "spade": "SPADE", "difference": "SPADE − Dense"}
CI_METHODS = ("t", "bootstrap")
AVERAGE = "average"


@dataclass(frozen=True)
class Interval:
    """Mean of n values with a confidence interval [low, high] (NaN bounds when n < 2)."""

    n: int
    mean: float
    low: float
    high: float


def _degenerate(v: np.ndarray) -> Interval | None:
    """The interval of fewer than two values (NaN bounds), or None when an interval can be computed."""
    if v.size == 0:
        return Interval(0, math.nan, math.nan, math.nan)
    if v.size == 1:
        return Interval(1, float(v[0]), math.nan, math.nan)
    return None


def t_interval(values, confidence: float = 0.95) -> Interval:
    v = np.asarray(values, dtype=np.float64)
    if (few := _degenerate(v)) is not None:
        return few
    n, mean = v.size, float(v.mean())
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half)


def bootstrap_interval(values, confidence: float = 0.95, seed: int = 0, resamples: int = 10_000) -> Interval:
    v = np.asarray(values, dtype=np.float64)
    if (few := _degenerate(v)) is not None:
        return few
    n = v.size
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(n, float(v.mean()), float(low), float(high))


def interval(values, ci: str = "t", confidence: float = 0.95, seed: int = 0, resamples: int = 10_000) -> Interval:
    if ci == "t":
        return t_interval(values, confidence)
    if ci == "bootstrap":
        return bootstrap_interval(values, confidence, seed, resamples)
    raise ConfigError(f"Unknown confidence interval {ci!r}; choose one of {', '.join(CI_METHODS)}.")


def metric_value(scores: dict, metric: str) -> float:
    """A record's score as a percentage (booleans -> 0 / 100)."""
    value = scores[metric]
    return 100.0 * float(value)


def summarize(records: list[dict], kind: str, *, ci: str = "t", confidence: float = 0.95, seed: int = 0,
              resamples: int = 10_000, methods: list[str] | None = None) -> dict:
    """The table as a JSON-ready dict: rows (metric, method, column, n, mean, low, high), the trace top-1
    agreement over traces (one per sample and sparsity), the mean seconds per method, and the interval settings."""
    if kind not in KIND_METRICS:
        raise ConfigError(f"Unknown benchmark kind {kind!r}.")
    if not records:
        raise ConfigError("There are no results to tabulate yet.")
    present = {r["method"] for r in records}
    order = [m for m in (methods or list(METHODS)) if m in present] + sorted(present - set(methods or METHODS))
    by_method: dict[str, dict[str, dict]] = {m: {} for m in order}
    for r in records:
        by_method[r["method"]][r["sample"]] = r
    complete = [s for s in by_method[order[0]] if all(s in by_method[m] for m in order)]

    def cell(values) -> dict:
        got = interval(values, ci, confidence, seed, resamples)
        return {"n": got.n, "mean": got.mean, "low": got.low, "high": got.high}

    rows = []
    for metric in KIND_METRICS[kind]:
        for method in [*order, AVERAGE]:
            if method == AVERAGE:
                samples = complete
                dense = [np.mean([metric_value(by_method[m][s]["dense"], metric) for m in order]) for s in samples]
                spade = [np.mean([metric_value(by_method[m][s]["spade"], metric) for m in order]) for s in samples]
            else:
                samples = list(by_method[method])
                dense = [metric_value(by_method[method][s]["dense"], metric) for s in samples]
                spade = [metric_value(by_method[method][s]["spade"], metric) for s in samples]
            diff = [b - a for a, b in zip(dense, spade)]
            for column, values in zip(COLUMNS, (dense, spade, diff)):
                rows.append({"metric": metric, "method": method, "column": column, **cell(values)})

    traces = {}  # a sample has one trace per sparsity (several when methods have their own profiles)
    for r in records:
        traces.setdefault((r["sample"], r["trace"].get("sparsity")), r["trace"])
    kept = sum(bool(t["top1_agrees"]) for t in traces.values())
    cosines = [t["logit_cosine"] for t in traces.values() if t.get("logit_cosine") is not None]
    return {
        "kind": kind,
        "methods": order,
        "metrics": list(KIND_METRICS[kind]),
        "samples": len({sample for sample, _ in traces}),
        "complete_samples": len(complete),
        "interval": {"method": ci, "confidence": confidence,
                     **({"seed": seed, "resamples": resamples} if ci == "bootstrap" else {}),
                     "description": ("Student-t interval of the mean" if ci == "t"
                                     else "percentile bootstrap of the mean (seeded)")},
        "top1_kept": {"count": kept, "total": len(traces), "fraction": kept / len(traces)},
        **({"backoff": _backoff(traces)} if any("sparsity_scale" in t for t in traces.values()) else {}),
        "logit_cosine_mean": float(np.mean(cosines)) if cosines else None,
        "seconds": _seconds_by_device([r for r in records if COPIED_FROM not in r], order),
        "copied": _copied_counts(records),
        "rows": rows,
    }


def _backoff(traces: dict[tuple, dict]) -> dict:
    """How many traces were re-solved at a lower sparsity to keep the top-1 class: {"count", "total",
    "scales": {factor: count}} (a record without a factor counts as not re-solved)."""
    scales = [float(t.get("sparsity_scale", 1.0)) for t in traces.values()]
    lowered = sorted((s for s in scales if s < 1.0), reverse=True)
    return {"count": len(lowered), "total": len(scales),
            "scales": {f"{s:g}": lowered.count(s) for s in dict.fromkeys(lowered)}}


def _copied_counts(records: list[dict]) -> dict[str, int]:
    """How many records were copied from each other results folder (they were timed there, not here)."""
    counts: dict[str, int] = {}
    for r in records:
        if COPIED_FROM in r:
            counts[r[COPIED_FROM]] = counts.get(r[COPIED_FROM], 0) + 1
    return dict(sorted(counts.items()))


def _seconds_by_device(records: list[dict], methods: list[str]) -> dict:
    """Mean seconds per trace and per (method, dense/spade map), for each device that wrote records (a resumed
    folder can mix CPU and GPU records; records written before devices were recorded count as "unrecorded").
    The caller passes only the records computed for this folder, not those copied from another."""
    out = {}
    for device in sorted({r.get("device", "unrecorded") for r in records}):
        recs = [r for r in records if r.get("device", "unrecorded") == device]
        traces = {(r["sample"], r["seconds"]["trace"]) for r in recs}
        per_method = {}
        for m in methods:
            timed = [r["seconds"] for r in recs if r["method"] == m]
            if timed:
                per_method[m] = {label: float(np.mean([t[label] for t in timed])) for label in ("dense", "spade")}
        out[device] = {"records": len(recs), "trace_mean": float(np.mean([t for _, t in traces])),
                       "methods": per_method}
    return out


def _row_lookup(summary: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["metric"], r["method"], r["column"]): r for r in summary["rows"]}


def _fmt(cell: dict, signed: bool = False) -> str:
    if cell["n"] == 0 or math.isnan(cell["mean"]):
        return "–"
    mean = f"{cell['mean']:+.2f}" if signed else f"{cell['mean']:.2f}"
    if math.isnan(cell["low"]):
        return mean
    return f"{mean} [{cell['low']:.2f}, {cell['high']:.2f}]"


def _label(method: str) -> str:
    return "**Average**" if method == AVERAGE else (METHODS[method].label if method in METHODS else method)


def markdown(summary: dict, title: str = "", notes: list[str] | None = None) -> str:
    """The paper's layout: for each metric a table of method rows (then Average) x Dense / SPADE / SPADE − Dense,
    each cell ``mean [low, high]``."""
    look = _row_lookup(summary)
    conf = summary["interval"]["confidence"]
    lines = [f"# {title}" if title else "", ""] if title else []
    kept = summary["top1_kept"]
    traces = "" if kept["total"] == summary["samples"] else " traces (one per sample and sparsity)"
    lines.append(f"Samples: {summary['samples']} ({summary['complete_samples']} with every method). "
                 f"The SPADE trace keeps the dense top-1 on {kept['count']} of {kept['total']}{traces} "
                 f"({100 * kept['fraction']:.1f}%).")
    if "backoff" in summary:
        backoff = summary["backoff"]
        scales = ", ".join(f"x{s}: {n}" for s, n in backoff["scales"].items()) or "none"
        lines.append(f"Keep-decision back-off (not the paper's protocol): {backoff['count']} of {backoff['total']} "
                     f"traces changed the top-1 at the requested sparsity and were re-solved at a lower one "
                     f"(sparsity scale {scales}).")
    devices = summary["seconds"]
    copied = summary.get("copied", {})
    computed = ", ".join(f"{d} ({v['records']} records, {v['trace_mean']:.1f} s per trace)" for d, v in devices.items())
    lines.append(f"Computed on: {computed or 'nothing here'}." if not copied else
                 f"Computed for this folder on: {computed or 'nothing'}; "
                 + ", ".join(f"{n} records copied from `{source}` (timed there, not counted here)"
                             for source, n in copied.items()) + ".")
    lines.append(f"Cells: mean [{100 * conf:g}% CI], {summary['interval']['description']}; "
                 "SPADE − Dense is the paired per-sample difference.")
    for note in notes or []:
        lines.append(note)
    for metric in summary["metrics"]:
        lines += ["", f"## {METRIC_LABELS.get(metric, metric)}", ""]
        lines.append("| Method | n | " + " | ".join(COLUMN_LABELS[c] for c in COLUMNS) + " |")
        lines.append("|---|---:|" + "---:|" * len(COLUMNS))
        for method in [*summary["methods"], AVERAGE]:
            cells = [look[(metric, method, c)] for c in COLUMNS]
            text = [_fmt(cell, signed=(c == "difference")) for c, cell in zip(COLUMNS, cells)]
            if method == AVERAGE:
                text = [f"**{t}**" for t in text]
            lines.append(f"| {_label(method)} | {cells[0]['n']} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def csv_text(summary: dict) -> str:
    """One CSV line per (metric, method, column): n, mean, ci_low, ci_high (percentages)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "method", "column", "n", "mean", "ci_low", "ci_high"])
    for r in summary["rows"]:
        writer.writerow([r["metric"], r["method"], r["column"], r["n"]] +
                        ["" if math.isnan(r[k]) else f"{r[k]:.4f}" for k in ("mean", "low", "high")])
    return out.getvalue()


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def environment() -> dict:
    """Versions of Python and the numerical packages, and the git commit of the working tree when known."""
    versions = {"python": platform.python_version()}
    for dist in ("spade-explorer", "torch", "torchvision", "captum", "timm", "zennit", "numpy", "scipy",
                 "scikit-learn"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions["git_commit"] = commit or None
    return versions


def write_tables(summary: dict, folder: str | Path, config: dict, *, title: str = "",
                 extra: dict | None = None, stem: str | None = None) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` (stem: default the kind) into ``folder``;
    returns the paths.

    The JSON holds the summary, the folder's configuration (model, sparsity, seeds, samples), the
    environment's versions and ``extra`` (e.g. the device)."""
    root = Path(folder)
    kind = summary["kind"]
    notes = []
    if kind == "trojan":
        notes.append("Trojan AUC: the better of the signed and absolute map per sample (the authors' protocol); "
                     "pointing game: a hit when the maximum of that same map lies inside the trigger.")
    else:
        notes.append("Insertion / deletion of the signed map, measured on the dense model; target = the dense "
                     "top-1 of each clean crop.")
    stem = stem or kind
    paths = [root / f"{stem}.md", root / f"{stem}.csv", root / f"{stem}.json"]
    paths[0].write_text(markdown(summary, title, notes))
    paths[1].write_text(csv_text(summary))
    document = {"format": "spade-benchmark-table/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "config": config, "environment": environment(), **(extra or {}), **summary}
    paths[2].write_text(json.dumps(_json_safe(document), indent=2) + "\n")
    return paths


@dataclass(frozen=True)
class TableSummary:
    """What a written ``<kind>.json`` says at a glance: one results folder's headline figures.

    folder: the folder's name. model, weights_sha256: the model as ``benchmark.model_identity`` recorded it
    (empty strings when the file predates the field). samples, complete_samples: samples with any / every method.
    methods: the methods scored. created: ISO time the table was written. top1_kept: fraction of traces that keep
    the dense top-1 in [0, 1], or None. average: metric -> the Average row's SPADE - Dense interval (percentage
    points)."""

    folder: str
    kind: str
    model: str
    weights_sha256: str
    samples: int
    complete_samples: int
    methods: tuple[str, ...]
    created: str
    top1_kept: float | None
    average: dict[str, Interval]

    @property
    def size(self) -> int:
        """Samples x methods with every method scored: how much evidence the table holds."""
        return self.complete_samples * len(self.methods)


def read_table(path: str | Path) -> TableSummary:
    """The headline figures of a table JSON written by ``write_tables``; ConfigError when it is not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != "spade-benchmark-table/1":
            raise ValueError("not a spade-benchmark-table/1 file")
        model = document.get("config", {}).get("model", {})
        average = {r["metric"]: Interval(int(r["n"]), float(r["mean"]), float(r["low"]), float(r["high"]))
                   for r in document["rows"] if r["method"] == AVERAGE and r["column"] == "difference"}
        kept = document.get("top1_kept") or {}
        return TableSummary(
            folder=path.parent.name, kind=str(document["kind"]), model=str(model.get("name", "")),
            weights_sha256=str(model.get("weights_sha256", "")), samples=int(document["samples"]),
            complete_samples=int(document["complete_samples"]), methods=tuple(document["methods"]),
            created=str(document.get("created", "")),
            top1_kept=float(kept["fraction"]) if "fraction" in kept else None, average=average)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a benchmark table written by `python -m spade benchmark`: {exc}") from exc
