"""The benchmark runs shipped under benchmarks/results/: an overview of every run of one kind (Trojan or insertion)
and the table of the one chosen, the current model's fullest run by default.

The figures come from the tables ``python -m spade benchmark`` wrote (``<kind>.md`` and ``<kind>.json``), read
with ``spade_lab.tables.read_table``; nothing is recomputed here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from spade.errors import ConfigError, SpadeError
from spade.models import default_backdoored_model, load_model
from spade_app.presentation import projector_figure, table
from spade_lab.benchmark import model_identity
from spade_lab.tables import AVERAGE, KIND_METRICS, Interval, TableSummary, read_table

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
    config: dict = field(default_factory=dict, hash=False, compare=False)  # the folder's config.json ({} if none)
    #: metric -> method -> SPADE − Dense (percentage points), the methods' rows of the table JSON (no Average)
    differences: dict = field(default_factory=dict, hash=False, compare=False)


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
        out.append(BenchmarkRun(shown, text, summary, _read_json(path.parent / "config.json"),
                                method_differences(_read_json(path.with_suffix(".json")))))
    return out


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def method_differences(document: dict) -> dict[str, dict[str, Interval]]:
    """{metric: {method: SPADE − Dense interval}} of a table JSON's method rows (the Average row left out);
    {} for anything else."""
    out: dict[str, dict[str, Interval]] = {}
    try:
        for r in document.get("rows", ()):
            if r["column"] == "difference" and r["method"] != AVERAGE:
                out.setdefault(r["metric"], {})[r["method"]] = Interval(int(r["n"]), float(r["mean"]),
                                                                        float(r["low"]), float(r["high"]))
    except (KeyError, TypeError, ValueError):
        return {}
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


METRIC_NAMES = {"trojan_auc": "Trojan AUC", "pointing_game": "pointing game", "insertion_auc": "insertion AUC",
                "deletion_auc": "deletion AUC"}
#: +1 where a larger SPADE − Dense is better, -1 where a smaller one is (deletion: confidence should drop fast).
BETTER = {"trojan_auc": 1, "pointing_game": 1, "insertion_auc": 1, "deletion_auc": -1}
SOLVER_NAMES = {"group": "SparseGPT, kernel groups", "row": "SparseGPT, rows", "obc": "exact (OBC)"}
DEFAULT_DAMP = 0.01


def verdict(metric: str, cell: Interval) -> int:
    """+1 when the whole 95 % interval of SPADE − Dense lies on the better side of 0 for ``metric``, -1 when it lies
    on the worse side, 0 when it holds 0 (or is undefined)."""
    sign = BETTER.get(metric, 1)
    low, high = sorted((sign * cell.low, sign * cell.high))
    if low > 0:
        return 1
    if high < 0:
        return -1
    return 0


def sparsity_name(config: dict) -> str:
    """The run's sparsity in words: "uniform 0.5", "profile tuned", "+ 3 per-method profiles", "decision kept"."""
    sparsity = config.get("sparsity")
    model = str(config.get("model", {}).get("name", ""))
    if isinstance(sparsity, (int, float)):
        text = f"uniform {sparsity:g}"
    elif isinstance(sparsity, dict):
        name = str(sparsity.get("name", "")).removeprefix(f"{model}_").removeprefix(model).strip("_")
        text = f"profile {name}" if name else "tuned profile"
    else:
        text = "sparsity not recorded"
    if own := config.get("method_sparsity"):
        text += f" + {len(own)} per-method profiles"
    if config.get("keep_decision"):
        text += ", decision kept"
    return text


def solver_name(config: dict) -> str:
    """The run's solver in words: "SparseGPT, kernel groups" (+ a damping other than 0.01, + "all weights" when a
    sparsity counted every weight, zeros included)."""
    return ", ".join(solver_parts(config))


