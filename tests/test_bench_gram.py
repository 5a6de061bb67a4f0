"""benchmarks/bench_gram_speed.py and bench_gram_precision.py run and write what they print."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_gram_speed_reports_every_layer_shape_and_the_pass(tmp_path):
    printed = run("bench_gram_speed.py", "--models", "resnet18", "--views", "2", "--out", str(tmp_path))
    report = (tmp_path / "report.txt").read_text()
    assert printed.strip() in report
    assert "shifts    input (2, 512, 7, 7) stride 1: 3 calls" in report  # layer4's three stride-1 3 x 3 inputs
    assert "pointwise input (1, 2, 512) stride 1: 1 calls" in report  # the classifier: one row per view
    assert "statistics pass" in report and "GFLOP/s" in report


@pytest.mark.slow
def test_gram_precision_compares_both_dtypes_on_one_model(tmp_path):
    run("bench_gram_precision.py", "--views", "2", "--out", str(tmp_path))
    report = (tmp_path / "report.txt").read_text()
    float32, bfloat16 = (next(line for line in report.splitlines() if line.startswith(f"{d} products"))
                         for d in ("float32", "bfloat16"))
    assert "of 20" in float32 and "of 20" in bfloat16  # ResNet-18's 20 target layers
    assert "largest relative Gram difference" in float32
