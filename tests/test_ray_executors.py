"""The executor interface without a Ray: splitting, settings checks, the spread tuning path, lazy imports, and the
``--ray`` usage errors (the tests that start a Ray are in test_ray_backend.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spade.augment import AugmentConfig
from spade.errors import ConfigError
from spade.models import LoadedModel
from spade.solver import SolverConfig
from spade.trojan import load_trigger
from spade_cli.main import main
from spade_lab.executors import Executor, RaySettings, TaskFailed, executor_for, split
from spade_lab.samples import SampleConfig, build_samples, folder_photos
from tests.ray_helpers import Parts, noise_photos
from tests.test_trojan_benchmark import PRE, TARGET, tiny_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_keeps_order_and_balances():
    items = list(range(7))
    parts = split(items, 3)
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert split(items, 10) == [[i] for i in items]  # never an empty part
    assert split(items, 1) == [items]
    assert sum(split(list(range(100)), 7), []) == list(range(100))
    assert {len(p) for p in split(list(range(100)), 7)} == {14, 15}


@pytest.mark.parametrize("settings,message", [
    ({"address": "cluster"}, "neither 'auto' nor an address"),
    ({"address": " "}, "needs 'auto' or a cluster address"),
    ({"address": "auto", "cpus": 0}, "at least 1"),
    ({"address": "10.0.0.5:6379", "cpus": 2}, "applies to a local start"),
])
def test_ray_settings_refuse_what_cannot_work(settings, message):
    with pytest.raises(ConfigError, match=message):
        RaySettings(**settings)


def test_in_process_executor_streams_a_generator_and_keeps_order():
    seen = []

    def fn(shared, item):
        for k in range(2):
            seen.append((item, k))
            yield shared + item + k

    results = Executor().map(fn, 10, [1, 2])
    index, first = next(results)
    assert index == 0 and seen == []  # handed over as it is: nothing computed yet
    assert next(first) == 11 and seen == [(1, 0)]
    assert [(i, list(r)) for i, r in results] == [(1, [12, 13])]
    with pytest.raises(ConfigError, match="--ray-cpus needs --ray auto"):
        executor_for(None, cpus=2)


def test_keep_going_turns_a_failed_task_into_a_result_and_the_rest_still_run():
    def fn(shared, item):
        if item == 1:
            raise ValueError("item 1 is bad")
        return shared * item

    got = list(Executor().map(fn, 10, [0, 1, 2], keep_going=True))
    assert got == [(0, 0), (1, TaskFailed("ValueError: item 1 is bad")), (2, 20)]
    with pytest.raises(ValueError, match="item 1 is bad"):
        list(Executor().map(fn, 10, [0, 1, 2]))


def test_spread_tuning_equals_the_in_process_search(tmp_path):
    """Tuning over calibration samples split into parts (the code path of Ray's actors, here in-process) scores
    every candidate as the one-process search does, including the infeasible ones that the latter stops early
    (keep_decision off, conv_head pruned hard: some traces lose the top-1)."""
    from spade_lab.tuning import TuningConfig, tune_profile
    from tests.tiny_models import tiny_mobilenet

    spec = tiny_spec()
    model = tiny_mobilenet(seed=1).eval()
    mobile = LoadedModel(model, spec, spec.class_names, torch.device("cpu"), source="tiny")
    samples = build_samples(model, PRE, folder_photos(noise_photos(tmp_path / "photos")),
                            SampleConfig(count=3, require_flip=False), trigger=load_trigger("heart"), target=TARGET,
                            batch_size=8)
    config = TuningConfig(methods=("saliency",), levels=(0.0, 0.4, 0.95), augment=AugmentConfig(count=8),
                          solver=SolverConfig(mode="group"), min_agreement=0.6)
    alone = tune_profile(mobile, samples, config)
    spread = tune_profile(mobile, samples, config, executor=Parts(2))
    assert any(h["score"] is None for h in alone.history)  # the early-stopping case is exercised
    assert spread.history == alone.history
    assert spread.profile == alone.profile and spread.score == alone.score and spread.samples == alone.samples == 3


def test_the_library_app_and_in_process_lab_never_import_ray():
    code = """
import sys
import spade_lab.executors, spade_lab.benchmark, spade_lab.tuning, spade_lab.batch
from spade_cli.main import build_parser
build_parser().parse_args(["benchmark", "trojan", "--ray", "auto", "--ray-cpus", "2"])
build_parser().parse_args(["batch", "x", "--out", "y", "--ray", "10.0.0.5:6379"])
print(sorted(m for m in sys.modules if m.split(".")[0] == "ray"))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    for folder in ("spade", "spade_app", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "import ray" not in path.read_text(), path


def _closed_port() -> int:
    """A local port nobody listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("argv,message", [
    (["benchmark", "trojan", "--ray-cpus", "2"], "use it with --ray auto"),
    (["benchmark", "trojan", "--ray", f"127.0.0.1:{_closed_port()}"], "Cannot reach a Ray head node"),
    (["batch", "photos", "--out", "x", "--ray", "127.0.0.1:notaport"], "the port must be a number"),
    (["benchmark", "insertion", "--ray", "10.0.0.5:6379", "--ray-cpus", "2"], "use it with --ray auto"),
    (["benchmark", "tune", "--ray", "headnode"], "neither 'auto' nor an address"),
    (["batch", "photos", "--out", "x", "--ray-cpus", "1"], "use it with --ray auto"),
])
def test_ray_usage_errors_come_before_anything_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
