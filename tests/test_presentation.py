"""Issue #36 items 6, 7, 8 and 10: presentation mode (CSS, Run in view, projector figures), How SPADE works (no doubled
heading, a computed conclusion), the benchmark overview's human names and conclusion, and progress reports of the
Neurons steps (visualize, evidence, previews) and of the statistics pass."""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import pytest
from PIL import Image

from spade_app import benchmarks, figures, presentation
from spade_lab.tables import Interval
from tests.test_app import _app, _run_neurons, _with_model, at, tiny, tiny_specs  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("app_navigation")


# ----------------------------------------------------------------------------------------------- presentation mode
def _html(app) -> str:
    return "\n".join(h.proto.body for h in app.get("html"))


def test_presentation_mode_adds_its_css_and_keeps_run_in_view_without_a_settings_expander():
    app = _app().run()
    assert not app.exception, app.exception
    assert presentation.PRESENTATION_CSS.strip() not in _html(app)
    assert [e.label for e in app.expander if e.label == "Settings"] == ["Settings"]  # normal mode: the expander
    app.toggle(key="presentation").set_value(True).run()
    assert not app.exception, app.exception
    html = _html(app)
    assert presentation.PRESENTATION_CSS.strip() in html
    # the settings shrink to the Run button: no collapsed expander hides it, the CSS hides the rest of the form
    assert "Settings" not in [e.label for e in app.expander]
    assert any(b.label == "Run SPADE" for b in app.button)
    assert presentation.hide_all_but_run_css("presentation_settings_explore") in html
    # "Show the settings" brings every setting back
    app.toggle(key="presentation_show_settings_explore").set_value(True).run()
    assert presentation.hide_all_but_run_css("presentation_settings_explore") not in _html(app)


def test_hide_all_but_run_css_keeps_the_submit_button_and_its_holders():
    css = presentation.hide_all_but_run_css("box")
    assert css.startswith("<style>") and css.endswith("</style>")
    assert '.st-key-box [data-testid="stVerticalBlock"] > :not(:has([data-testid="stFormSubmitButton"]))' in css
    assert "display: none" in css


def test_projector_figure_enlarges_every_font_and_the_height():
    layers = [type("Row", (), {"name": f"l{i}", "target": 0.5, "achieved": 0.5, "error": 1e-3})() for i in range(3)]
    fig = figures.layer_chart(layers, height=400)
    assert fig.layout.xaxis2.tickfont.size == 9  # the layer chart's own small tick labels
    big = presentation.projector_figure(fig, True)
    assert big.layout.height == int(400 * presentation.HEIGHT_FACTOR)
    for axis in (big.layout.xaxis, big.layout.xaxis2, big.layout.yaxis, big.layout.yaxis2):
        assert axis.tickfont.size == presentation.TICK_PX
    assert big.layout.yaxis.title.font.size == presentation.TITLE_PX
    heat = go.Figure(go.Heatmap(z=[[0, 1], [1, 0]], colorbar=dict(title="value")))
    heat = presentation.projector_figure(heat, True)
    assert heat.data[0].colorbar.tickfont.size == presentation.TICK_PX
    assert heat.data[0].colorbar.title.font.size == presentation.TITLE_PX
    # off: unchanged
    plain = figures.layer_chart(layers, height=400)
    assert presentation.projector_figure(plain, False).to_dict() == figures.layer_chart(layers, height=400).to_dict()


def test_prediction_bars_label_every_bar_in_full_beside_it():
    """Two models share each row: a label inside a bar would be shrunk to the bar's thickness."""
    preds = {"clean image": [(282, "tiger cat", 0.371), (99, "goose", 0.0)],
             "stamped image": [(282, "tiger cat", 0.0), (99, "goose", 1.0)]}
    fig = figures.top_k_bars(preds)
    assert [bar.text for bar in fig.data] == [("37.1%", "0.0%"), ("0.0%", "100.0%")]
    assert all(bar.textposition == "outside" and bar.constraintext == "none" and not bar.cliponaxis
               for bar in fig.data)
    assert fig.layout.xaxis.range[1] > 1 and max(fig.layout.xaxis.tickvals) == 1  # room for "100.0%", ticks to 1


# ----------------------------------------------------------------------------------------------- How SPADE works
def test_how_spade_works_has_no_doubled_heading_and_states_the_benchmarks_conclusion():
    app = _app().run()
    app.switch_page("pages/how_spade_works.py").run()
    assert not app.exception, app.exception
    headings = [t.value for t in app.title] + [h.value for h in app.header] + [h.value for h in app.subheader]
    assert len(headings) == len(set(headings)), headings
    markdown = [m.value for m in app.markdown]
    trojan = benchmarks.conclusion_text("trojan")
    if trojan:
        assert f"**Trojan:** {trojan}" in markdown
    insertion = benchmarks.conclusion_text("insertion")
    if insertion:
        assert f"**Insertion / deletion:** {insertion}" in markdown


