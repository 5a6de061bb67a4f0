"""Output refit (`spade.refit`): the recorded fit, the least-squares refit against an independent solution, and the
trace it gives."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from spade.augment import AugmentConfig, augment
from spade.errors import ConfigError
from spade.preprocessing import Preprocessing
from spade.refit import refit_output, trace_features
from spade.solver import SolverConfig
from spade.statistics import OutputFit, collect_statistics, output_layer
from spade.trace import SpadeTrace, prepare_statistics, solve, solve_many
from tests.tiny_models import tiny_mobilenet

PRE = Preprocessing(resize=40, crop=32, interpolation="bilinear")
VIEWS = 12


def photo(seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def model():
    return tiny_mobilenet(seed=3, num_classes=6, width=8)


@pytest.fixture(scope="module")
def stats(model):
    return prepare_statistics(model, photo(), preprocessing=PRE, augment_config=AugmentConfig(count=VIEWS, seed=0))


def classifier_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's inputs on x, read with a hook on the plain model (independent of spade's recording)."""
    rows = []
    handle = model.classifier.register_forward_hook(lambda _m, args, _o: rows.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return rows[0]


def test_the_output_layer_is_the_last_target_layer_when_it_is_linear(model):
    names = ["blocks.0.0.conv_pwl", "conv_head", "classifier"]
    assert output_layer(model, names) == "classifier"
    assert output_layer(model, names[:2]) is None  # a convolution last: no classifier head to refit
    assert output_layer(model, []) is None


def test_statistics_record_the_image_first_then_the_views_with_their_dense_features(model, stats):
    fit = stats.output_fit
    assert fit.layer == "classifier"
    inputs = fit.inputs()  # made again from the image: the views the statistics saw, not kept with them
    assert inputs.shape == (VIEWS + 1, 3, 32, 32)
    assert torch.equal(inputs[0], stats.reference[0])
    assert torch.equal(inputs[1:], augment(photo(), AugmentConfig(count=VIEWS, seed=0), PRE))
    # the un-augmented image counts as much as all views together
    assert fit.weights.tolist() == [float(VIEWS)] + [1.0] * VIEWS
    expected = classifier_inputs(model, inputs)
    torch.testing.assert_close(fit.dense, expected, rtol=1e-4, atol=1e-5)


def test_a_model_without_a_classifier_head_records_no_fit_and_its_trace_says_so(model):
    batch = torch.randn(4, 3, 32, 32)
    without_head = collect_statistics(model, batch, layers=["blocks.0.0.conv_pwl", "conv_head"])
    assert without_head.output_fit is None
    trace = solve(without_head, 0.5, SolverConfig(refit_output=True))
    assert trace.settings["output_refit"] is None
    assert trace.settings["solver"]["refit_output"] is True


def test_an_output_fit_refuses_rows_that_do_not_match_its_inputs():
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ConfigError):
        OutputFit("fc", torch.zeros(2, 4), torch.ones(3, dtype=torch.float64), lambda: images)
    with pytest.raises(ConfigError):
        OutputFit("fc", torch.zeros(2, 4), torch.tensor([1.0, 0.0], dtype=torch.float64), lambda: images)
    with pytest.raises(ConfigError, match="gave 2 images for 3"):
        OutputFit("fc", torch.zeros(3, 4), torch.ones(3, dtype=torch.float64), lambda: images).inputs()


def test_trace_features_are_the_trace_models_own_classifier_inputs(model, stats):
    trace = solve(stats, 0.6, SolverConfig(mode="row"))
    got = trace_features(trace.model, stats.output_fit, batch_size=5)
    torch.testing.assert_close(got, classifier_inputs(trace.model, stats.output_fit.inputs()), rtol=1e-4, atol=1e-5)


def weighted_least_squares(zs, zd, weight, w, damp):
    """min sum_i w_i ||W' zs_i - W zd_i||^2 + lambda ||W'||^2, lambda = damp * mean(diag(sum_i w_i zs_i zs_i^T)),
    solved as one stacked ordinary least-squares problem (torch.linalg.lstsq), not by normal equations."""
    zs, zd, weight, w = zs.double(), zd.double(), weight.double(), w.double()
    lam = damp * float((w[:, None] * zs.square()).sum(0).mean())
    a = torch.cat([w.sqrt()[:, None] * zs, (lam ** 0.5) * torch.eye(zs.shape[1], dtype=torch.float64)])
    b = torch.cat([w.sqrt()[:, None] * (zd @ weight.T), torch.zeros(zs.shape[1], weight.shape[0], dtype=torch.float64)])
    return torch.linalg.lstsq(a, b).solution.T


