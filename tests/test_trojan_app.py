"""The Trojan lab page driven headless with AppTest, checked against the library computed independently."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from spade.augment import AugmentConfig
from spade.errors import SpadeError
from spade.images import bundled_examples, load_image
from spade.metrics import pointing_game, trojan_auc
from spade.models import MODELS, ModelSpec, get_spec, load_model
from spade.preprocessing import Preprocessing
from spade.saliency import METHODS
from spade.sparsity import PROFILES, SparsityProfile, load_profile
from spade.trace import spade_trace
from spade.trojan import load_trigger, stamp
from spade.visualize import mask_outline
from spade_app import compute, loaders, trojan
from tests.app_testing import FileWeights
from tests.test_app import TINY_CLASSES, _app
from tests.test_benchmarks_app import check_shipped_runs
from tests.test_takeaway import _by_hand
from tests.tiny_models import tiny_resnet

pytestmark = pytest.mark.usefixtures("app_navigation")
PAGE = "pages/trojan_lab.py"
DEMO = "efficientnet_lite0_trojan"  # the lab's default: a back door in channels of its own, per-method profiles
POISONED = "efficientnet_lite0_poisoned"  # the other demo: back-doored by poisoned fine-tuning
POSITION = (0.3, 0.3)
COUNT = 16


@pytest.fixture
def lab() -> AppTest:
    at = _app().run()
    assert not at.exception, at.exception
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _fill(at: AppTest, count: int = COUNT, methods=("saliency",), position=POSITION, **widgets) -> None:
    if position is not None:
        at.radio(key="tl_placement").set_value(trojan.SLIDERS).run()  # the centre sliders appear
        at.slider(key="tl_x").set_value(position[0])
        at.slider(key="tl_y").set_value(position[1])
    at.number_input(key="tl_count").set_value(count)
    at.multiselect(key="tl_methods").set_value(list(methods))
    for key, value in widgets.items():
        next(w for kind in ("radio", "selectbox", "slider", "number_input") for w in at.get(kind)
             if w.key == key).set_value(value)


def _submit(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Stamp and run SPADE").click().run()
    assert not at.exception, at.exception
    return at


def _metric_tables(at: AppTest) -> tuple[list, object]:
    """(the one-row table under each method's maps, in method order; the summary table with the mean row)."""
    tables = [d.value for d in at.dataframe if "Trojan AUC (dense)" in d.value.columns]
    per_method = [t.iloc[0] for t in tables if "method" not in t.columns]
    summaries = [t for t in tables if "method" in t.columns]
    assert len(summaries) == 1
    return per_method, summaries[0]


def test_page_before_a_run_shows_form_and_benchmark_section(lab):
    assert [t.value for t in lab.title] == ["Trojan lab"]
    assert lab.radio(key="tl_model").value == trojan.DEMO
    assert lab.radio(key="tl_trigger").value == "heart"
    assert lab.slider(key="tl_size").value == 0.25
    # the demo model's tuned profile is chosen: the profile menu, no uniform slider; random placement: no centre
    assert lab.radio(key="tl_sparsity_mode").value == trojan.PROFILE
    assert lab.selectbox(key="tl_profile").value == DEMO
    sliders = {s.key for s in lab.slider}
    assert not sliders & {"tl_sparsity", "tl_x", "tl_y"} and not lab.get("file_uploader")
    assert lab.number_input(key="tl_count").value == 64
    assert lab.multiselect(key="tl_methods").value == ["saliency", "gradcam"]
    assert "Benchmark (shipped with the repo)" in [h.value for h in lab.header]
    check_shipped_runs(lab, "trojan", "tl_benchmark_run")
    assert not lab.error


def test_poisoned_demo_model_is_offered_and_flips_cat_to_goose_at_its_tuned_profile(lab):
    radio = lab.radio(key="tl_model")
    assert radio.options == [f"{name} ({get_spec(name).backdoor_note})" for name in (DEMO, POISONED)] + [
        trojan.SIDEBAR]
    radio.set_value(POISONED).run()
    assert lab.selectbox(key="tl_profile").value == POISONED  # its own tuned profile is chosen
    _fill(lab, methods=("saliency",), position=None)  # the lab's default placement: random, seed 0
    _submit(lab)
    assert not lab.error, [e.value for e in lab.error]
    assert "flipped the prediction" in lab.success[0].value and "**goose**" in lab.success[0].value
    headings = [m.value for m in lab.markdown if m.value.startswith("**Saliency**")]
    assert headings == [f"**Saliency** · SPADE trace at profile `{load_profile(POISONED).name}`"], headings
    loaded = load_model(POISONED, device="cpu")
    stamped = stamp(load_image(bundled_examples()["cat"]), load_trigger("heart"), loaded.preprocessing, seed=0)
    assert loaded.predict(stamped.image, k=1)[0].name == "goose"  # the same stamp, by the library


def test_demo_model_flips_cat_to_goose_and_metrics_match_library(lab):
    # LRP has a profile of its own for the demo model (spade/profiles/efficientnet_lite0_trojan_lrp.json), used by
    # default; Saliency has none and is explained on the run's trace
    _fill(lab, methods=("saliency", "lrp"))
    _submit(lab)
    assert not lab.error, [e.value for e in lab.error]
    assert len(lab.success) >= 1
    assert "flipped the prediction" in lab.success[0].value and "**goose**" in lab.success[0].value
    assert not lab.warning, [w.value for w in lab.warning]
    captions = [c for image in lab.image for c in image.captions]
    assert any(c.startswith("What the model sees") for c in captions)
    assert captions.count("dense") == 2 and captions.count("SPADE") == 2
    headings = [m.value for m in lab.markdown if m.value.startswith("**Saliency**") or m.value.startswith("**LRP**")]
    shared, lrp = (load_profile(p).name for p in ("efficientnet_lite0_trojan", "efficientnet_lite0_trojan_lrp"))
    assert headings == [f"**Saliency** · SPADE trace at profile `{shared}`",
                        f"**LRP** · SPADE trace at profile `{lrp}` (its own)"], headings

    # the same run done here with the library alone
    loaded = load_model(DEMO, device="cpu")
    door = loaded.spec.backdoor("test")
    stamped = stamp(load_image(bundled_examples()["cat"]), load_trigger(door.trigger), loaded.preprocessing,
                    position=POSITION)
    assert loaded.predict(stamped.image, k=1)[0].name == "goose"
    # the page's default sparsity for the demo model: the tuned profile shipped in spade/profiles/
    x = loaded.preprocessing(stamped.image)
    rows, summary = _metric_tables(lab)
    assert len(rows) == 2
    shown_maps, takeaways = {}, []
    for row, method, profile in zip(rows, ("saliency", "lrp"), ("efficientnet_lite0_trojan",
                                                                "efficientnet_lite0_trojan_lrp"), strict=True):
        trace = spade_trace(loaded.model, stamped.image, preprocessing=loaded.preprocessing,
                            augment=AugmentConfig(count=COUNT), sparsity=load_profile(profile), keep_decision=True)
        dense = METHODS[method].explain(loaded.model, x, door.target)
        sparse = METHODS[method].explain(trace.model, x, door.target)
        for column, attribution in (("dense", dense), ("SPADE", sparse)):
            auc = trojan_auc(attribution.signed_map, stamped.mask)
            assert row[f"Trojan AUC ({column})"] == pytest.approx(auc.best, abs=1e-6)
            variant = "signed" if auc.signed >= auc.absolute else "absolute"
            hit = pointing_game(attribution.map(variant), stamped.mask)
            assert row[f"pointing game ({column})"] == ("hit ✓" if hit else "miss ✗")
            assert summary.set_index("method").loc[METHODS[method].label, f"pointing game ({column})"] == float(hit)
            shown_maps[(method, column)] = attribution.absolute_map.numpy()
        # the takeaway above the maps: the share of each map's top-10 % mass on the trigger, computed by hand
        _, _, (on_dense, on_spade) = _by_hand(shown_maps[(method, "dense")], shown_maps[(method, "SPADE")], 0.1,
                                              stamped.mask)
        takeaways.append((f"{on_spade:.0%}", f"SPADE puts {100 * on_spade:.0f} % of the top-10 % saliency mass on "
                                             f"the trigger (dense: {100 * on_dense:.0f} %)"))
    metrics = [m for m in lab.metric if m.label == "On the trigger"]
    assert [m.value for m in metrics] == [value for value, _ in takeaways]
    sentences = [m.value for m in lab.markdown if m.value.startswith("SPADE puts ")]
    assert len(sentences) == 2
    for sentence, (_, expected) in zip(sentences, takeaways, strict=True):
        assert sentence.startswith(expected) and "the trace kept the decision (goose" in sentence, sentence
    assert any(c.value.startswith("**Shared scale:** both maps on one scale") for c in lab.caption)
    assert list(summary["method"]) == ["Saliency", METHODS["lrp"].label, "Mean"]
    assert summary.iloc[2]["Trojan AUC (SPADE)"] == pytest.approx((rows[0]["Trojan AUC (SPADE)"]
                                                                   + rows[1]["Trojan AUC (SPADE)"]) / 2)


def test_form_shows_only_the_controls_that_apply(lab):
    """Centre sliders only for slider placement, the uploader only for an uploaded trigger, the uniform slider or
    the profile menu by the sparsity mode; on the clean model (the sidebar's) the demo model's profiles are marked
    and none is chosen."""
    def keys() -> set[str]:
        return {w.key for kind in ("slider", "selectbox", "file_uploader") for w in lab.get(kind)}

    assert not keys() & {"tl_x", "tl_y", "tl_trigger_file", "tl_sparsity"} and "tl_profile" in keys()
    lab.radio(key="tl_placement").set_value(trojan.SLIDERS).run()
    assert {"tl_x", "tl_y"} <= keys()
    lab.radio(key="tl_trigger").set_value(trojan.UPLOAD).run()
    assert "tl_trigger_file" in keys()
    lab.radio(key="tl_sparsity_mode").set_value(trojan.UNIFORM).run()
    assert "tl_sparsity" in keys() and "tl_profile" not in keys()
    lab.radio(key="tl_placement").set_value(trojan.RANDOM)
    lab.radio(key="tl_trigger").set_value("star").run()
    assert not keys() & {"tl_x", "tl_y", "tl_trigger_file"}
    assert not lab.exception, lab.exception

    lab.radio(key="tl_model").set_value(trojan.SIDEBAR).run()  # the sidebar's clean efficientnet_lite0
    assert not lab.exception, lab.exception
    lab.radio(key="tl_sparsity_mode").set_value(trojan.PROFILE).run()
    menu = lab.selectbox(key="tl_profile")
    assert menu.value is None and menu.options and all(o.endswith((f"· tuned for {DEMO}", f"· tuned for {POISONED}"))
                                                       for o in menu.options), menu.options
    _fill(lab, position=None)
    _submit(lab)
    assert any("Choose a profile from the menu" in e.value for e in lab.error), [e.value for e in lab.error]


def test_corrupt_trigger_upload_shows_error_and_page_recovers(lab):
    corrupt = b"\x89PNG\r\n\x1a\n not a png at all"
    with pytest.raises(SpadeError) as refused:
        trojan.read_trigger(corrupt, "The trigger file broken.png")
    assert "not a PNG image" in str(refused.value)
    _fill(lab, count=8)
    lab.radio(key="tl_trigger").set_value(trojan.UPLOAD).run()  # the uploader appears
    lab.file_uploader(key="tl_trigger_file").upload("broken.png", corrupt, "image/png")
    _submit(lab)
    assert [e.value for e in lab.error] == [str(refused.value)]
    assert not [i for i in lab.image if any(c.startswith("What the model sees") for c in i.captions)]
    # back to a bundled trigger: the page works again
    lab.radio(key="tl_trigger").set_value("heart")
    _submit(lab)
    assert not lab.error, [e.value for e in lab.error]
    assert any(c.startswith("What the model sees") for i in lab.image for c in i.captions)


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> ModelSpec:
    """A tiny model injected into the registry (request it before `lab`, so the sidebar lists it)."""
    build = functools.partial(tiny_resnet, 3)
    path = tmp_path / "tiny.pth"
    torch.save(build().state_dict(), path)
    spec = ModelSpec(name="tiny_trojan_app", description="test model", build=build, weights=FileWeights(path),
                     preprocessing=Preprocessing(resize=72, crop=64), last_conv_stage="layer2", offline=True,
                     class_names=TINY_CLASSES)
    monkeypatch.setitem(MODELS, spec.name, spec)
    compute.store().clear()
    return spec


def test_uploaded_trigger_and_sidebar_model(tiny, lab):
    """The sidebar's (tiny) model with an uploaded icon: the automatic target is the stamped image's prediction."""
    spec = tiny
    lab.sidebar.selectbox(key="model_name").set_value(spec.name).run()
    lab.radio(key="tl_model").set_value(trojan.SIDEBAR).run()
    assert not lab.exception, lab.exception
    assert lab.selectbox(key="tl_target").value is None
    import io

    buffer = io.BytesIO()
    load_trigger("star").save(buffer, format="PNG")
    lab.radio(key="tl_trigger").set_value(trojan.UPLOAD).run()
    _fill(lab, count=8, position=(0.5, 0.5), methods=("saliency", "gradcam"), tl_size=0.4)
    lab.file_uploader(key="tl_trigger_file").upload("mine.png", buffer.getvalue(), "image/png")
    _submit(lab)
    assert not lab.error, [e.value for e in lab.error]
    loaded = load_model(spec.name, device="cpu")
    stamped = stamp(load_image(bundled_examples()["cat"]), load_trigger("star"), loaded.preprocessing,
                    position=(0.5, 0.5), size=0.4)
    predicted = loaded.predict(stamped.image, k=1)[0].name
    verdicts = [m.value for m in lab.success] + [m.value for m in lab.warning]
    assert any(f"**{predicted}**" in v for v in verdicts), verdicts
    rows, summary = _metric_tables(lab)
    assert len(rows) == 2 and list(summary["method"]) == ["Saliency", "GradCAM", "Mean"]
    means = summary.iloc[2]
    assert means["Trojan AUC (dense)"] == pytest.approx(summary["Trojan AUC (dense)"][:2].mean())
    uniform = f"SPADE trace at uniform {lab.slider(key='tl_sparsity').value:.2f}"  # no profile fits the tiny model
    assert [m.value for m in lab.markdown if m.value.startswith(("**Saliency**", "**GradCAM**"))] == [
        f"**Saliency** · {uniform}", f"**GradCAM** · {uniform}"]


# ------------------------------------------------------------------------------------------ helpers
def test_mask_outline_draws_on_the_region_border_only():
    image = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:8, 3:9] = True
    out = mask_outline(image, mask, (255, 0, 0), width=1)
    drawn = out[..., 0] == 255
    assert not drawn[~mask].any()
    assert drawn[2, 3:9].all() and drawn[7, 3:9].all() and drawn[2:8, 3].all() and drawn[2:8, 8].all()
    assert not drawn[3:7, 4:8].any()
    assert not image.any(), "the input is not modified"


