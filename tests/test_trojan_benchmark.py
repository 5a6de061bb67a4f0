"""``spade.trojan`` benchmark: samples, resumable / sharded runs, tables, tuning, and the ``benchmark`` CLI.

Everything runs on a tiny ResNet built here with a known back door: its stem's channel 0 measures
"redness", the residual blocks pass that channel through unchanged, and class 0 fires when the mean
redness is high — so the red heart (and the yellow star) switch the prediction of greenish photos to class 0.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from spade.augment import AugmentConfig
from spade.decision import BACKOFF_FACTORS
from spade.errors import ConfigError
from spade.layers import prunable_layers
from spade.models import MODELS, Backdoor, LoadedModel, ModelSpec, PackageWeights
from spade.preprocessing import Preprocessing
from spade.solver import SolverConfig
from spade.sparsity import SparsityProfile, load_profile, resolve_targets
from spade.trojan import load_trigger, stamp
from spade_cli.main import main
from spade_lab.benchmark import BenchmarkConfig, run_benchmark
from spade_lab.records import load_results, merge_folder
from spade_lab.samples import SampleConfig, build_samples, folder_photos
from spade_lab.tables import csv_text, markdown, read_table, summarize, write_tables
from tests.tiny_models import TinyResNet

PRE = Preprocessing(resize=64, crop=56)
TARGET = 0
METHODS = ("saliency", "input_x_gradient")


pytestmark = pytest.mark.usefixtures("one_thread")


def backdoored_tiny() -> TinyResNet:
    """A TinyResNet whose class 0 logit is 100 * (mean redness - 0.012): a red or yellow patch flips it to 0."""
    torch.manual_seed(0)
    model = TinyResNet(num_classes=5, width=8).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(0.3)
        model.conv1.weight[0].zero_()
        model.conv1.weight[0, :, 1, 1] = torch.tensor([1.0, -0.5, -0.5])  # redness in normalized space
        for block in [*model.layer1, *model.layer2]:
            block.bn3.weight[0] = 0.0  # the residual branch leaves channel 0 alone
            block.bn3.bias[0] = 0.0
            if block.downsample is not None:
                block.downsample[0].weight[0].zero_()
                block.downsample[0].weight[0, 0] = 1.0
        model.fc.weight.mul_(0.1)
        model.fc.bias.zero_()
        model.fc.weight[0].zero_()
        model.fc.weight[0, 0] = 100.0
        model.fc.bias[0] = -100.0 * 0.012
    return model


def tiny_spec() -> ModelSpec:
    return ModelSpec(name="tiny_trojan", description="tiny back-doored test model", build=backdoored_tiny,
                     weights=PackageWeights("no-such-distribution"), preprocessing=PRE, last_conv_stage="layer2",
                     offline=True, class_names=tuple(f"class {i}" for i in range(5)), default_sparsity=0.5,
                     backdoors=(Backdoor("heart", TARGET, "test"), Backdoor("star", TARGET, "calibration")))


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    spec = tiny_spec()
    return LoadedModel(backdoored_tiny(), spec, spec.class_names, torch.device("cpu"), source="tiny")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Four greenish-blue noise photos of different sizes (no red: the clean model never says class 0)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(120, 90), (100, 100), (90, 130), (150, 80)]):
        pixels = np.stack([rng.uniform(0, 40, (h, w)), rng.uniform(90, 200, (h, w)), rng.uniform(90, 220, (h, w))], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def _samples(loaded, photo_dir, count=4, seed=0, trigger="heart"):
    return build_samples(loaded.model, PRE, folder_photos(photo_dir), SampleConfig(count=count, seed=seed),
                         trigger=load_trigger(trigger), target=TARGET, batch_size=8)


CONFIG = BenchmarkConfig(methods=METHODS, sparsity=0.5, augment=AugmentConfig(count=8))
IDENTITY = {"model": {"name": "tiny_trojan"}, "trigger": "heart", "target": TARGET}


def _strip(records):
    """Records without their timings."""
    return [{**{k: v for k, v in r.items() if k != "seconds"},
             "trace": {k: v for k, v in r["trace"].items() if k != "seconds"}} for r in records]


# ----------------------------------------------------------------------------------------------------------------
def test_samples_are_deterministic_and_really_flip(loaded, photo_dir):
    first = _samples(loaded, photo_dir, count=5)
    again = _samples(loaded, photo_dir, count=5)
    assert first.records == again.records and len(first.records) == 5
    assert len({r.id for r in first.records}) == 5
    assert _samples(loaded, photo_dir, count=3).records == first.records[:3]  # a larger count extends
    assert _samples(loaded, photo_dir, count=5, seed=1).records != first.records
    photos = folder_photos(photo_dir)
    trigger = load_trigger("heart")
    for record in first.records:
        crop = photos[record.photo].crop(record.crop)
        stamped = stamp(crop, trigger, PRE, seed=record.stamp_seed)
        with torch.no_grad():
            clean_top1 = int(loaded.model(PRE(crop)[None]).argmax())
            stamped_top1 = int(loaded.model(PRE(stamped.image)[None]).argmax())
        assert stamped_top1 == TARGET != clean_top1
        rendered = first.render(record)
        assert np.array_equal(np.asarray(rendered.image), np.asarray(stamped.image))
        assert rendered.mask.shape == (56, 56) and rendered.mask.any() and not rendered.mask.all()
        assert record.crop[2] <= photos[record.photo].size[0] and record.crop[3] <= photos[record.photo].size[1]


@pytest.fixture(scope="module")
def full_run(loaded, photo_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    summary = run_benchmark(loaded, _samples(loaded, photo_dir), CONFIG, folder, IDENTITY)
    assert summary.computed == 4 * len(METHODS) and summary.skipped == 0
    return load_results(folder, list(METHODS))


def test_records_hold_the_scores(loaded, full_run):
    assert len(full_run) == 4 * len(METHODS)
    for r in full_run:
        assert r["target"] == TARGET and r["method"] in METHODS
        for label in ("dense", "spade"):
            s = r[label]
            assert s["trojan_auc"] == max(s["trojan_auc_signed"], s["trojan_auc_absolute"])
            assert s["pointing_game"] == s[f"pointing_game_{s['variant']}"]
        assert isinstance(r["trace"]["top1_agrees"], bool)
        assert r["device"] == loaded.device.type  # folders can mix CPU and GPU records (resumed elsewhere)


def test_resume_skips_finished_work_and_gives_identical_results(loaded, photo_dir, full_run, tmp_path):
    samples = _samples(loaded, photo_dir)
    first = run_benchmark(loaded, samples, BenchmarkConfig(methods=("saliency",), sparsity=0.5,
                                                           augment=AugmentConfig(count=8)), tmp_path, IDENTITY)
    assert first.computed == 4
    path = tmp_path / "results.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the last line cut short, as by a killed process
    second = run_benchmark(loaded, samples, CONFIG, tmp_path, IDENTITY)
    assert second.computed == 5 and second.skipped == 3
    third = run_benchmark(loaded, samples, CONFIG, tmp_path, IDENTITY)
    assert third.computed == 0 and third.skipped == 8
    assert _strip(load_results(tmp_path, list(METHODS))) == _strip(full_run)
    with pytest.raises(Exception, match="another configuration"):
        run_benchmark(loaded, samples, BenchmarkConfig(methods=METHODS, sparsity=0.7,
                                                       augment=AugmentConfig(count=8)), tmp_path, IDENTITY)


def test_shards_merged_equal_an_unsharded_run(loaded, photo_dir, full_run, tmp_path):
    samples = _samples(loaded, photo_dir)
    for i in (1, 2):
        run_benchmark(loaded, samples, CONFIG, tmp_path, IDENTITY, shard=(i, 2))
    assert sorted(p.name for p in tmp_path.glob("results*.jsonl")) == ["results.shard-1-of-2.jsonl",
                                                                       "results.shard-2-of-2.jsonl"]
    merged = merge_folder(tmp_path, list(METHODS))
    assert [p.name for p in tmp_path.glob("results*.jsonl")] == ["results.jsonl"]
    assert _strip(merged) == _strip(full_run)
    assert csv_text(summarize(merged, "trojan")) == csv_text(summarize(full_run, "trojan"))


def test_a_method_with_its_own_sparsity_is_scored_on_its_own_trace(loaded, photo_dir, full_run, tmp_path):
    """method_sparsity gives input_x_gradient a trace at 0.8: its records equal a plain run at 0.8, saliency's
    equal the plain run at 0.5, and the tables count both traces of each sample."""
    samples = _samples(loaded, photo_dir)
    config = BenchmarkConfig(methods=METHODS, sparsity=0.5, method_sparsity=(("input_x_gradient", 0.8),),
                             augment=AugmentConfig(count=8))
    run_benchmark(loaded, samples, config, tmp_path / "mixed", IDENTITY)
    run_benchmark(loaded, samples, BenchmarkConfig(methods=("input_x_gradient",), sparsity=0.8,
                                                   augment=AugmentConfig(count=8)), tmp_path / "plain", IDENTITY)
    mixed = load_results(tmp_path / "mixed", list(METHODS))
    assert {(r["method"], r["trace"]["sparsity"]) for r in mixed} == {("saliency", "0.5"), ("input_x_gradient", "0.8")}
    for record in mixed:
        assert record["trace"].pop("sparsity")
    expected = [r for r in full_run if r["method"] == "saliency"] + load_results(tmp_path / "plain")
    key = lambda r: (r["sample"], r["method"])  # noqa: E731
    assert sorted(_strip(mixed), key=key) == sorted(_strip(expected), key=key)
    kept = summarize(load_results(tmp_path / "mixed"), "trojan")
    assert kept["samples"] == 4 and kept["top1_kept"]["total"] == 8
    assert config.identity()["method_sparsity"] == {"input_x_gradient": 0.8}
    assert CONFIG.identity()["method_sparsity"] == {}
    with pytest.raises(Exception, match="only one sparsity"):
        BenchmarkConfig(methods=METHODS, method_sparsity=(("saliency", 0.2), ("saliency", 0.4)))
    with pytest.raises(Exception, match="nope"):
        BenchmarkConfig(methods=METHODS, method_sparsity=(("nope", 0.2),))
    same_name = SparsityProfile("tuned", (("layer1", 0.5),)), SparsityProfile("tuned", (("layer2", 0.5),))
    with pytest.raises(Exception, match="share a name"):
        BenchmarkConfig(methods=METHODS, sparsity=same_name[0], method_sparsity=(("saliency", same_name[1]),))


def test_identity_holds_every_setting_that_decides_the_numbers():
    """A folder resumes only with the same solver, back-off ladder and per-method sparsities."""
    plain = BenchmarkConfig(kind="trojan", methods=("saliency",), solver=SolverConfig(sparsity_of="all")).identity()
    assert plain["keep_decision"] == [] and plain["solver"]["sparsity_of"] == "all"
    default = BenchmarkConfig(kind="trojan", methods=("saliency",), keep_decision=True).identity()
    assert default["keep_decision"] == list(BACKOFF_FACTORS) and default["solver"]["sparsity_of"] == "nonzero"
    assert plain != default
    # the classifier refit changes the numbers; off, it leaves the identity of the folders written before it existed
    refit = BenchmarkConfig(kind="trojan", methods=("saliency",), keep_decision=True,
                            solver=SolverConfig(refit_output=True)).identity()
    assert refit["solver"]["refit_output"] is True and "refit_output" not in default["solver"]
    assert {k: v for k, v in refit.items() if k != "solver"} == {k: v for k, v in default.items() if k != "solver"}


def test_keep_decision_resolves_only_the_traces_that_change_the_top1(photo_dir, tmp_path):
    """Insertion benchmark (target = the dense top-1 of clean crops) on a tiny MobileNet that loses the top-1 of
    some crops at sparsity 0.7: those are re-solved lower, the others are the plain run's records unchanged."""
    from tests.tiny_models import tiny_mobilenet

    spec = tiny_spec()
    model = tiny_mobilenet(seed=1).eval()
    mobile = LoadedModel(model, spec, spec.class_names, torch.device("cpu"), source="tiny")
    samples = build_samples(model, PRE, folder_photos(photo_dir), SampleConfig(count=4, require_flip=False),
                            batch_size=8)
    runs = {}
    for keep in (False, True):
        config = BenchmarkConfig(kind="insertion", methods=("saliency",), sparsity=0.7, steps=5,
                                 augment=AugmentConfig(count=8), keep_decision=keep)
        run_benchmark(mobile, samples, config, tmp_path / str(keep), {})
        runs[keep] = {r["sample"]: r for r in load_results(tmp_path / str(keep), ["saliency"])}
    lost = {s for s, r in runs[False].items() if not r["trace"]["top1_agrees"]}
    assert 0 < len(lost) < 4  # the setting exercises both cases
    for sample, record in runs[True].items():
        trace = record["trace"]
        assert trace["top1_agrees"]
        assert trace.pop("requested_sparsity") == "0.7"
        if sample in lost:
            assert trace["sparsity_scale"] < 1 and trace["params_kept"] > runs[False][sample]["trace"]["params_kept"]
            assert float(trace["used_sparsity"]) == pytest.approx(0.7 * trace["sparsity_scale"])
        else:
            assert trace.pop("sparsity_scale") == 1.0 and trace.pop("used_sparsity") == "0.7"
            assert _strip([record]) == _strip([runs[False][sample]])
    summary = summarize(list(runs[True].values()), "insertion")
    assert summary["top1_kept"]["count"] == 4 and summary["backoff"]["count"] == len(lost)
    assert f"Keep-decision back-off (not the paper's protocol): {len(lost)} of 4 traces" in markdown(summary)
    assert "backoff" not in summarize(list(runs[False].values()), "insertion")
    with pytest.raises(Exception, match="another configuration"):  # a plain run cannot resume a back-off folder
        run_benchmark(mobile, samples, BenchmarkConfig(kind="insertion", methods=("saliency",), sparsity=0.7,
                                                       steps=5, augment=AugmentConfig(count=8)), tmp_path / "True", {})