# ----------------------------------------------------------------------------------------------- benchmark overview
def _run(folder: str, config: dict, average: dict, differences: dict | None = None, created="2026-11-27T10:00:00",
         samples=200, methods=("saliency", "lrp")) -> benchmarks.BenchmarkRun:
    from spade_lab.tables import TableSummary

    summary = TableSummary(folder=folder, kind="trojan", model="m", weights_sha256="w", samples=samples,
                           complete_samples=samples, methods=methods, created=created, top1_kept=1.0, average=average)
    return benchmarks.BenchmarkRun(f"benchmarks/results/{folder}/trojan.md", "# t", summary, config, differences or {})


def test_run_names_say_sparsity_solver_and_date_never_the_folder():
    uniform = {"model": {"name": "m"}, "sparsity": 0.5, "solver": {"mode": "group", "damp": 0.01,
                                                                  "sparsity_of": "nonzero"}}
    tuned = {"model": {"name": "m"}, "sparsity": {"name": "m_tuned", "targets": {}}, "keep_decision": [0.8],
             "method_sparsity": {"lrp": {}, "lime": {}}, "solver": {"mode": "obc", "damp": 1.0}}
    cell = Interval(200, 1.0, 0.5, 1.5)
    runs = [_run("trojan-uniform-xyz", uniform, {"trojan_auc": cell}),
            _run("trojan-tuned-abc", tuned, {"trojan_auc": cell}, created="2026-11-26T01:00:00"),
            _run("trojan-uniform-again", uniform, {"trojan_auc": cell})]
    assert benchmarks.run_names(runs) == [
        "2026-11-27 · uniform 0.5", "2026-11-26 · profile tuned + 2 per-method profiles, decision kept · exact (OBC) "
        "· damping 1 · all weights", "2026-11-27 · uniform 0.5 (2)"]
    # runs of several models: each name says its model
    other = dataclasses.replace(runs[2], summary=dataclasses.replace(runs[2].summary, model="n"))
    assert benchmarks.run_names([runs[0], other]) == ["2026-11-27 · m · uniform 0.5", "2026-11-27 · n · uniform 0.5"]
    assert benchmarks.solver_name(tuned) == "exact (OBC), damping 1, all weights"
    refit = {**uniform, "solver": {**uniform["solver"], "refit_output": True}}
    assert benchmarks.solver_name(refit) == "SparseGPT, kernel groups, classifier refit"
    assert benchmarks.run_name(_run("insertion-refit", refit, {"trojan_auc": cell})).endswith("classifier refit")
    rows = benchmarks.overview_table(runs, {"m": "w"})
    assert all("/" not in str(v) and "trojan-" not in str(v) for row in rows for v in row.values())
    assert [r["solver"] for r in rows][0] == "SparseGPT, kernel groups"
    # the overview leaves model and solver to their columns; only a run that repeats all three gets a number
    assert [r["run"] for r in rows] == ["2026-11-27 · uniform 0.5", "2026-11-26 · profile tuned + 2 per-method "
                                        "profiles, decision kept", "2026-11-27 · uniform 0.5 (2)"]
    obc = {**uniform, "solver": {**uniform["solver"], "mode": "obc"}}
    assert [r["run"] for r in benchmarks.overview_table([runs[0], _run("o", obc, {})], {})] == [
        "2026-11-27 · uniform 0.5", "2026-11-27 · uniform 0.5"]


def test_verdict_and_conclusion_follow_the_numbers_and_say_where_spade_does_not_help():
    better, worse, unclear = Interval(200, 2.0, 1.0, 3.0), Interval(200, -2.0, -3.0, -1.0), Interval(200, 0.1, -1, 1)
    assert [benchmarks.verdict("trojan_auc", c) for c in (better, worse, unclear)] == [1, -1, 0]
    assert benchmarks.verdict("deletion_auc", worse) == 1  # deletion: lower is better
    config = {"model": {"name": "m"}, "sparsity": 0.5, "solver": {"mode": "group", "damp": 0.01}}
    runs = [_run("a", config, {"trojan_auc": better, "pointing_game": unclear},
                 {"trojan_auc": {"saliency": better, "lrp": worse}}, samples=200),
            _run("b", config, {"trojan_auc": worse, "pointing_game": worse}, samples=10)]
    sentences = benchmarks.conclusion("trojan", runs, "w")
    assert sentences[0].startswith("On its fullest run (200 samples, 2 methods, uniform 0.5), SPADE on average "
                                   "improved the Trojan AUC (+2.00 points")
    assert "did not clearly change the pointing game" in sentences[0]
    assert "the Trojan AUC of LRP (-2.00)" in sentences[1]
    assert sentences[-1] == "Over all 2 runs, the average Trojan AUC improved in 1, worsened in 1 and did not " \
                            "clearly change in 0."
    # where the runs scored several models, the headline names its run's model
    other = dataclasses.replace(runs[1], summary=dataclasses.replace(runs[1].summary, model="n"))
    assert benchmarks.conclusion("trojan", [runs[0], other], "w")[0].startswith("On its fullest run on m (200 samples")
    # a headline run that made things worse says so
    bad = benchmarks.conclusion("trojan", [_run("c", config, {"trojan_auc": worse, "pointing_game": unclear})], "w")
    assert "worsened the Trojan AUC" in bad[0] and "did not make the maps more faithful" in bad[1]


