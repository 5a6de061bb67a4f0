"""The shipped benchmark runs in the app (spade_app.benchmarks): which runs are found, which one is shown first, the
overview's figures against the tables written by the library, and the How SPADE works page showing both kinds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from spade_app import benchmarks
from spade_lab.tables import KIND_METRICS, summarize, write_tables
from tests.test_app import _app

pytestmark = pytest.mark.usefixtures("app_navigation")


def _results_folder(folder: Path, kind: str, name: str, weights: str, samples: int, methods: tuple[str, ...],
                    created: str) -> None:
    """A results folder as `benchmark <kind>` writes it, from handmade records: SPADE 5 points above dense on the
    kind's first metric, and 0 -> 100 % on its second."""
    first, second = KIND_METRICS[kind]
    run = folder / name
    run.mkdir(parents=True)
    records = [{"sample": f"s{i}", "index": i, "method": m, "trace": {"top1_agrees": True},
                "dense": {first: 0.80 + 0.01 * i, second: False},
                "spade": {first: 0.85 + 0.01 * i, second: True},
                "seconds": {"trace": 1.0, "dense": 0.1, "spade": 0.1}}
               for i in range(samples) for m in methods]
    write_tables(summarize(records, kind), run, {"model": {"name": "some_model", "weights_sha256": weights}})
    document = json.loads((run / f"{kind}.json").read_text())
    (run / f"{kind}.json").write_text(json.dumps({**document, "created": created}))


@pytest.mark.parametrize("kind", list(KIND_METRICS))
def test_runs_of_a_kind_are_found_and_the_current_models_fullest_comes_first(tmp_path, kind):
    other = next(k for k in KIND_METRICS if k != kind)
    two = ("saliency", "lrp")
    _results_folder(tmp_path, kind, "a-old-model", "0ld", 40, (*two, "lime"), "2026-01-03T00:00:00")
    _results_folder(tmp_path, kind, "b-current-partial", "cur", 10, two, "2026-01-04T00:00:00")
    _results_folder(tmp_path, kind, "c-current-full", "cur", 30, two, "2026-01-01T00:00:00")
    _results_folder(tmp_path, kind, "d-current-full-newer", "cur", 30, two, "2026-01-02T00:00:00")
    _results_folder(tmp_path, other, "f-other-kind", "cur", 50, two, "2026-01-05T00:00:00")
    (tmp_path / "e-no-json").mkdir()
    (tmp_path / "e-no-json" / f"{kind}.md").write_text("# A table without its JSON\n")
    runs = benchmarks.benchmark_runs(kind, tmp_path)
    assert [Path(r.path).parent.name for r in runs] == [
        "a-old-model", "b-current-partial", "c-current-full", "d-current-full-newer", "e-no-json"]
    assert runs[-1].summary is None and all(r.summary.kind == kind for r in runs[:-1])
    assert benchmarks.headline_run(runs, "cur") == 3  # the current model's, most samples x methods, then the newest
    assert benchmarks.headline_run(runs, None) == 0   # unknown model: the most evidence (40 x 3)
    rows = benchmarks.overview_table(runs, {"some_model": "cur"})
    assert [(r["run"], r["current model"], r["samples"], r["methods"]) for r in rows] == [
        ("2026-01-03 · a-old-model", False, 40, 3), ("2026-01-04 · b-current-partial", True, 10, 2),
        ("2026-01-01 · c-current-full", True, 30, 2), ("2026-01-02 · d-current-full-newer", True, 30, 2)]
    # "current" is per model: the same hash recorded for a model not shipped (or shipped with other weights) is not
    assert not any(r["current model"] for r in benchmarks.overview_table(runs, {"another_model": "cur"}))
    first, second = (benchmarks.DELTA_LABELS[m] for m in KIND_METRICS[kind])
    assert all(r[first].startswith("+5.00 [") and r[second].startswith("+100.00 [") for r in rows)
    assert benchmarks.benchmark_runs(kind, tmp_path / "missing") == []


def test_demoted_headings_keep_their_text():
    text = "# Title\n\nSamples: 3 # not a heading\n## Trojan AUC %\n###### deepest\n"
    assert benchmarks.demoted(text) == "### Title\n\nSamples: 3 # not a heading\n#### Trojan AUC %\n###### deepest\n"


def check_shipped_runs(at: AppTest, kind: str, key: str) -> None:
    """The page shows the shipped runs of ``kind``: its model's current fullest run first, and an overview that
    marks exactly the runs that scored a model as shipped now (or, with nothing shipped, the command that makes
    them)."""
    runs = benchmarks.benchmark_runs(kind)
    if not runs:
        assert any(c.value.startswith(f"{benchmarks.COMMAND} {kind}") for c in at.code)
        return
    current = benchmarks.model_weights_sha256(benchmarks.KINDS[kind].model)
    shown = runs[at.selectbox(key=key).value]
    assert any(benchmarks.KINDS[kind].paper in c.value for c in at.caption)  # the paper's averages beside ours
    assert shown.summary.weights_sha256 == current
    assert shown.summary.size == max(r.summary.size for r in runs if r.summary and r.summary.weights_sha256 == current)
    names = benchmarks.run_names(runs)
    listed = [r for r in runs if r.summary]
    # each row names its run by date and sparsity; with its model and solver columns, every row is its own run
    overview = next(d.value for d in at.dataframe if "current model" in d.value.columns and [
        re.sub(r" \(\d+\)$", "", n) for n in d.value["run"]] == [benchmarks.run_name(r, with_solver=False)
                                                                   for r in listed])
    assert list(overview["model"]) == [r.summary.model for r in listed]
    assert len(set(zip(overview["run"], overview["model"], overview["solver"]))) == len(overview)
    # the figures come right after the name, before the details
    assert list(overview.columns[1:1 + len(KIND_METRICS[kind])]) == [benchmarks.DELTA_LABELS[m]
                                                                      for m in KIND_METRICS[kind]]
    # human names, no file paths or folder names in the main view (the paths are in the files expander)
    assert not any(r.summary.folder in cell or "/" in cell for r in runs if r.summary for cell in overview["run"])
    assert at.selectbox(key=key).format_func(at.selectbox(key=key).value) == names[at.selectbox(key=key).value]
    scored_as_shipped = [r.summary is not None and r.summary.weights_sha256 == benchmarks.model_weights_sha256(
        r.summary.model) for r in runs]
    assert overview["current model"].sum() == sum(scored_as_shipped) and any(scored_as_shipped)
    assert any(m.value == benchmarks.demoted(shown.markdown).strip() for m in at.markdown)


def test_how_spade_works_shows_both_kinds_of_shipped_runs():
    at = _app().run()
    at.switch_page("pages/how_spade_works.py").run()
    assert not at.exception, at.exception
    assert [t.label for t in at.tabs] == ["Trojan (does the map point at the trigger?)",
                                          "Insertion / deletion (clean photos)"]
    check_shipped_runs(at, "trojan", "hw_trojan_run")
    check_shipped_runs(at, "insertion", "hw_insertion_run")