@pytest.mark.parametrize("mode,level", [("group", 0.7), ("obc", 0.95)])
def test_tuning_with_keep_decision_scores_the_backed_off_traces(photo_dir, mode, level):
    """A tiny MobileNet whose traces lose the top-1 of some samples when conv_head is pruned: without keep_decision
    that level is infeasible; with it, its score is the mean AUC of the traces at the first back-off factor that
    keeps the top-1, recomputed here with the plain trace solver. With the exact solver the search takes each
    group's whole grid and its back-off levels from one pass (`solve_many`): the same scores as solving each."""
    from spade.metrics import trojan_auc
    from spade.saliency import METHODS as SALIENCY
    from spade.trace import prepare_statistics, solve
    from spade_lab.tuning import TuningConfig, stage_groups, tune_profile
    from tests.tiny_models import tiny_mobilenet

    spec = tiny_spec()
    model = tiny_mobilenet(seed=1).eval()
    mobile = LoadedModel(model, spec, spec.class_names, torch.device("cpu"), source="tiny")
    samples = build_samples(model, PRE, folder_photos(photo_dir), SampleConfig(count=3, require_flip=False),
                            trigger=load_trigger("heart"), target=TARGET, batch_size=8)
    config = TuningConfig(methods=("saliency",), levels=(0.0, level), augment=AugmentConfig(count=8),
                          solver=SolverConfig(mode=mode))
    candidate = ("conv_head", level)
    plain = {(h["group"], h["level"]): h for h in tune_profile(mobile, samples, config).history if not h["chosen"]}
    history = tune_profile(mobile, samples, TuningConfig(**{**config.__dict__, "keep_decision": True})).history
    kept = {(h["group"], h["level"]): h for h in history if not h["chosen"]}
    assert plain[candidate]["score"] is None and plain[candidate]["agreement"] < 1  # infeasible without back-off
    assert kept[candidate]["agreement"] == 1.0
    # the candidate's levels: conv_head at `level` on top of the classifier level chosen before it (the groups are
    # visited from the output)
    classifier = next(h["level"] for h in history if h["chosen"] and h["group"] == "classifier")
    groups = stage_groups(model, spec.layer_selection)
    aucs = []
    for record in samples.records:
        rendered = samples.render(record)
        stats = prepare_statistics(model, rendered.image, preprocessing=PRE, augment_config=config.augment,
                                   selection=spec.layer_selection, batch_size=32)
        for factor in (1.0, *BACKOFF_FACTORS):
            levels = {"classifier": classifier * factor, "conv_head": level * factor}
            trace = solve(stats, {block: level for g, level in levels.items() for block in groups[g]}, config.solver)
            if trace.top1_agrees:
                break
        x = PRE(rendered.image)
        attribution = SALIENCY["saliency"].explain(trace.model, x, record.target,
                                                   SALIENCY["saliency"].default_settings())
        aucs.append(trojan_auc(attribution.signed_map, rendered.mask).best)
    assert kept[candidate]["score"] == pytest.approx(sum(aucs) / len(aucs), abs=1e-6)