def test_the_refit_without_pruning_is_the_damped_weighted_least_squares_solution(model, stats):
    trace = solve(stats, 0.6, SolverConfig(mode="row"))
    fit = stats.output_fit
    features = trace_features(trace.model, fit)
    dense = model.classifier.weight.detach()
    refit = refit_output(dense, dense.clone(), 0.0, fit, features, damp=0.05)
    expected = weighted_least_squares(features, fit.dense, dense, fit.weights, 0.05)
    torch.testing.assert_close(refit.weight.double(), expected, rtol=1e-4, atol=1e-5)
    assert refit.output_error <= refit.output_error_before


def test_the_pruned_refit_keeps_each_rows_share_and_fits_better_than_the_solved_layer(model, stats):
    trace = solve(stats, 0.5, SolverConfig(mode="row"))
    fit = stats.output_fit
    features = trace_features(trace.model, fit)
    dense = model.classifier.weight.detach()
    refit = refit_output(dense, trace.sparse_weights["classifier"], 0.5, fit, features)
    assert ((refit.weight == 0).sum(1) == dense.shape[1] // 2).all()
    target = fit.dense.double() @ dense.double().T
    w = fit.weights[:, None]
    for weight, reported in ((trace.sparse_weights["classifier"], refit.output_error_before),
                             (refit.weight, refit.output_error)):
        residual = features.double() @ weight.double().T - target
        assert reported == pytest.approx(float((w * residual.square()).sum() / (w * target.square()).sum()), rel=1e-6)
    assert refit.output_error < refit.output_error_before


def test_a_refitted_trace_carries_the_refit_in_its_model_weights_report_and_settings(model, stats):
    plain, refitted = (solve(stats, 0.5, SolverConfig(mode="row", refit_output=flag)) for flag in (False, True))
    record = refitted.settings["output_refit"]
    assert record["layer"] == "classifier" and record["output_error"] < record["output_error_before"]
    assert "output_refit" not in plain.settings
    weight = refitted.sparse_weights["classifier"]
    assert torch.equal(refitted.model.classifier.weight.detach(), weight)
    assert not torch.equal(weight, plain.sparse_weights["classifier"])
    # every other layer is the plain solve's
    for name, other in plain.sparse_weights.items():
        if name != "classifier":
            assert torch.equal(refitted.sparse_weights[name], other)
    report = next(r for r in refitted.layers if r.name == "classifier")
    assert report.kept == int((weight != 0).sum())
    assert refitted.seconds["output refit"] > 0
    # the refit fits the dense logits on the un-augmented image, which counts as much as all views
    dense_logits = refitted.dense_logits
    assert (refitted.trace_logits - dense_logits).norm() < (plain.trace_logits - dense_logits).norm()
    # the dense model is untouched
    assert not torch.equal(model.classifier.weight.detach(), weight)


def test_refitted_traces_are_deterministic_and_survive_save_and_load(model, stats, tmp_path):
    config = SolverConfig(mode="row", refit_output=True)
    first, again = solve_many(stats, [0.5, 0.7], config), solve_many(stats, [0.5, 0.7], config)
    for a, b in zip(first, again):
        assert torch.equal(a.sparse_weights["classifier"], b.sparse_weights["classifier"])
    first[0].save(tmp_path / "trace.pt")
    loaded = SpadeTrace.load(tmp_path / "trace.pt", model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(stats.reference), first[0].trace_logits)
    assert loaded.settings["output_refit"]["layer"] == "classifier"


def test_refit_changes_nothing_of_the_statistics(stats):
    before = {name: stat.hessian.clone() for name, stat in stats.layers.items()}
    dense = stats.output_fit.dense.clone()
    solve(stats, 0.5, SolverConfig(refit_output=True))
    assert all(torch.equal(stats.layers[n].hessian, h) for n, h in before.items())
    assert torch.equal(stats.output_fit.dense, dense)
