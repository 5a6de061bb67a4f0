"""benchmarks/bench_reference.py: loading a "reference" solver module from a folder, its statistics and solve
passes, and the common scoring, with a minimal fake reference module (not the authors' code) on a tiny model."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spade.layers import prunable_layers
from tests.tiny_models import TinyResNet

ROOT = Path(__file__).resolve().parent.parent

# The interface the benchmark uses: SparseGPT(layer), add_batch(inp, out) as a forward hook,
# fasterprune(sparsity, prunen, prunem, blocksize, percdamp) writing layer.weight.data, free().
# This one keeps the largest |w| of the whole layer (no compensation) and records what it saw.
FAKE_REFERENCE = textwrap.dedent('''
    import torch
    import transformers  # a stand-in is registered when the package is missing

    CALLS = []

    class SparseGPT:
        def __init__(self, layer):
            self.layer = layer
            self.batches = 0
            self.H = torch.zeros(1)

        def add_batch(self, inp, out, blocksize=1024):
            assert not isinstance(self.layer, transformers.Conv1D)
            self.batches += 1

        def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01):
            print("fake prune", blocksize)  # the benchmark swallows this
            CALLS.append((sparsity, blocksize, percdamp, self.batches))
            W = self.layer.weight.data
            k = int(W.numel() * sparsity)
            threshold = W.abs().flatten().kthvalue(k).values
            self.layer.weight.data = torch.where(W.abs() <= threshold, torch.zeros_like(W), W)

        def free(self):
            self.H = None
''')


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_reference_under_test", ROOT / "benchmarks" /
                                                  "bench_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_reference(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sparseGPT.py").write_text(FAKE_REFERENCE)
    before = sys.modules.pop("transformers", None)
    yield tmp_path
    sys.modules.pop("transformers", None)  # the stand-in the benchmark may have registered
    if before is not None:
        sys.modules["transformers"] = before


def output_error(layer: nn.Module, sparse: torch.Tensor, inputs: torch.Tensor) -> tuple[float, float]:
    """(||(W_s - W) X||^2, ||W X||^2) from the layer's real outputs on its recorded inputs (no Gram matrix)."""
    if isinstance(layer, nn.Linear):
        dense_out = F.linear(inputs, layer.weight)
        delta = F.linear(inputs, sparse) - dense_out
    else:
        conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        dense_out = F.conv2d(inputs, layer.weight, **conv)
        delta = F.conv2d(inputs, sparse, **conv) - dense_out
    return float(delta.square().sum()), float(dense_out.square().sum())


def assert_scores_are_output_errors(scored: dict, model: nn.Module, views: torch.Tensor, weights: dict) -> None:
    """Each layer's score equals its real output error on the inputs it receives (recorded by hooks)."""
    modules = dict(model.named_modules())
    recorded = {}
    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: recorded.setdefault(n, a[0].detach()))
               for n in weights]
    with torch.no_grad():
        model(views.to(next(model.parameters()).dtype))
    for h in handles:
        h.remove()
    for name in weights:
        num, den = output_error(modules[name], weights[name].to(modules[name].weight), recorded[name])
        assert scored["layer_errors"][name] == pytest.approx(num / den, rel=1e-5)


