"""benchmarks/paired_runs.py: two benchmark folders compared sample by sample, checked against a hand computation."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("saliency", "lrp")


def folder(path: Path, scores: dict, kind: str = "insertion", crop: list | None = None) -> Path:
    """A benchmark folder as `spade_lab.records` writes it: config.json and one results.jsonl record per
    (sample, method) with dense and SPADE insertion / deletion AUC (fractions)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"format": "spade-benchmark/1", "kind": kind}))
    lines = [json.dumps({"sample": sample, "index": i, "method": method, "photo": "cat", "crop": crop or [0, 0, 9, 9],
                         "dense": {"insertion_auc": dense, "deletion_auc": 0.1},
                         "spade": {"insertion_auc": spade, "deletion_auc": 0.1 + spade / 10}})
             for i, (sample, per_method) in enumerate(scores.items()) for method, (dense, spade) in per_method.items()]
    (path / "results.jsonl").write_text("\n".join(lines) + "\n")
    return path


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_runs.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_per_sample_gap_of_two_runs_matches_a_hand_computation(tmp_path):
    rng = np.random.default_rng(0)
    samples = [f"s{i:05d}" for i in range(6)]
    first = {s: {m: (rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5)) for m in METHODS} for s in samples}
    # the second run's dense scores differ (another device), and it has a sample the first lacks
    second = {s: {m: (d + rng.uniform(-0.02, 0.02), rng.uniform(0.1, 0.5)) for m, (d, _) in first[s].items()}
              for s in samples}
    second["s00099"] = {m: (0.3, 0.3) for m in METHODS}
    out = run(str(folder(tmp_path / "a", first)), str(folder(tmp_path / "b", second)))

    gaps = [np.mean([100 * ((first[s][m][1] - first[s][m][0]) - (second[s][m][1] - second[s][m][0]))
                     for m in METHODS]) for s in samples]
    mean, half = np.mean(gaps), stats.t.ppf(0.975, len(gaps) - 1) * np.std(gaps, ddof=1) / math.sqrt(len(gaps))
    apart = sum(abs(100 * (first[s][m][0] - second[s][m][0])) > 0.5 for s in samples for m in METHODS)
    line = next(x for x in out.splitlines() if x.strip().startswith("insertion_auc"))
    assert f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n 6)" in line
    assert f"apart on {apart} of 12 records" in line
    assert "6 samples, methods lrp, saliency" in out.splitlines()[0]


def test_folders_of_different_benchmarks_or_samples_are_refused(tmp_path):
    scores = {"s00000": {m: (0.2, 0.3) for m in METHODS}}
    first = str(folder(tmp_path / "a", scores))
    for name, other, message in (("b", folder(tmp_path / "b", scores, kind="trojan"), "different benchmarks"),
                                 ("c", folder(tmp_path / "c", scores, crop=[1, 0, 9, 9]), "different samples")):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_runs.py"), first, str(other)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode != 0 and message in done.stderr, name
