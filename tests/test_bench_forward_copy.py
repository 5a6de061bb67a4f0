"""benchmarks/bench_forward_copy.py: it times both models on the same batch and writes what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_writes_a_report_whose_ratio_matches_its_timings(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_forward_copy.py"), "--models",
                           "resnet18", "--batch", "2", "--repeats", "2", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["models"]["resnet18 (random weights)"]
    assert len(row["runs"]["original"]) == len(row["runs"]["copy"]) == 2
    assert row["ratio"] == row["copy_s"] / row["original_s"] > 0
    assert f"| resnet18 (random weights) | {row['original_s']:.3f} | {row['copy_s']:.3f} |" in (
        tmp_path / "report.md").read_text()
