"""Benchmarks, tuning and batch explanations on a real local Ray (2 CPUs, one Ray for the whole module): the same
numbers as in-process, and a worker killed mid-run costs nothing but a retry (every record exactly once).

In-process runs here use one torch thread, as each Ray task does: with more threads float sums are ordered
differently and the traces differ in the last bits (which the solver can amplify to the third decimal).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from spade.augment import AugmentConfig
from spade.errors import ConfigError, SpadeError
from spade.models import MODELS, LoadedModel
from spade.trojan import load_trigger
from spade_cli.main import main
from spade_lab.batch import BatchConfig, run_batch
from spade_lab.benchmark import BenchmarkConfig, run_benchmark
from spade_lab.executors import RayExecutor, RaySettings, executor_for
from spade_lab.records import load_results
from spade_lab.samples import SampleConfig, build_samples, folder_photos
from tests.ray_helpers import die_on, die_once, fail_on, noise_photos
from tests.test_trojan_benchmark import PRE, TARGET, backdoored_tiny, tiny_spec

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread", "local_ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module (the executors join it instead of starting their own)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return noise_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    spec = tiny_spec()
    return LoadedModel(backdoored_tiny(), spec, spec.class_names, torch.device("cpu"), source="tiny")


@pytest.fixture()
def tiny_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_trojan", tiny_spec())
    path = tmp_path / "tiny.pth"
    torch.save(backdoored_tiny().state_dict(), path)
    return str(path)


def _without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"} | {
        "trace": {k: v for k, v in record["trace"].items() if k != "seconds"}}


def test_smoke_benchmark_and_tuning_on_ray_equal_the_in_process_run(tiny_checkpoint, photo_dir, tmp_path, capsys):
    common = ["--smoke", "--samples", "3", "--checkpoint", tiny_checkpoint, "--arch", "tiny_trojan", "--images",
              str(photo_dir), "--device", "cpu", "--threads", "1"]
    assert main(["benchmark", "trojan", *common, "--out", str(tmp_path / "alone")]) == 0
    assert main(["benchmark", "trojan", *common, "--out", str(tmp_path / "ray"), "--ray", "auto"]) == 0
    assert "on Ray: 2 worker(s)" in capsys.readouterr().out
    for name in ("trojan.csv", "trojan.md"):  # the tables (the markdown's timing line aside)
        alone, on_ray = ((tmp_path / d / name).read_text().splitlines() for d in ("alone", "ray"))
        assert [line for line in alone if " s per " not in line] == [line for line in on_ray if " s per " not in line]
    tables = [json.loads((tmp_path / d / "trojan.json").read_text()) for d in ("alone", "ray")]
    assert tables[0]["rows"] == tables[1]["rows"] and len(tables[0]["rows"]) == 2 * 3 * 3
    assert tables[0]["top1_kept"] == tables[1]["top1_kept"] and tables[0]["samples"] == 3
    records = [load_results(tmp_path / d) for d in ("alone", "ray")]
    assert [_without_timings(r) for r in records[0]] == [_without_timings(r) for r in records[1]]

    profiles = []
    for name, extra in (("alone", []), ("ray", ["--ray", "auto"])):
        out = tmp_path / f"{name}.json"
        assert main(["benchmark", "tune", *common, "--out", str(out), *extra]) == 0
        document = json.loads(out.read_text())
        profiles.append((document["targets"], document["tuning"]["history"], document["tuning"]["score"]))
    assert profiles[0] == profiles[1]


class _DyingExecutor(RayExecutor):
    """The Ray executor whose third task of the run kills its worker process (`tests.ray_helpers.die_once`)."""

    def __init__(self, marker: Path):
        super().__init__(RaySettings())
        self.marker = str(marker)

    def map(self, fn, shared, items):
        return super().map(functools.partial(die_once, self.marker, fn), shared, items)


def test_a_worker_killed_mid_run_is_retried_and_every_record_is_written_once(loaded, photo_dir, tmp_path):
    samples = build_samples(loaded.model, PRE, folder_photos(photo_dir), SampleConfig(count=4, seed=0),
                            trigger=load_trigger("heart"), target=TARGET, batch_size=8)
    config = BenchmarkConfig(methods=("saliency", "input_x_gradient"), sparsity=0.5, augment=AugmentConfig(count=8))
    identity = {"model": {"name": "tiny_trojan"}, "trigger": "heart", "target": TARGET}
    marker = tmp_path / "died"
    with _DyingExecutor(marker) as executor:
        assert not executor.started  # joined the module's Ray
        summary = run_benchmark(loaded, samples, config, tmp_path / "ray", identity, executor=executor)
    assert marker.is_file()  # a worker really died, in the third task or later (the first two ran through)
    assert len((tmp_path / "died.started").read_bytes()) == 5  # 4 samples + the retried one
    assert summary.computed == 8 and summary.skipped == 0
    lines = [json.loads(line) for line in (tmp_path / "ray" / "results.jsonl").read_text().splitlines()]
    keys = [(r["sample"], r["method"]) for r in lines]
    assert len(keys) == len(set(keys)) == 8
    assert {s for s, _ in keys} == {r.id for r in samples.records}
    run_benchmark(loaded, samples, config, tmp_path / "alone", identity)
    assert ([_without_timings(r) for r in load_results(tmp_path / "ray")]
            == [_without_timings(r) for r in load_results(tmp_path / "alone")])


def test_batch_on_ray_equals_the_in_process_batch(loaded, photo_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in photo_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    config = BatchConfig(methods=("saliency", "gradcam"), sparsity=0.5, augment=AugmentConfig(count=8))
    run_batch(loaded, folder, tmp_path / "alone", config)
    with RayExecutor(RaySettings()) as executor:
        summary = run_batch(loaded, folder, tmp_path / "ray", config, executor=executor)
    assert (summary.images, summary.explained, summary.failed) == (5, 4, 1)
    documents = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("alone", "ray")]

    def strip(record: dict) -> dict:
        methods = {m: {k: v for k, v in e.items() if k != "seconds"} for m, e in record.get("methods", {}).items()}
        return {k: v for k, v in record.items() if k not in ("seconds", "methods")} | {"methods": methods}

    assert [strip(r) for r in documents[0]["records"]] == [strip(r) for r in documents[1]["records"]]
    assert documents[1]["errors"] == 1 and documents[1]["records"][0]["image"] == "broken.png"
    pngs = sorted(p.name for p in (tmp_path / "alone" / "maps").iterdir())
    assert len(pngs) == 4 * 2
    for name in pngs:
        assert (tmp_path / "alone" / "maps" / name).read_bytes() == (tmp_path / "ray" / "maps" / name).read_bytes()


def test_a_task_error_stops_the_run_and_a_gpu_run_needs_gpus():
    """An error inside a task reaches the caller as the library's error (the CLI prints it without a traceback);
    asking for GPUs on a Ray without any is refused before any task runs (the module's Ray stays up)."""
    with RayExecutor(RaySettings()) as executor, pytest.raises(SpadeError, match="item 2 is refused"):
        list(executor.map(fail_on, executor.put(2), range(4)))
    with pytest.raises(ConfigError, match="has no GPU"):
        executor_for("auto", gpu=True)
    assert ray.is_initialized()


class _FatalImageExecutor(RayExecutor):
    """No retries, and the worker that gets image photo1.png dies (a decoder crash, say)."""

    def __init__(self):
        super().__init__(RaySettings(max_retries=0))

    def map(self, fn, shared, items, *, keep_going=False):
        return super().map(functools.partial(die_on, "photo1.png", fn), shared, items, keep_going=keep_going)


def test_an_image_whose_worker_always_dies_is_an_error_row_and_the_batch_goes_on(loaded, photo_dir, tmp_path):
    config = BatchConfig(methods=("saliency",), sparsity=0.5, augment=AugmentConfig(count=4))
    with _FatalImageExecutor() as executor:
        summary = run_batch(loaded, photo_dir, tmp_path / "out", config, executor=executor)
    assert (summary.images, summary.explained, summary.failed) == (4, 3, 1)
    records = {r["image"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["records"]}
    assert records["photo1.png"]["status"] == "error" and "worker died" in records["photo1.png"]["error"]
    assert all(records[f"photo{i}.png"]["status"] == "ok" for i in (0, 2, 3))
