"""`python -m spade trace` end to end on the offline default model (few augmentations to stay fast)."""

import json
import subprocess
import sys

import pytest
import torch

from spade.images import bundled_examples
from spade.trace import SpadeTrace


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spade", *args], capture_output=True, text=True, timeout=300)


def test_trace_command_prints_table_and_writes_files(tmp_path):
    out, report = tmp_path / "trace.pt", tmp_path / "report.json"
    result = run_cli("trace", str(bundled_examples()["coffee"]), "--augmentations", "8", "--sparsity", "0.3",
                     "--device", "cpu", "--out", str(out), "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert "statistics" in result.stderr and "100%" in result.stderr  # the progress bar
    assert "classifier" in result.stdout and "dense top-5" in result.stdout and "trace top-5" in result.stdout
    data = json.loads(report.read_text())
    assert data["settings"]["sparsity"] == 0.3 and data["settings"]["augment"]["count"] == 8
    assert len(data["layers"]) == 33 and all(abs(layer["target"] - 0.3) < 1e-9 for layer in data["layers"])
    from spade.models import load_model

    dense = load_model("efficientnet_lite0", device="cpu").model
    trace = SpadeTrace.load(out, dense)
    assert json.loads(trace.to_json())["layers"] == data["layers"]
    assert (trace.model.classifier.weight == 0).float().mean() >= 0.29
    assert torch.count_nonzero(dense.classifier.weight == 0) == 0  # the dense model is untouched


def test_trace_command_reports_bad_profile_cleanly(tmp_path):
    result = run_cli("trace", str(bundled_examples()["coffee"]), "--profile", "no-such-profile")
    assert result.returncode == 2
    assert "error: argument --profile:" in result.stderr and "no-such-profile" in result.stderr  # while parsing
    assert "Traceback" not in result.stderr


def test_keep_decision_lowers_the_sparsity_until_the_top1_is_kept(tmp_path):
    from spade.decision import KeepDecision

    common = ["trace", str(bundled_examples()["coffee"]), "--augmentations", "8", "--sparsity", "0.9",
              "--device", "cpu"]
    plain = run_cli(*common)
    assert plain.returncode == 0, plain.stderr
    assert "TOP-1 DIFFERS" in plain.stdout  # coffee's trace at 0.9 changes the decision
    refit_report = tmp_path / "refit.json"
    refitted = run_cli(*common, "--refit-output", "--json", str(refit_report))  # the classifier refitted
    assert refitted.returncode == 0, refitted.stderr
    assert "same top-1" in refitted.stdout
    data = json.loads(refit_report.read_text())
    record = data["settings"]["output_refit"]
    assert (f"classifier refit (classifier): relative error of its outputs on the image and its views "
            f"{record['output_error_before']:.4f} before, {record['output_error']:.4f} after") in refitted.stdout
    assert data["settings"]["sparsity"] == 0.9 and data["settings"]["output_refit"]["layer"] == "classifier"
    assert data["top1_agrees"] is True
    report = tmp_path / "report.json"
    kept = run_cli(*common, "--keep-decision", "--json", str(report))
    assert kept.returncode == 0, kept.stderr
    assert "same top-1" in kept.stdout
    settings = json.loads(report.read_text())["settings"]
    scale = settings["sparsity_scale"]
    assert settings["requested_sparsity"] == 0.9 and scale in KeepDecision().factors
    assert settings["sparsity"] == 0.9 * scale and settings["keep_decision"] == list(KeepDecision().factors)
    assert f"re-solved at {scale:g} x that sparsity" in kept.stdout


def test_sparsity_of_counts_the_dense_zeros_or_not(tmp_path):
    """blocks.4.1.conv_pw of the offline Lite0 has exact zeros, not only in dead input channels (where both rules
    zero everything): 'nonzero' prunes 30 % of the other weights, 'all' (the authors' rule) counts the zeros
    towards the 30 %."""
    from spade.models import load_model

    name = "blocks.4.1.conv_pw"
    weight = dict(load_model("efficientnet_lite0", device="cpu").model.named_modules())[name].weight
    columns, built_in = weight.shape[1], int((weight == 0).sum())  # a 1x1 conv selects per input channel
    assert built_in > 0
    counted = {"nonzero": weight.numel() - built_in, "all": weight.numel()}
    kept = {}
    for rule in counted:
        report = tmp_path / f"{rule}.json"
        result = run_cli("trace", str(bundled_examples()["coffee"]), "--augmentations", "8", "--sparsity", "0.3",
                         "--sparsity-of", rule, "--solver", "group", "--device", "cpu", "--json", str(report))
        assert result.returncode == 0, result.stderr
        data = json.loads(report.read_text())
        assert data["settings"]["solver"]["sparsity_of"] == rule
        kept[rule] = next(layer for layer in data["layers"] if layer["name"] == name)["kept"]
        # each input channel rounds its count of pruned weights down: at most one more kept weight per channel
        assert 0 <= kept[rule] - 0.7 * counted[rule] <= columns, rule
    assert kept["nonzero"] < kept["all"]


def test_every_trace_building_command_takes_the_solver_options():
    from spade.solver import SOLVERS, SPARSITY_OF, SolverConfig
    from spade_cli.main import build_parser
    from spade_cli.trace import solver_from_args

    image = str(bundled_examples()["coffee"])
    for argv in (["trace", image], ["explain", image], ["visualize", image],
                 ["benchmark", "trojan"], ["benchmark", "insertion"], ["benchmark", "tune"]):
        for model_default in SOLVERS:  # without --solver, the model's default solver
            plain = solver_from_args(build_parser().parse_args(argv), model_default)
            assert plain == SolverConfig(mode=model_default), argv
        for mode, counts in zip(SOLVERS, SPARSITY_OF * len(SOLVERS)):
            chosen = build_parser().parse_args([*argv, "--solver", mode, "--sparsity-of", counts])
            assert solver_from_args(chosen, "group") == SolverConfig(mode=mode, sparsity_of=counts), argv
        damped = build_parser().parse_args([*argv, "--damp", "0.5"])
        assert solver_from_args(damped, "group") == SolverConfig(damp=0.5), argv
        refit = build_parser().parse_args([*argv, "--refit-output"])
        assert solver_from_args(refit, "group") == SolverConfig(refit_output=True), argv
        for bad in ("-0.1", "nan", "inf", "lots"):
            with pytest.raises(SystemExit):
                build_parser().parse_args([*argv, "--damp", bad])
    # the parser writes the choices out (it is built without torch): they must be the library's
    trace = build_parser()._subparsers._group_actions[0].choices["trace"]
    choices = {action.dest: action.choices for action in trace._actions}
    assert tuple(choices["solver"]) == tuple(SOLVERS) and set(choices["sparsity_of"]) == set(SPARSITY_OF)


def test_exact_solver_estimate_line_counts_the_models_layers():
    # The line the trace command prints before an obc run on the CPU: spade.obc_cost's estimate for these layers.
    from spade.layer_pool import cpu_workers
    from spade.models import load_model
    from spade.obc_cost import in_words, layer_work, model_work, side_by_side_seconds
    from spade_cli.trace import exact_solver_estimate

    loaded = load_model("efficientnet_lite0", device="cpu")
    selection = loaded.spec.layer_selection
    line = exact_solver_estimate(loaded.model, 0.9, 64, selection)
    work = model_work(loaded.model, 0.9, 64, selection)
    seconds = side_by_side_seconds(layer_work(loaded.model, 0.9, 64, selection).values(), cpu_workers())
    assert line.startswith(f"exact solver (obc): {in_words(seconds)} to solve")
    assert f"({work.fma / 1e9:.0f} G multiply-adds" in line
    assert model_work(loaded.model, 0.9, 64, selection).fma < model_work(loaded.model, 0.9, 1024, selection).fma