def solver_parts(config: dict, name_default: bool = True) -> list[str]:
    """The run's solver in words, part by part: its mode (left out when it is the default `group` and not
    ``name_default``), a damping other than 0.01 ("damping 1"), "all weights" when a sparsity counted every
    weight, zeros included (also every run written before the field existed), and "classifier refit" for a run with
    `spade.refit`."""
    solver = config.get("solver") or {}
    mode = solver.get("mode")
    parts = []
    if name_default or mode not in (None, "group"):
        parts.append(SOLVER_NAMES.get(mode, "not recorded" if mode is None else str(mode)))
    damp = solver.get("damp")
    if isinstance(damp, (int, float)) and damp != DEFAULT_DAMP:
        parts.append(f"damping {damp:g}")
    if solver and solver.get("sparsity_of", "all") == "all":
        parts.append("all weights")
    if solver.get("refit_output"):
        parts.append("classifier refit")
    return parts


def run_name(run: BenchmarkRun, with_model: bool = False, with_solver: bool = True) -> str:
    """A human name for a run: its date, its model (``with_model``), its sparsity and (``with_solver``) what sets its
    solver apart from the default `group` (the folder name when none of these is recorded)."""
    s = run.summary
    date = s.created[:10] if s is not None and s.created else ""
    if not run.config:
        return f"{date} · {Path(run.path).parent.name}".strip(" ·")
    model = s.model if with_model and s is not None else ""
    solver = solver_parts(run.config, name_default=False) if with_solver else []
    parts = (date, model, sparsity_name(run.config), *solver)
    return " · ".join(part for part in parts if part)


def _numbered(names: list[str], keys: list) -> list[str]:
    """``names`` with " (2)", " (3)", ... added, in order, to the repeats of the same key."""
    seen: dict = {}
    out = []
    for name, key in zip(names, keys):
        seen[key] = seen.get(key, 0) + 1
        out.append(name if seen[key] == 1 else f"{name} ({seen[key]})")
    return out


def several_models(runs: list[BenchmarkRun]) -> bool:
    """Whether the runs with a summary scored more than one model."""
    return len({r.summary.model for r in runs if r.summary is not None}) > 1


def run_names(runs: list[BenchmarkRun]) -> list[str]:
    """`run_name` of each run (naming the model where the runs scored several), made unique with " (2)", " (3)",
    ... in order."""
    names = [run_name(run, several_models(runs)) for run in runs]
    return _numbered(names, names)


def overview_table(runs: list[BenchmarkRun], shipped: dict[str, str | None]) -> list[dict]:
    """One row per run with a summary: its date and sparsity (`run_name` without model and solver, which have
    columns of their own; " (2)", ... where all three repeat), the Average row's SPADE − Dense for each of its
    kind's metrics (mean [95 % CI], percentage points), the top-1 kept, model, solver, whether it scored that model
    as shipped now (``shipped``: model name -> its current weights hash, `shipped_weights`), samples, methods. The
    figures come right after the name, so that they stay in view in a narrow window. No file paths."""
    rows = [{
        "run": run_name(run, with_solver=False),
        **{DELTA_LABELS[m]: _signed(run.summary.average.get(m)) for m in KIND_METRICS.get(run.summary.kind, ())},
        "top-1 kept": run.summary.top1_kept,
        "model": run.summary.model or "not recorded",
        "solver": solver_name(run.config),
        "current model": _current(run.summary, shipped.get(run.summary.model)),
        "samples": run.summary.complete_samples,
        "methods": len(run.summary.methods),
    } for run in runs if run.summary is not None]
    names = _numbered([row["run"] for row in rows], [(row["run"], row["model"], row["solver"]) for row in rows])
    return [{**row, "run": name} for row, name in zip(rows, names)]


def shipped_weights(runs: list[BenchmarkRun]) -> dict[str, str | None]:
    """The current weights hash (`model_weights_sha256`) of every model the runs scored, by name."""
    return {name: model_weights_sha256(name) for name in sorted({r.summary.model for r in runs if r.summary})}


OVERVIEW_FORMAT = {
    "solver": st.column_config.TextColumn(width="large", help="The layer solver and its settings"),
    "current model": st.column_config.CheckboxColumn(help="Scored the model as shipped now (the weights hash in "
                                                          "the run's config.json)"),
    "samples": st.column_config.NumberColumn(help="Samples scored with every method"),
    **{label: st.column_config.TextColumn(help=DELTA_HELP) for label in DELTA_LABELS.values()},
    "top-1 kept": st.column_config.NumberColumn(format="percent", help="Traces that keep the dense top-1"),
}