def test_tuning_from_a_start_profile_begins_at_its_score_and_only_improves(photo_dir):
    """The start entry's score is the start profile's mean AUC (recomputed here with the plain trace solver), the
    search never ends below it, and a start that breaks the top-1 or splits a group is a clear error."""
    from spade.metrics import trojan_auc
    from spade.saliency import METHODS as SALIENCY
    from spade.trace import prepare_statistics, solve
    from spade_lab.tuning import TuningConfig, stage_groups, tune_profile
    from tests.tiny_models import tiny_mobilenet

    spec = tiny_spec()
    model = tiny_mobilenet(seed=1).eval()
    mobile = LoadedModel(model, spec, spec.class_names, torch.device("cpu"), source="tiny")
    samples = build_samples(model, PRE, folder_photos(photo_dir), SampleConfig(count=3, require_flip=False),
                            trigger=load_trigger("heart"), target=TARGET, batch_size=8)
    blocks_ = [b for names in stage_groups(model, spec.layer_selection).values() for b in names]
    config = TuningConfig(methods=("saliency",), levels=(0.0, 0.4, 0.7), augment=AugmentConfig(count=8))

    def start_at(targets: dict[str, float], name: str = "start") -> TuningConfig:
        return dataclasses.replace(config, start=SparsityProfile.from_mapping(targets, name=name))

    half = dict.fromkeys(blocks_, 0.5)
    result = tune_profile(mobile, samples, start_at(half, "half"))
    start = next(h for h in result.history if h["group"] == "start")
    aucs = []
    for record in samples.records:
        rendered = samples.render(record)
        stats = prepare_statistics(model, rendered.image, preprocessing=PRE, augment_config=config.augment,
                                   selection=spec.layer_selection, batch_size=32)
        trace = solve(stats, half)
        assert trace.top1_agrees
        attribution = SALIENCY["saliency"].explain(trace.model, PRE(rendered.image), record.target,
                                                   SALIENCY["saliency"].default_settings())
        aucs.append(trojan_auc(attribution.signed_map, rendered.mask).best)
    assert start["score"] == pytest.approx(sum(aucs) / len(aucs), abs=1e-6)
    assert result.score >= start["score"] - 1e-12 and result.score > result.dense_score
    assert "starting from half" in result.profile.description
    with pytest.raises(ConfigError, match="changes the dense top-1"):
        tune_profile(mobile, samples, start_at(dict.fromkeys(blocks_, 0.7)))
    with pytest.raises(ConfigError, match="different targets"):
        tune_profile(mobile, samples, start_at({"blocks.1.0": 0.2, "blocks.1.1": 0.4}))