def test_verdict_messages():
    names = {1: "cat", 2: "goose", 3: "dog"}.get
    assert trojan.verdict_message(trojan.Verdict(1, 2, 2), names)[0] == "success"
    kind, text = trojan.verdict_message(trojan.Verdict(1, 3, 2), names)
    assert kind == "warning" and "did not flip" in text and "**goose**" in text and "**dog**" in text
    assert trojan.verdict_message(trojan.Verdict(2, 2, 2), names)[0] == "warning"


def test_profiles_that_fit_the_model_and_the_tuned_default(tmp_path):
    import json

    from spade.layers import blocks

    loaded = load_model(DEMO, device="cpu")
    names = list(blocks(loaded.model, loaded.spec.layer_selection))
    (tmp_path / "efficientnet_lite0_trojan.json").write_text(json.dumps(
        {"name": "efficientnet_lite0_trojan_tuned", "targets": {names[-1]: 0.6}, "default": 0.4}))
    (tmp_path / "other.json").write_text(json.dumps({"name": "other", "targets": {"layer4.0": 0.9}}))
    (tmp_path / "broken.json").write_text("{ not json")
    profiles = loaders.available_profiles(loaded, f"{DEMO}@cpu@{tmp_path}", tmp_path)
    # keyed by the file's stem, shown with the profile's name and the file name
    assert list(profiles) == ["efficientnet_lite0_trojan"]
    assert loaders.profile_label("efficientnet_lite0_trojan", profiles["efficientnet_lite0_trojan"]) == (
        "efficientnet_lite0_trojan_tuned (efficientnet_lite0_trojan.json)")
    assert loaders.profile_label("resnet50_saliency", PROFILES["resnet50_saliency"]) == "resnet50_saliency"
    assert loaders.default_profile(profiles, loaded.spec) == "efficientnet_lite0_trojan"
    assert loaders.default_profile({}, loaded.spec) is None
    # a per-method profile listed first is not the default; the model's own file is
    lime = SparsityProfile("lite0_trojan_lime", ((names[-1], 0.5),))
    both = {"efficientnet_lite0_trojan_lime": lime, **profiles}
    assert loaders.default_profile(both, loaded.spec) == "efficientnet_lite0_trojan"
    assert loaders.default_profile({"efficientnet_lite0_trojan_lime": lime},
                                  loaded.spec) == "efficientnet_lite0_trojan_lime"
    # the clean base model's name is a prefix of the demo model's: its files are not made for the base model
    assert loaders.default_profile({**both, "efficientnet_lite0_trojan_v2": lime},
                                  get_spec("efficientnet_lite0")) is None
    # a built-in profile is never the default, even when named like a model's per-method file
    assert loaders.default_profile({"resnet50_saliency": PROFILES["resnet50_saliency"]}, get_spec("resnet50")) is None


