"""`python -m spade trace` end to end on the offline default model (few augmentations to stay fast)."""

import json
import subprocess
import sys

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
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_keep_decision_lowers_the_sparsity_until_the_top1_is_kept(tmp_path):
    from spade.sparsity import backoff_schedule

    common = ["trace", str(bundled_examples()["coffee"]), "--augmentations", "8", "--sparsity", "0.9",
              "--device", "cpu"]
    plain = run_cli(*common)
    assert plain.returncode == 0, plain.stderr
    assert "TOP-1 DIFFERS" in plain.stdout  # coffee's trace at 0.9 changes the decision
    report = tmp_path / "report.json"
    kept = run_cli(*common, "--keep-decision", "--json", str(report))
    assert kept.returncode == 0, kept.stderr
    assert "same top-1" in kept.stdout
    settings = json.loads(report.read_text())["settings"]
    scale = settings["sparsity_scale"]
    assert scale < 1 and settings["sparsity"] == dict(backoff_schedule(0.9))[scale]
    assert f"re-solved at {scale:g} x that sparsity" in kept.stdout