def test_fake_reference_is_loaded_timed_and_scored_on_one_gram(fake_reference):
    bench = load_bench()
    reference = bench.load_reference(fake_reference)
    torch.manual_seed(0)
    model = TinyResNet().double().eval()
    views = torch.randn(bench.BATCH + 6, 3, 24, 24, dtype=torch.float64)  # two batches
    names = list(prunable_layers(model))

    gpts, seconds = bench.reference_statistics(reference, model, names, views)
    assert seconds > 0 and set(gpts) == set(names)
    assert all(gpt.batches == 2 for gpt in gpts.values())  # their hook saw every batch
    weights, seconds = bench.reference_solve(gpts, 0.75)
    assert seconds > 0
    # as their FOBC_core calls it: kh*kw columns per block for a conv, 1 for the linear layer, damping 0.01
    modules = dict(model.named_modules())
    expected_blocks = [m.weight.shape[2] * m.weight.shape[3] if isinstance(m, nn.Conv2d) else 1
                       for m in (modules[n] for n in names)]
    assert [c[1] for c in reference.CALLS] == expected_blocks
    assert {(c[0], c[2]) for c in reference.CALLS} == {(0.75, 0.01)}
    # the reference pruned a deep copy: the model itself is untouched
    assert all(bool((modules[n].weight != 0).all()) for n in names)

    grams = bench.common_grams(model, views, names)
    scored = bench.score(model, grams, weights)

    assert_scores_are_output_errors(scored, model, views, weights)
    zeros = sum(int((weights[n] == 0).sum()) for n in names)
    assert scored["achieved_sparsity"] == pytest.approx(zeros / sum(weights[n].numel() for n in names))
    assert 0.7 < scored["achieved_sparsity"] < 0.8


def test_our_side_is_scored_like_the_solver_reports_it(fake_reference):
    bench = load_bench()
    torch.manual_seed(1)
    model = TinyResNet().eval()
    views = torch.randn(8, 3, 24, 24)
    names = list(prunable_layers(model))
    weights, t_stats, t_solve, cpu = bench.our_statistics_and_solve(model, views, 0.5)
    assert t_stats > 0 and t_solve > 0 and cpu > 0 and set(weights) == set(names)
    scored = bench.score(model, bench.common_grams(model, views, names), weights)
    assert_scores_are_output_errors(scored, model.double(), views.double(), weights)
    assert scored["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0 < scored["mean_error"] < 0.5

def test_a_folder_without_the_solver_is_refused_before_any_work(tmp_path, fake_reference):
    bench = load_bench()
    folder = tmp_path / "not-a-checkout"
    folder.mkdir()
    with pytest.raises(SystemExit, match="src/sparseGPT.py"):
        bench.load_reference(folder)
    (folder / "sparseGPT.py").write_text("x = 1\n")
    with pytest.raises(SystemExit, match="no SparseGPT class"):
        bench.load_reference(folder)

def test_bad_settings_are_refused(fake_reference, capsys):
    bench = load_bench()
    for argv in (["--views", "0"], ["--sparsity", "1"], ["--repeat", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--reference", str(fake_reference), *argv])
        assert exit_info.value.code == 2


def test_without_a_reference_the_script_is_skipped(monkeypatch, capsys):
    monkeypatch.delenv("SPADE_REFERENCE", raising=False)
    assert load_bench().main([]) == {}
    assert "skipped" in capsys.readouterr().out


def test_medians_give_the_speed_up_its_cpu_ceiling_and_the_table_shows_them(monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "_cores", lambda: 2)
    runs = [{"forward_floor_s": f, "factor_floor_s": 0.5, "ours_statistics_s": 2.0 * f, "ours_solve_s": 1.0,
             "ours_total_s": 2.0 * f + 1.0, "ours_cpu_s": 5.0 * f, "authors_statistics_s": 8.0,
             "authors_solve_s": 4.0 * f, "authors_total_s": 8.0 + 4.0 * f, "ours_mean_error": 0.05,
             "authors_mean_error": 0.04 + 0.01 * f, "loadavg_after": 1.0} for f in (1.0, 3.0, 2.0)]
    median = bench.medians(runs)
    assert median["ours_total_s"] == 5.0 and median["authors_total_s"] == 16.0 and median["ours_cpu_s"] == 10.0
    assert median["speedup"] == pytest.approx(16.0 / 5.0)
    assert median["speedup_ceiling"] == pytest.approx(16.0 / (10.0 / 2))  # 10 CPU seconds on 2 cores: 5 s at best
    assert median["error_ratio"] == pytest.approx(0.05 / 0.06)
    row = bench.table([{"model": "tiny", "views": 8, "median": median}]).splitlines()[-1]
    assert "**3.20x**" in row and "10.00 s: 3.20x" in row and "(0.83x)" in row
