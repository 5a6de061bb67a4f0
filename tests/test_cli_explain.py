"""``python -m spade explain``: output files, JSON report with mask metrics, and user errors."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, ImageDraw

from spade.images import bundled_examples
from spade_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def cat() -> str:
    return str(bundled_examples()["cat"])


def _mask(path, size, box) -> str:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    mask.save(path)
    return str(path)


def test_unknown_method_is_a_usage_error(cat, tmp_path, capsys):
    assert main(["explain", cat, "--methods", "saliency,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def test_mask_of_another_size_is_refused(cat, tmp_path, capsys):
    mask = _mask(tmp_path / "m.png", (10, 10), (2, 2, 5, 5))
    assert main(["explain", cat, "--methods", "saliency", "--mask", mask, "--out", str(tmp_path)]) == 2
    assert "same size" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_writes_pngs_and_a_complete_report(cat, tmp_path):
    size = Image.open(cat).size
    mask = _mask(tmp_path / "mask.png", size, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    out = tmp_path / "out"
    code = main(["explain", cat, "--methods", "gradcam", "--augmentations", "4", "--device", "cpu",
                 "--mask", mask, "--out", str(out), "--seed", "3"])
    assert code == 0
    for name in ("gradcam",):
        png = Image.open(io.BytesIO((out / f"{name}.png").read_bytes()))
        assert png.format == "PNG" and png.width > 3 * 224
    report = json.loads((out / "explain.json").read_text())
    assert report["model"] == "efficientnet_lite0" and report["seed"] == 3
    assert report["trace"]["settings"]["augment"]["seed"] == 3
    assert report["target"]["name"] in {"tiger cat", "Egyptian cat", "tabby"}
    assert list(report["methods"]) == ["gradcam"]
    for name in ("gradcam",):
        entry = report["methods"][name]
        assert -1.0 <= entry["rank_correlation_dense_vs_spade"] <= 1.0 and entry["shared_scale"] > 0
        for label in ("dense", "spade"):
            m = entry[label]
            assert 0.0 <= m["insertion_auc"] <= 1.0 and 0.0 <= m["deletion_auc"] <= 1.0
            auc = m["trojan_auc"]
            assert auc["best"] == max(auc["signed"], auc["absolute"])
            assert isinstance(m["pointing_game"]["absolute"], bool) and 0.0 <= m["mass_in_mask"] <= 1.0
    assert report["methods"]["gradcam"]["settings"]["layer"] == "bn2"
