"""The benchmark runs shipped under benchmarks/results/: an overview of every run of one kind (Trojan or insertion)
and the table of the one chosen, the current model's fullest run by default.

The figures come from the tables ``python -m spade benchmark`` wrote (``<kind>.md`` and ``<kind>.json``), read
with ``spade_lab.tables.read_table``; nothing is recomputed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from spade.errors import ConfigError, SpadeError
from spade.models import default_backdoored_model, load_model
from spade_lab.benchmark import model_identity
from spade_lab.tables import KIND_METRICS, Interval, TableSummary, read_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
COMMAND = "python -m spade benchmark"
DELTA_LABELS = {"trojan_auc": "Trojan AUC Δ", "pointing_game": "pointing game Δ",
                "insertion_auc": "insertion Δ (↑ better)", "deletion_auc": "deletion Δ (↓ better)"}
DELTA_HELP = "SPADE − Dense averaged over the methods: mean [95 % CI], percentage points"


@dataclass(frozen=True)
class Kind:
    """What the runs of one benchmark kind measured: the registry model whose current weights mark its runs, one
    sentence on what a run scores, and the paper's averages over its ten methods (ResNet-50 on ImageNet; Tables 1
    and 2 as quoted in shared/SPADE.md) to compare with."""

    model: str
    what: str
    paper: str


KINDS = {
    "trojan": Kind(
        default_backdoored_model(),
        "Each run scores its saliency methods on seeded samples of held-out photos with the heart trigger pasted "
        "(the paper's Table 1).",
        "For comparison, the paper (ResNet-50, 111 samples) reports a Trojan AUC Δ of +3.33 with FastSPADE and "
        "+5.54 with exact SPADE."),
    "insertion": Kind(
        "efficientnet_lite0",
        "Each run scores its saliency methods on seeded clean crops of held-out photos with `efficientnet_lite0`, "
        "measured on the dense model (the paper's Table 2).",
        "For comparison, the paper (ResNet-50) reports an insertion Δ of +3.02 and a deletion Δ of −0.80 with "
        "FastSPADE."),
}


@dataclass(frozen=True)
class BenchmarkRun:
    """One results folder's table: the Markdown as written and its headline figures (None when the folder has no
    readable JSON next to the Markdown)."""

    path: str  # relative to the repository where possible, for display
    markdown: str
    summary: TableSummary | None


def benchmark_runs(kind: str, folder: Path | None = None) -> list[BenchmarkRun]:
    """The tables of one kind ("trojan", "insertion") under ``folder`` (default benchmarks/results/), in path
    order."""
    folder = folder or RESULTS_DIR
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.rglob(f"{kind}*.md")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        try:
            summary = read_table(path.with_suffix(".json"))
        except ConfigError:
            summary = None
        try:
            shown = str(path.relative_to(ROOT))
        except ValueError:
            shown = str(path)
        out.append(BenchmarkRun(shown, text, summary))
    return out


def _current(summary: TableSummary, weights_sha256: str | None) -> bool:
    return bool(weights_sha256) and summary.weights_sha256 == weights_sha256


def headline_run(runs: list[BenchmarkRun], weights_sha256: str | None) -> int:
    """Index of the run to show first: one of the current model's runs if any, the one with the most evidence
    (complete samples x methods), the newest on a tie; runs without a summary come last."""
    def rank(run: BenchmarkRun) -> tuple:
        s = run.summary
        if s is None:
            return (False, False, -1, "")
        return (True, _current(s, weights_sha256), s.size, s.created)
    return max(range(len(runs)), key=lambda i: rank(runs[i]))


@st.cache_data(show_spinner=False)
def model_weights_sha256(name: str) -> str | None:
    """The weights hash that results folders record for a registry model as shipped (None when it cannot load).
    Computed once per process on a CPU copy loaded for the purpose (0.2-0.4 s for Lite0), which is then dropped,
    so that it takes no slot in the shared model cache."""
    try:
        return model_identity(load_model(name, device="cpu"))["weights_sha256"]
    except SpadeError:
        return None


def _signed(cell: Interval | None) -> str:
    return "" if cell is None else f"{cell.mean:+.2f} [{cell.low:+.2f}, {cell.high:+.2f}]"


def overview_table(runs: list[BenchmarkRun], weights_sha256: str | None) -> list[dict]:
    """One row per run with a summary: its folder, whether it scored the current model, samples, methods, the
    Average row's SPADE − Dense for each of its kind's metrics (mean [95 % CI], percentage points), the top-1
    kept."""
    rows = []
    for run in runs:
        if (s := run.summary) is None:
            continue
        rows.append({
            "run": s.folder,
            "current model": _current(s, weights_sha256),
            "samples": s.complete_samples,
            "methods": len(s.methods),
            **{DELTA_LABELS[m]: _signed(s.average.get(m)) for m in KIND_METRICS.get(s.kind, ())},
            "top-1 kept": s.top1_kept,
        })
    return rows


OVERVIEW_FORMAT = {
    "current model": st.column_config.CheckboxColumn(help="Scored the model as shipped now (the weights hash in "
                                                          "the run's config.json)"),
    "samples": st.column_config.NumberColumn(help="Samples scored with every method"),
    **{label: st.column_config.TextColumn(help=DELTA_HELP) for label in DELTA_LABELS.values()},
    "top-1 kept": st.column_config.NumberColumn(format="percent", help="Traces that keep the dense top-1"),
}


def demoted(markdown: str, levels: int = 2) -> str:
    """Markdown with every ATX heading ``levels`` deeper, so a table's title does not outshout the page's."""
    return re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown, flags=re.M)


def runs_section(kind: str, key: str) -> None:
    """The overview of the ``kind`` runs (a key of `KINDS`), a selector (widget ``key``) and the chosen run's
    table."""
    runs = benchmark_runs(kind)
    if not runs:
        st.info(f"No {kind} benchmark table has been produced yet. The tables will appear here from "
                f"`benchmarks/results/<run>/{kind}.md`; produce them with:")
        st.code(f"{COMMAND} {kind} --out benchmarks/results/{kind}-uniform", language="bash")
        return
    about = KINDS[kind]
    current = model_weights_sha256(about.model)
    st.caption(f"{about.what} Δ: SPADE − Dense, the mean over the methods in percentage points with its 95 % "
               f"confidence interval. {about.paper} `benchmarks/results/README.md` says how each run was made.")
    if overview := overview_table(runs, current):
        st.dataframe(overview, hide_index=True, width="stretch", column_config=OVERVIEW_FORMAT,
                     height=35 * (len(overview) + 1) + 3)  # every run in view, no inner scrolling
    chosen = st.selectbox("Table", range(len(runs)), index=headline_run(runs, current), key=key,
                          format_func=lambda i: runs[i].path)
    with st.container(border=True):
        st.markdown(demoted(runs[chosen].markdown))
