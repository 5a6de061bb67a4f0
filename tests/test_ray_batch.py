"""``batch DIR --out OUT`` in-process: per-image PNGs and summary, a bad image recorded without stopping the run,
resuming, and the command line (the same on Ray: test_ray_backend.py)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from PIL import Image

from spade.augment import AugmentConfig
from spade.errors import ConfigError
from spade.models import MODELS, LoadedModel
from spade_cli.main import main
from spade_lab.batch import BatchConfig, file_stem, list_images, run_batch
from tests.ray_helpers import noise_photos
from tests.test_trojan_benchmark import PRE, backdoored_tiny, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = BatchConfig(methods=("saliency", "gradcam"), sparsity=0.5, augment=AugmentConfig(count=8))


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    spec = tiny_spec()
    return LoadedModel(backdoored_tiny(), spec, spec.class_names, torch.device("cpu"), source="tiny")


@pytest.fixture()
def images(tmp_path):
    """Three noise photos (one in a sub-folder with a space in its name) and a file that is not an image."""
    folder = noise_photos(tmp_path / "images", count=3)
    (folder / "more").mkdir()
    (folder / "photo2.png").rename(folder / "more" / "photo 2.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    return folder


def test_every_image_gets_its_maps_and_a_summary_row_and_a_bad_one_its_error(loaded, images, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(loaded, images, out, CONFIG)
    assert (summary.images, summary.explained, summary.skipped, summary.failed) == (4, 3, 0, 1)
    document = json.loads((out / "summary.json").read_text())
    records = {r["image"]: r for r in document["records"]}
    assert list(records) == ["broken.jpg", "more/photo 2.png", "photo0.png", "photo1.png"]  # sorted paths
    assert records["broken.jpg"]["status"] == "error" and "not" in records["broken.jpg"]["error"].lower()
    assert document["errors"] == 1 and document["ok"] == 3
    for name in ("photo0.png", "photo1.png", "more/photo 2.png"):
        record = records[name]
        image = Image.open(images / name).convert("RGB")
        with torch.no_grad():  # an independent forward pass of the dense model
            probabilities = loaded.model(PRE(image)[None]).softmax(-1)[0]
        assert record["prediction"]["index"] == int(probabilities.argmax())
        assert record["prediction"]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)
        assert record["kept_decision"] == (record["trace_prediction"]["index"] == record["prediction"]["index"])
        assert record["requested_sparsity"] == record["used_sparsity"] == "0.5"  # no back-off without keep_decision
        for method in ("saliency", "gradcam"):
            entry = record["methods"][method]
            assert 0 <= entry["moved"] <= 1 and 0 <= entry["overlap"] <= 1 and entry["strength"] >= 0
            assert entry["sentence"]
            png = Image.open(out / entry["png"])
            assert png.format == "PNG" and png.size[0] > 3 * 200  # image | dense | SPADE
    assert (out / "maps" / f"{file_stem('more/photo 2.png')}.gradcam.png").is_file()
    assert len(list((out / "maps").iterdir())) == 3 * 2
    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert [r["image"] for r in rows] == list(records)
    assert rows[0]["status"] == "error" and rows[0]["prediction"] == "" and rows[0]["error"]
    assert float(rows[2]["saliency.moved"]) == pytest.approx(records["photo0.png"]["methods"]["saliency"]["moved"])


def test_a_rerun_skips_done_images_retries_failed_ones_and_takes_new_ones(loaded, images, tmp_path):
    out = tmp_path / "out"
    run_batch(loaded, images, out, CONFIG)
    png = out / "maps" / "photo0.png.saliency.png"
    png.write_bytes(b"left alone")  # a done image's files are not rewritten
    (images / "broken.jpg").unlink()
    noise_photos(tmp_path / "new", count=4)
    (tmp_path / "new" / "photo3.png").rename(images / "photo3.png")
    summary = run_batch(loaded, images, out, CONFIG)
    assert (summary.images, summary.explained, summary.skipped, summary.failed) == (4, 1, 3, 0)
    assert png.read_bytes() == b"left alone"
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["image"] for r in lines if r["status"] == "ok"].count("photo0.png") == 1
    document = json.loads((out / "summary.json").read_text())
    assert [r["image"] for r in document["records"]] == ["more/photo 2.png", "photo0.png", "photo1.png", "photo3.png"]
    with pytest.raises(ConfigError, match="another configuration"):
        run_batch(loaded, images, out, BatchConfig(methods=("saliency",), augment=AugmentConfig(count=8)))


def test_a_file_gone_since_the_listing_is_an_error_row(loaded, images, tmp_path, monkeypatch):
    import spade_lab.batch as batch

    listed = batch.list_images(images)
    monkeypatch.setattr(batch, "list_images", lambda folder: sorted([*listed, "vanished.png"]))
    summary = run_batch(loaded, images, tmp_path / "out", BatchConfig(methods=("saliency",),
                                                                      augment=AugmentConfig(count=4)))
    assert (summary.images, summary.explained, summary.failed) == (5, 3, 2)
    records = {r["image"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["records"]}
    assert records["vanished.png"]["status"] == "error" and "cannot read the file" in records["vanished.png"]["error"]


def test_file_stems_are_flat_and_unique():
    assert file_stem("cat.jpg") == "cat.jpg"
    assert file_stem("a/b.png") != file_stem("a_b.png") == "a_b.png"
    assert "/" not in file_stem("x/y z.png") and file_stem("x/y z.png").startswith("x_y_z.png-")
    with pytest.raises(ConfigError, match="not a folder"):
        list_images("/no/such/folder")
    with pytest.raises(ConfigError, match="opacity"):
        BatchConfig(opacity=2.0)
    with pytest.raises(ConfigError, match="nope"):
        BatchConfig(methods=("saliency", "nope"))


def test_batch_command_line(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "tiny_trojan", tiny_spec())
    checkpoint = tmp_path / "tiny.pth"
    torch.save(backdoored_tiny().state_dict(), checkpoint)
    common = ["--checkpoint", str(checkpoint), "--arch", "tiny_trojan", "--device", "cpu", "--augmentations", "4"]
    out = tmp_path / "out"
    assert main(["batch", str(images), "--out", str(out), "--methods", "saliency", *common]) == 0
    printed = capsys.readouterr().out
    assert "broken.jpg: ERROR" in printed and "3 explained, 0 already done, 1 failed" in printed
    assert json.loads((out / "config.json").read_text())["methods"] == ["saliency"]
    assert main(["batch", str(tmp_path / "missing"), "--out", str(out), *common]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"), *common]) == 2
    assert "No images" in capsys.readouterr().err


def test_batch_parser_matches_the_lab_and_takes_the_trace_options():
    """The parser writes the default methods out (it is built without torch): they must be the lab's; the trace
    options are those of the other trace-building commands."""
    from spade.solver import SolverConfig
    from spade_cli.batch import DEFAULT_METHODS
    from spade_cli.main import build_parser
    from spade_cli.trace import solver_from_args
    from spade_lab.batch import DEFAULT_METHODS as LAB_DEFAULT

    assert tuple(DEFAULT_METHODS.split(",")) == LAB_DEFAULT
    args = build_parser().parse_args(["batch", "photos", "--out", "o", "--solver", "row", "--sparsity-of", "all",
                                      "--keep-decision", "--augmentations", "8", "--sparsity", "0.7"])
    assert solver_from_args(args, "group") == SolverConfig(mode="row", sparsity_of="all")
    assert args.keep_decision and args.augmentations == 8 and args.sparsity == 0.7 and args.methods == DEFAULT_METHODS
    with pytest.raises(SystemExit):
        build_parser().parse_args(["batch", "photos"])  # --out is required