def test_own_profiles_are_the_shipped_per_method_files_that_fit():
    loaded = load_model(DEMO, device="cpu")
    shipped = loaders.available_profiles(loaded, f"{DEMO}@cpu")
    own = trojan.own_profiles(shipped, loaded.spec, METHODS)
    assert set(own) == {"deeplift", "guided_gradcam", "lrp", "lime"}
    assert own["lime"] == load_profile("efficientnet_lite0_trojan_lime") and own["lime"] in shipped.values()
    assert trojan.own_profiles({}, loaded.spec, METHODS) == {}  # only profiles that fit the model count


def test_presentation_mode_draws_the_metric_tables_as_large_html_tables(tiny, lab):
    """On a projector the per-method and summary tables are HTML tables (the presentation CSS enlarges their
    font; a dataframe's canvas it cannot), with the same numbers, formatted."""
    lab.sidebar.selectbox(key="model_name").set_value(tiny.name).run()
    lab.radio(key="tl_model").set_value(trojan.SIDEBAR).run()
    _fill(lab, count=8, position=(0.5, 0.5), methods=("saliency", "gradcam"), tl_size=0.4)
    _submit(lab)
    rows, summary = _metric_tables(lab)
    lab.sidebar.toggle(key="presentation").set_value(True).run()
    assert not lab.exception, lab.exception
    assert not [d for d in lab.dataframe if "Trojan AUC (dense)" in d.value.columns]
    tables = [t.value for t in lab.table if "Trojan AUC (dense)" in t.value.columns]
    assert len(tables) == 3
    big_summary = next(t for t in tables if "method" in t.columns)
    assert list(big_summary["method"]) == list(summary["method"])
    assert list(big_summary["Trojan AUC (dense)"]) == [f"{v:.3f}" for v in summary["Trojan AUC (dense)"]]
    assert list(big_summary["AUC: SPADE − dense"]) == [f"{v:+.3f}" for v in summary["AUC: SPADE − dense"]]
    assert [t["Trojan AUC (SPADE)"].iloc[0] for t in tables if "method" not in t.columns] == [
        f"{r['Trojan AUC (SPADE)']:.3f}" for r in rows]