def test_delta_figure_labels_bars_with_the_run_names():
    cell = Interval(200, 1.0, 0.5, 1.5)
    runs = [_run("x", {"sparsity": 0.5}, {"trojan_auc": cell, "pointing_game": cell})]
    names = benchmarks.run_names(runs)
    fig = benchmarks.delta_figure(runs, names, "trojan")
    assert [list(t.y) for t in fig.data] == [names, names]
    assert all(t.orientation == "h" for t in fig.data)


# ----------------------------------------------------------------------------------------------- progress
def test_statistics_progress_starts_the_statistics_stage_when_augmentation_ends():
    from spade.augment import AugmentConfig
    from spade.preprocessing import Preprocessing
    from spade.trace import prepare_statistics
    from tests.tiny_models import tiny_mobilenet

    seen = []
    prepare_statistics(tiny_mobilenet(seed=0), Image.new("RGB", (40, 40), "red"),
                       preprocessing=Preprocessing(resize=32, crop=32), augment_config=AugmentConfig(count=8),
                       batch_size=4, progress=lambda stage, f: seen.append((stage, f)))
    stages = [stage for stage, _ in seen]
    first = stages.index("statistics")
    assert seen[first - 1] == ("augment", 1.0) and seen[first] == ("statistics", 0.0)
    assert [f for stage, f in seen if stage == "statistics"] == [0.0, 0.5, 1.0]


def test_neuron_comparison_reports_every_step_and_previews(tiny_specs):  # noqa: F811 (the fixture)
    """The Neurons run's library call reports visualize progress every PROGRESS_EVERY steps for both models, the
    evidence from 0 %, and hands over preview images every PREVIEW_EVERY steps."""
    from spade.featurevis import ClassLogit, FeatureVisConfig, compare_neuron
    from spade.featurevis.optimize import PREVIEW_EVERY, PROGRESS_EVERY

    spec = next(iter(tiny_specs.values()))
    model = spec.build().eval()
    image = Image.new("RGB", (64, 64), (120, 80, 40))
    steps = 2 * PREVIEW_EVERY
    stages, previews = [], []
    compare_neuron(model, model, image, ClassLogit(0), preprocessing=spec.preprocessing,
                   config=FeatureVisConfig(steps=steps, seed=0), top_k=1, feature_layer=spec.last_conv_stage,
                   progress=lambda s, f: stages.append((s, f)),
                   preview=lambda which, step, img: previews.append((which, step, img.shape, str(img.dtype))))
    for which in ("dense", "trace"):
        fractions = [f for s, f in stages if s == f"{which} visualize"]
        assert fractions == pytest.approx([k / steps for k in range(PROGRESS_EVERY, steps + 1, PROGRESS_EVERY)])
        evidence = [f for s, f in stages if s == f"{which} evidence"]
        assert evidence[0] == 0.0 and evidence[-1] == 1.0 and len(evidence) > 2
        shown = [(step, shape, dtype) for w, step, shape, dtype in previews if w == which]
        assert [step for step, _, _ in shown] == [PREVIEW_EVERY, 2 * PREVIEW_EVERY]
        assert all(len(shape) == 3 and shape[2] == 3 and dtype == "uint8" for _, shape, dtype in shown)


def test_presentation_table_is_an_html_table_with_marks_and_formats():
    from streamlit.testing.v1 import AppTest

    def page():
        from spade_app.presentation import table

        rows = [{"run": "a", "current": True, "kept": 0.795}, {"run": "b", "current": False, "kept": None}]
        table(rows, False, {"kept": "{:.1%}"}, hide_index=True)
        table(rows, True, {"kept": "{:.1%}"}, hide_index=True)

    app = AppTest.from_function(page).run()
    assert not app.exception, app.exception
    assert len(app.dataframe) == 1 and len(app.table) == 1
    shown = app.table[0].value
    assert list(shown["current"]) == ["✓", ""] and list(shown["kept"]) == ["79.5%", ""]


def test_neurons_page_shows_a_progress_bar_for_every_step(tiny, at):  # noqa: F811 (the fixtures)
    """Between Run and Done the Neurons page's status box shows every step's progress: augmentation, statistics,
    solve, the dense and the SPADE visualization and evidence; and previews of the images being optimised."""
    from spade.featurevis.optimize import PREVIEW_EVERY

    _with_model(at, tiny.name)
    _run_neurons(at, nv_steps=PREVIEW_EVERY)
    assert not at.error, [e.value for e in at.error]
    bars = [p.proto.text for p in at.get("progress")]
    for stage in ("augment", "statistics", "solve", "dense visualize", "trace visualize", "dense evidence",
                  "trace evidence"):
        assert f"{stage}: 100%" in bars, (stage, bars)
    captions = [c for i in at.image for c in i.captions]
    assert f"Dense model: step {PREVIEW_EVERY} of {PREVIEW_EVERY}" in captions
    assert f"SPADE trace: step {PREVIEW_EVERY} of {PREVIEW_EVERY}" in captions