def test_tuning_for_insertion_scores_clean_samples_with_the_dense_models_curves(photo_dir):
    """With the insertion objective a candidate's score is the mean of insertion AUC minus deletion AUC of its traces'
    saliency maps, both curves measured on the dense model (recomputed here with the plain trace solver); the search
    refuses Trojan samples for it, and clean samples for the Trojan objective."""
    from spade.metrics import insertion_deletion
    from spade.saliency import METHODS as SALIENCY
    from spade.trace import prepare_statistics, solve
    from spade_lab.tuning import TuningConfig, stage_groups, tune_profile
    from tests.tiny_models import tiny_mobilenet

    spec = tiny_spec()
    model = tiny_mobilenet(seed=1).eval()
    mobile = LoadedModel(model, spec, spec.class_names, torch.device("cpu"), source="tiny")
    clean = build_samples(model, PRE, folder_photos(photo_dir), SampleConfig(count=3), batch_size=8)
    config = TuningConfig(methods=("saliency",), levels=(0.0, 0.3), augment=AugmentConfig(count=8),
                          objective="insertion", steps=6)
    result = tune_profile(mobile, clean, config)
    candidate = next(h for h in result.history if not h["chosen"] and h["group"] == "classifier")
    assert candidate["level"] == 0.3 and candidate["feasible"]
    groups = stage_groups(model, spec.layer_selection)
    scores = []
    for record in clean.records:
        image = clean.render(record).image
        stats = prepare_statistics(model, image, preprocessing=PRE, augment_config=config.augment,
                                   selection=spec.layer_selection, batch_size=32)
        trace = solve(stats, dict.fromkeys(groups["classifier"], 0.3))
        assert trace.top1_agrees
        x = PRE(image)
        attribution = SALIENCY["saliency"].explain(trace.model, x, record.target,
                                                   SALIENCY["saliency"].default_settings())
        curves = insertion_deletion(model, x, attribution.signed_map, record.target, steps=6)
        scores.append(curves.insertion_auc - curves.deletion_auc)
    assert candidate["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
    assert "insertion - deletion AUC" in result.profile.description
    stamped = build_samples(model, PRE, folder_photos(photo_dir), SampleConfig(count=1, require_flip=False),
                            trigger=load_trigger("star"), target=TARGET, batch_size=8)
    with pytest.raises(ConfigError, match="needs clean samples"):
        tune_profile(mobile, stamped, config)
    with pytest.raises(ConfigError, match="stamped with a calibration trigger"):
        tune_profile(mobile, clean, dataclasses.replace(config, objective="trojan"))
    with pytest.raises(ConfigError, match="Unknown objective"):
        dataclasses.replace(config, objective="faithfulness")
    with pytest.raises(ConfigError, match="at least 2 steps"):
        dataclasses.replace(config, steps=1)
    from spade_cli.benchmark import TUNING_OBJECTIVES
    from spade_lab.tuning import OBJECTIVES

    assert tuple(OBJECTIVES) == TUNING_OBJECTIVES  # the CLI's choices, named without importing torch


def _handmade_records(n=12):
    rng = np.random.default_rng(7)
    records = []
    for i in range(n):
        for method in METHODS:
            records.append({"sample": f"s{i:05d}", "index": i, "method": method,
                            "trace": {"top1_agrees": i != 3, "logit_cosine": 0.9},
                            "seconds": {"trace": 1.0, "dense": 0.1, "spade": 0.2},
                            "dense": {"trojan_auc": float(rng.uniform(0.6, 0.9)), "pointing_game": bool(i % 2)},
                            "spade": {"trojan_auc": float(rng.uniform(0.7, 1.0)), "pointing_game": bool(i % 3)}})
    return records


def test_table_mean_and_ci_match_an_independent_computation():
    records = _handmade_records()
    table = summarize(records, "trojan", ci="t")
    rows = {(r["metric"], r["method"], r["column"]): r for r in table["rows"]}

    def expect(values):
        v = np.asarray(values, float)
        half = scipy_stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
        return v.mean(), v.mean() - half, v.mean() + half

    auc = {m: {c: [100 * r[c]["trojan_auc"] for r in records if r["method"] == m] for c in ("dense", "spade")}
           for m in METHODS}
    for m in METHODS:
        for column, values in (("dense", auc[m]["dense"]), ("spade", auc[m]["spade"]),
                               ("difference", np.subtract(auc[m]["spade"], auc[m]["dense"]))):
            row = rows[("trojan_auc", m, column)]
            assert row["n"] == 12
            np.testing.assert_allclose((row["mean"], row["low"], row["high"]), expect(values), rtol=1e-12)
    average = np.mean([auc[m]["spade"] for m in METHODS], axis=0)
    np.testing.assert_allclose([rows[("trojan_auc", "average", "spade")][k] for k in ("mean", "low", "high")],
                               expect(average), rtol=1e-12)
    hits = [100.0 * (i % 2) for i in range(12)]
    assert rows[("pointing_game", "saliency", "dense")]["mean"] == pytest.approx(np.mean(hits))
    assert table["top1_kept"] == {"count": 11, "total": 12, "fraction": 11 / 12}
    boot = summarize(records, "trojan", ci="bootstrap", seed=0)
    brow = next(r for r in boot["rows"]
                if (r["metric"], r["method"], r["column"]) == ("trojan_auc", "saliency", "dense"))
    trow = rows[("trojan_auc", "saliency", "dense")]
    assert brow["mean"] == trow["mean"] and brow["low"] < brow["mean"] < brow["high"]
    assert abs((brow["high"] - brow["low"]) / (trow["high"] - trow["low"]) - 1) < 0.35  # same scale as t
    assert summarize(records, "trojan", ci="bootstrap", seed=0) == boot  # seeded


def test_read_table_gives_the_written_average_row_and_model(tmp_path):
    records = _handmade_records()
    config = {"model": {"name": "tiny", "weights_sha256": "abc123"}}
    write_tables(summarize(records, "trojan"), tmp_path, config)
    got = read_table(tmp_path / "trojan.json")
    assert (got.folder, got.kind, got.model, got.weights_sha256) == (tmp_path.name, "trojan", "tiny", "abc123")
    assert (got.samples, got.complete_samples, got.methods) == (12, 12, tuple(METHODS))
    assert got.size == 12 * len(METHODS) and got.top1_kept == pytest.approx(11 / 12)
    # the Average row's SPADE - Dense, computed here from the records (each sample's mean over the methods)
    for metric in ("trojan_auc", "pointing_game"):
        diff = np.mean([np.subtract([100.0 * float(r["spade"][metric]) for r in records if r["method"] == m],
                                    [100.0 * float(r["dense"][metric]) for r in records if r["method"] == m])
                        for m in METHODS], axis=0)
        assert got.average[metric].n == 12
        assert got.average[metric].mean == pytest.approx(diff.mean(), rel=1e-12)
        assert got.average[metric].low < got.average[metric].mean < got.average[metric].high


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "spade-benchmark/1"}),
                                     json.dumps({"format": "spade-benchmark-table/1", "rows": []})])
