"""Records copied from another results folder: marked by fingerprint, and left out of the tables' timing line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spade.errors import ConfigError
from spade_lab.provenance import COPIED_FROM, mark_copied
from spade_lab.tables import markdown, summarize

ROOT = Path(__file__).resolve().parent.parent


def _record(sample: int, method: str, trace_seconds: float, auc: float) -> dict:
    return {"sample": f"s{sample:05d}", "index": sample, "method": method, "photo": "cat", "device": "cpu",
            "trace": {"top1_agrees": True, "logit_cosine": 0.9},
            "seconds": {"trace": trace_seconds, "dense": 0.1, "spade": 0.2},
            "dense": {"trojan_auc": 0.5, "pointing_game": False},
            "spade": {"trojan_auc": auc, "pointing_game": True}}


def _folder(path: Path, records: list[dict]) -> Path:
    path.mkdir()
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "config.json").write_text(json.dumps({"kind": "trojan", "model": {"name": "tiny"}}))
    return path


def _two_folders(tmp_path: Path) -> tuple[Path, Path]:
    """source: samples 0-3 timed at 10 s; folder: samples 0-1 copied (with a field the copy added), 2-3
    recomputed (same scores, new seconds), 4 new."""
    source = [_record(i, m, 10.0 + i, 0.7) for i in range(4) for m in ("saliency", "gradcam")]
    copies = [dict(r, trace={**r["trace"], "sparsity_scale": 1.0}) for r in source if r["index"] < 2]
    recomputed = [_record(i, m, 2.0, 0.7) for i in (2, 3, 4) for m in ("saliency", "gradcam")]
    return _folder(tmp_path / "run-keep", copies + recomputed), _folder(tmp_path / "run", source)


def test_only_exact_copies_are_marked_and_marking_twice_changes_nothing(tmp_path):
    folder, source = _two_folders(tmp_path)
    assert mark_copied(folder, source) == 4
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert [r.get(COPIED_FROM) for r in records] == ["run"] * 4 + [None] * 6
    assert [r["sample"] for r in records] == ["s00000"] * 2 + ["s00001"] * 2 + [f"s{i:05d}" for i in (2, 2, 3, 3, 4, 4)]
    before = (folder / "results.jsonl").read_text()
    assert mark_copied(folder, source) == 4
    assert (folder / "results.jsonl").read_text() == before


def test_timing_line_counts_only_the_records_computed_here(tmp_path):
    folder, source = _two_folders(tmp_path)
    mark_copied(folder, source)
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    summary = summarize(records, "trojan")
    assert summary["copied"] == {"run": 4}
    assert summary["seconds"]["cpu"]["records"] == 6
    assert summary["seconds"]["cpu"]["trace_mean"] == pytest.approx(2.0)  # the copies' 10-11 s are not averaged in
    text = markdown(summary)
    assert "Computed for this folder on: cpu (6 records, 2.0 s per trace); 4 records copied from `run`" in text
    # the scores still use every record
    assert summary["samples"] == 5


def test_a_folder_without_copies_keeps_the_plain_timing_line(tmp_path):
    folder, _ = _two_folders(tmp_path)
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    summary = summarize(records, "trojan")
    assert summary["copied"] == {} and summary["seconds"]["cpu"]["records"] == 10
    assert "Computed on: cpu (10 records" in markdown(summary)


def test_a_folder_without_results_is_refused(tmp_path):
    folder, _ = _two_folders(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no results.jsonl"):
        mark_copied(folder, tmp_path / "empty")


def test_the_script_marks_and_rewrites_the_tables(tmp_path):
    folder, source = _two_folders(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mark_copied_records.py"), str(folder),
                           str(source)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 record(s)" in done.stdout
    assert "4 records copied from `run`" in (folder / "trojan.md").read_text()
