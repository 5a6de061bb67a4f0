"""``python -m spade predict`` end to end, in a subprocess (as a user runs it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from spade.images import bundled_examples

ROOT = Path(__file__).resolve().parent.parent
CAT_CLASSES = ("tabby", "tiger cat", "Egyptian cat")
ROW = re.compile(r"^\s*(\d+)\.\s+(.+?)\s+(\d\.\d{4})\s+\(class (\d+)\)$")


def _spade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spade", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _rows(stdout: str) -> list[tuple[int, str, float, int]]:
    rows = []
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows.append((int(match[1]), match[2], float(match[3]), int(match[4])))
    return rows


def test_predict_default_model_on_cat():
    result = _spade("predict", str(bundled_examples()["cat"]), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1] in CAT_CLASSES
    assert sum(r[1] in CAT_CLASSES for r in rows[:3]) >= 2
    probabilities = [r[2] for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0001 and probabilities[0] > 0.2
    assert "efficientnet_lite0" in result.stdout


def test_predict_bad_image_path_exits_2_without_traceback(tmp_path):
    result = _spade("predict", str(tmp_path / "missing.jpg"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "missing.jpg" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_predict_user_checkpoint_and_bad_model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, path)
    cat = str(bundled_examples()["cat"])
    result = _spade("predict", cat, "--checkpoint", str(path), "--arch", "resnet18", "--device", "cpu", "-k", "3")
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in _rows(result.stdout)] == [1, 2, 3] and str(path) in result.stdout

    result = _spade("predict", cat, "--model", "no_such_net")
    assert result.returncode == 2 and "error:" in result.stderr and "efficientnet_lite0" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_argument_errors_exit_2(capsys):
    from spade.models import DEFAULT_MODEL
    from spade_cli.main import build_parser, main

    assert DEFAULT_MODEL in build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    cat = str(bundled_examples()["cat"])
    for argv in (["predict", cat, "--checkpoint", "x.pth"], ["predict", cat, "--arch", "resnet18"],
                 ["predict", cat, "--model", "resnet18", "--checkpoint", "x.pth", "--arch", "resnet18"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    assert "error:" in capsys.readouterr().err