def test_read_table_refuses_what_is_not_a_table(tmp_path, content):
    path = tmp_path / "trojan.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="not a benchmark table"):
        read_table(path)
    with pytest.raises(ConfigError, match="not a benchmark table"):
        read_table(tmp_path / "missing.json")


def test_timings_are_kept_apart_per_device():
    records = _handmade_records()
    for r in records:
        if r["index"] < 4:  # resumed on a GPU: faster, and recorded as such
            r["device"] = "cuda"
            r["seconds"] = {"trace": 0.25, "dense": 0.01, "spade": 0.03}
        elif r["index"] < 8:
            r["device"] = "cpu"
    seconds = summarize(records, "trojan")["seconds"]
    assert list(seconds) == ["cpu", "cuda", "unrecorded"]
    assert [seconds[d]["records"] for d in seconds] == [4 * len(METHODS)] * 3
    assert seconds["cuda"]["trace_mean"] == 0.25 and seconds["cpu"]["trace_mean"] == 1.0
    assert seconds["cuda"]["methods"]["saliency"] == {"dense": 0.01, "spade": 0.03}
    assert f"cuda ({4 * len(METHODS)} records, 0.2 s per trace)" in markdown(summarize(records, "trojan"))


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_trojan", tiny_spec())
    path = tmp_path / "tiny.pth"
    torch.save(backdoored_tiny().state_dict(), path)
    return str(path)