def overview_format(rows: list[dict]) -> dict:
    """`OVERVIEW_FORMAT` with the run column pinned and wide enough for its longest name (about 5.8 px per
    character of the app's table font), so that no name is cut off and the figures beside it stay in view."""
    longest = max((len(str(row["run"])) for row in rows), default=0)
    run = st.column_config.TextColumn(width=min(560, round(5.8 * longest) + 20), pinned=True,
                                      help="Date and sparsity; the model and solver columns complete it")
    return {"run": run, **OVERVIEW_FORMAT}


def _method_label(method: str) -> str:
    from spade.saliency import METHODS

    return METHODS[method].label if method in METHODS else method


def _change(metric: str, cell: Interval) -> str:
    """ "raised the Trojan AUC by 1.38 points" / "made the deletion AUC worse by 0.44 points" / "left ... unchanged"."""
    name, v = METRIC_NAMES.get(metric, metric), verdict(metric, cell)
    if BETTER.get(metric, 1) < 0:
        name += " (lower is better)"
    if v == 0:
        return f"did not clearly change the {name} ({cell.mean:+.2f} points, the 95 % interval holds 0)"
    better = "improved" if v > 0 else "worsened"
    return f"{better} the {name} ({cell.mean:+.2f} points, 95 % interval {cell.low:+.2f} to {cell.high:+.2f})"


def conclusion(kind: str, runs: list[BenchmarkRun], weights_sha256: str | None) -> list[str]:
    """Plain-language sentences on what the shipped ``kind`` runs say, computed from their tables: the headline run's
    average change per metric (first sentence, enough on its own; it names the run's model where the runs scored
    several), the methods it made worse, and how many of all runs improved, worsened or did not clearly change the
    kind's first metric. [] without a readable run."""
    summarized = [r for r in runs if r.summary is not None]
    if not summarized:
        return []
    run = runs[headline_run(runs, weights_sha256)]
    s = run.summary
    metrics = [m for m in KIND_METRICS[kind] if m in s.average]
    if not metrics:
        return []
    changes = " and ".join(_change(m, s.average[m]) for m in metrics)
    where = f" on {s.model}" if several_models(summarized) and s.model else ""
    sentences = [f"On its fullest run{where} ({s.complete_samples} samples, {len(s.methods)} methods, "
                 f"{sparsity_name(run.config)}), SPADE on average {changes}."]
    verdicts = [verdict(m, s.average[m]) for m in metrics]
    if all(v <= 0 for v in verdicts):
        sentences.append("So by this measure SPADE did not make the maps more faithful here"
                         + (": it made them less so." if any(v < 0 for v in verdicts) else "."))
    worse = []
    for m in metrics:
        methods = [f"{_method_label(method)} ({cell.mean:+.2f})" for method, cell in run.differences.get(m, {}).items()
                   if verdict(m, cell) < 0]
        if methods:
            worse.append(f"the {METRIC_NAMES[m]} of {', '.join(methods)}")
    if worse:
        sentences.append(f"Per method, it clearly worsened {'; and '.join(worse)}.")
    first = KIND_METRICS[kind][0]
    votes = [verdict(first, r.summary.average[first]) for r in summarized if first in r.summary.average]
    if len(votes) > 1:
        sentences.append(f"Over all {len(votes)} runs, the average {METRIC_NAMES[first]} improved in "
                         f"{votes.count(1)}, worsened in {votes.count(-1)} and did not clearly change in "
                         f"{votes.count(0)}.")
    return sentences