def test_smoke_cli_writes_markdown_csv_and_json(tiny_checkpoint, photo_dir, tmp_path, capsys, monkeypatch):
    profile = tmp_path / "tuned.json"
    assert main(["benchmark", "tune", "--smoke", "--checkpoint", tiny_checkpoint, "--arch", "tiny_trojan",
                 "--images", str(photo_dir), "--device", "cpu", "--out", str(profile)]) == 0
    tuned = load_profile(profile)
    assert isinstance(tuned, SparsityProfile) and tuned.targets
    model = backdoored_tiny()
    targets = resolve_targets(model, list(prunable_layers(model)), tuned)
    assert set(targets.values()) <= {0.0, 0.5, 0.9}
    assert json.loads(profile.read_text())["tuning"]["trigger"] == "star"  # the calibration back door
    clean = tmp_path / "clean.json"
    assert main(["benchmark", "tune", "--smoke", "--objective", "insertion", "--steps", "4", "--checkpoint",
                 tiny_checkpoint, "--arch", "tiny_trojan", "--images", str(photo_dir), "--device", "cpu",
                 "--out", str(clean)]) == 0
    tuning = json.loads(clean.read_text())["tuning"]
    assert (tuning["objective"], tuning["steps"], tuning["trigger"]) == ("insertion", 4, None)
    assert "insertion - deletion AUC" in load_profile(clean).description

    # saliency has a profile of its own (--own-profiles); input_x_gradient's is given (--method-profile)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    own = SparsityProfile(f"{tuned.name}_saliency", tuned.targets[:1], 0.3)
    (shipped / "tiny_trojan_saliency.json").write_text(json.dumps(own.to_json()))
    (shipped / "tiny_trojan_input_x_gradient.json").write_text(json.dumps(own.to_json()))  # the given one wins
    (shipped / "tiny_trojan_deeplift.json").write_text(json.dumps(own.to_json()))  # a method run later
    monkeypatch.setattr("spade.sparsity.PROFILE_DIR", shipped)

    out = tmp_path / "trojan"
    trigger_file = tmp_path / "my_trigger.png"
    load_trigger("heart").save(trigger_file)  # a user's own trigger file and target class
    assert main(["benchmark", "trojan", "--smoke", "--samples", "2", "--checkpoint", tiny_checkpoint, "--arch",
                 "tiny_trojan", "--images", str(photo_dir), "--device", "cpu", "--profile", str(profile),
                 "--trigger", str(trigger_file), "--target", str(TARGET), "--keep-decision", "--out", str(out),
                 "--method-profile", "input_x_gradient=0.3", "--own-profiles"]) == 0
    markdown = (out / "trojan.md").read_text()
    assert "| Saliency |" in markdown and "**Average**" in markdown and "Pointing game" in markdown
    lines = (out / "trojan.csv").read_text().splitlines()
    assert lines[0] == "metric,method,column,n,mean,ci_low,ci_high" and len(lines) == 1 + 2 * 3 * 3
    report = json.loads((out / "trojan.json").read_text())
    assert report["config"]["trigger"] == "my_trigger.png" and report["config"]["target"] == TARGET
    assert report["config"]["sparsity"]["targets"] == dict(tuned.targets)
    assert report["config"]["augment"]["count"] == 16 and report["config"]["samples"]["seed"] == 0
    assert report["environment"]["torch"] and report["methods"] == list(METHODS)
    assert report["samples"] == 2 and 0 <= report["top1_kept"]["fraction"] <= 1
    assert report["config"]["keep_decision"] == [0.8, 0.6, 0.4, 0.2] and report["backoff"]["total"] == 2 * 2
    # each its own trace on each sample
    assert report["config"]["method_sparsity"] == {"input_x_gradient": 0.3, "saliency": own.to_json(),
                                                   "deeplift": own.to_json()}
    assert report["config"]["solver"]["sparsity_of"] == "nonzero"  # the default
    # a table of a subset of the methods, under its own name
    assert main(["benchmark", "merge", str(out), "--methods", "saliency", "--name", "saliency_only"]) == 0
    subset = (out / "saliency_only.csv").read_text().splitlines()
    assert len(subset) == 1 + 2 * 2 * 3 and not any("input_x_gradient" in line for line in subset)
    assert (out / "trojan.csv").read_text().splitlines() == lines  # the full table is left alone
    # a method added later resumes the same folder, with its own profile
    assert main(["benchmark", "trojan", "--smoke", "--samples", "2", "--checkpoint", tiny_checkpoint, "--arch",
                 "tiny_trojan", "--images", str(photo_dir), "--device", "cpu", "--profile", str(profile),
                 "--trigger", str(trigger_file), "--target", str(TARGET), "--keep-decision", "--out", str(out),
                 "--method-profile", "input_x_gradient=0.3", "--own-profiles", "--methods", "deeplift"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["method"] for r in records}) == ["deeplift", "input_x_gradient", "saliency"]
    assert {r["trace"]["sparsity"] for r in records if r["method"] == "deeplift"} == {own.name}

    out = tmp_path / "insertion"
    assert main(["benchmark", "insertion", "--smoke", "--samples", "2", "--methods", "saliency", "--steps", "10",
                 "--checkpoint", tiny_checkpoint, "--arch", "tiny_trojan", "--images", str(photo_dir),
                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "insertion.json").read_text())
    assert report["metrics"] == ["insertion_auc", "deletion_auc"] and (out / "insertion.md").is_file()
    assert "Deletion AUC" in capsys.readouterr().out


def test_bad_arguments_are_clear_errors(tiny_checkpoint, photo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "trojan", "--shard", "3/2"])
    assert exc.value.code == 2
    assert "shard 3/2 does not exist" in capsys.readouterr().err
    common = ["--checkpoint", tiny_checkpoint, "--arch", "tiny_trojan", "--device", "cpu", "--out", str(tmp_path)]
    assert main(["benchmark", "trojan", "--methods", "saliency,nope", *common]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["benchmark", "trojan", "--images", str(empty), *common]) == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and "Traceback" not in err
    for argv, word in ((["trojan", "--method-profile", "saliency"], "METHOD=PROFILE"),
                       (["trojan", "--method-profile", "saliency=no_such_profile"], "no_such_profile"),
                       (["tune", "--start", "no_start_profile"], "no_start_profile")):
        with pytest.raises(SystemExit) as exc:  # refused while the arguments are parsed
            main(["benchmark", *argv, *common])
        assert exc.value.code == 2 and word in capsys.readouterr().err
    assert main(["benchmark", "tune", "--objective", "insertion", "--trigger", "heart", *common]) == 2
    err = capsys.readouterr().err
    assert "leave out --trigger" in err and "Traceback" not in err
    assert main(["benchmark", "merge", str(tmp_path / "nowhere")]) == 2
    assert "not a benchmark results folder" in capsys.readouterr().err