def delta_figure(runs: list[BenchmarkRun], names: list[str], kind: str) -> go.Figure:
    """Horizontal bars of each run's average SPADE − Dense (95 % interval as error bars), one panel per metric,
    the runs' human names as readable labels on the left; green better, red worse, grey unclear."""
    metrics = KIND_METRICS[kind]
    pairs = [(r, n) for r, n in zip(runs, names) if r.summary is not None]
    fig = make_subplots(rows=1, cols=len(metrics), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[DELTA_LABELS[m] for m in metrics])
    colours = {1: "#54A24B", -1: "#E45756", 0: "#9D9D9D"}
    for col, metric in enumerate(metrics, start=1):
        cells = [r.summary.average.get(metric) for r, _ in pairs]
        shown = [(n, c) for (_, n), c in zip(pairs, cells) if c is not None]
        fig.add_bar(y=[n for n, _ in shown], x=[c.mean for _, c in shown], orientation="h", showlegend=False,
                    marker_color=[colours[verdict(metric, c)] for _, c in shown],
                    error_x=dict(type="data", symmetric=False, array=[c.high - c.mean for _, c in shown],
                                 arrayminus=[c.mean - c.low for _, c in shown], color="#444444"),
                    hovertemplate="%{y}: %{x:+.2f} points<extra></extra>", row=1, col=col)
        fig.add_vline(x=0, line_color="#444444", line_width=1, row=1, col=col)
        fig.update_xaxes(title_text="percentage points", zeroline=False, row=1, col=col)
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont=dict(size=13))
    fig.update_layout(height=90 + 30 * len(pairs), margin=dict(l=10, r=10, t=40, b=10), bargap=0.3)
    return fig


def demoted(markdown: str, levels: int = 2) -> str:
    """Markdown with every ATX heading ``levels`` deeper, so a table's title does not outshout the page's."""
    return re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown, flags=re.M)


def conclusion_text(kind: str, brief: bool = False) -> str:
    """`conclusion` of the shipped runs of ``kind`` as one paragraph ("" without runs); ``brief``: its first
    sentence."""
    runs = benchmark_runs(kind)
    sentences = conclusion(kind, runs, model_weights_sha256(KINDS[kind].model)) if runs else []
    return " ".join(sentences[:1] if brief else sentences)


def runs_section(kind: str, key: str, presentation: bool | None = None) -> None:
    """The overview of the ``kind`` runs (a key of `KINDS`): one plain sentence of conclusion, a table of the runs
    by human name, a bar chart of their averages, a selector (widget ``key``) and the chosen run's table; the
    runs' files in an expander. presentation: projector fonts (None: the sidebar's presentation toggle)."""
    if presentation is None:
        presentation = bool(st.session_state.get("presentation", False))
    runs = benchmark_runs(kind)
    if not runs:
        st.info(f"No {kind} benchmark table has been produced yet. The tables will appear here from "
                f"`benchmarks/results/<run>/{kind}.md`; produce them with:")
        st.code(f"{COMMAND} {kind} --out benchmarks/results/{kind}-uniform", language="bash")
        return
    about = KINDS[kind]
    current = model_weights_sha256(about.model)
    names = run_names(runs)
    if sentences := conclusion(kind, runs, current):
        st.markdown(f"**In short:** {sentences[0]}")
    st.caption(f"{about.what} Δ: SPADE − Dense, the mean over the methods in percentage points with its 95 % "
               f"confidence interval. {about.paper}")
    if overview := overview_table(runs, shipped_weights(runs)):
        table(overview, presentation, {"top-1 kept": "{:.1%}"}, hide_index=True, width="stretch",  # every run in
              column_config=overview_format(overview), height=35 * (len(overview) + 1) + 3)  # view, no scrolling
        st.plotly_chart(projector_figure(delta_figure(runs, names, kind), presentation), width="stretch",
                        key=f"{key}_deltas")
    chosen = st.selectbox("Table of one run", range(len(runs)), index=headline_run(runs, current), key=key,
                          format_func=lambda i: names[i])
    with st.container(border=True):
        st.markdown(demoted(runs[chosen].markdown))
    with st.expander("The runs' files", expanded=False):
        st.caption(f"Written by `{COMMAND} {kind}`; `benchmarks/results/README.md` says how each run was made.")
        st.dataframe([{"run": n, "table": r.path} for r, n in zip(runs, names)], hide_index=True, width="stretch")
