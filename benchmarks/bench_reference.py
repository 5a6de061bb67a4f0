"""This project's engine against the SPADE authors' solver, in one process: per-stage seconds and layer errors.

Usage: python benchmarks/bench_reference.py --reference DIR [--models resnet18,resnet50,efficientnet_lite0]
                                            [--views 64] [--sparsity 0.9] [--repeat 3] [--threads N] [--out FOLDER]

DIR (default: $SPADE_REFERENCE; without either the script prints that it was skipped, so `make bench` passes)
is a checkout of the authors' public repository (IST-DASLab/SPADE, e.g. `git clone` or `git archive`);
nothing of it is part of this project. Their solver class, `SparseGPT` of `src/sparseGPT.py` (the one their
notebook's FastSPADE pipeline `FOBC_core` uses), is loaded from there at run time. Their module imports
`transformers` only for `isinstance(layer, transformers.Conv1D)`; when transformers is not installed a stand-in
module with an empty `Conv1D` class is registered (no layer here is one).

Per model (`resnet18`, `resnet50`: torchvision with random weights, `torch.manual_seed(0)`; `lite0` /
`efficientnet_lite0`: the offline ImageNet weights, the project's default model) both sides get the same model,
the same `--views` augmented views of the bundled cat photo (`AugmentConfig(count=views, seed=0)`), the same
target layers (`spade.layers.prunable_layers`: no stem, no depthwise) and the same uniform sparsity:

- authors: a deep copy of the model with their `add_batch` as forward hooks, one plain forward over the views in
  batches of 64 (statistics), then `fasterprune(sparsity, blocksize=kh*kw for a conv, 1 for a linear layer,
  percdamp=0.01)` per layer, as `FOBC_core` calls it (solve); their prints are swallowed.
- this project: `collect_statistics` (the forward copy rebuilt every repeat, so its cost is counted) and `solve`.
- the floor: a plain forward of the original model over the same views in batches of 64; and the solve's floor:
  the damped Cholesky factorisation of every layer's float32 Gram matrix alone (no sweep, no error), by the same
  single-threaded workers as our solve (`spade.layer_pool.cpu_workers`). Every exact solver of this kind factors
  each layer's d x d matrix at least once, so no solve of these statistics can take less.

This project's CPU seconds (the process's, every thread counted, statistics and solve together) are printed beside
its wall time, with the speed-up they would give were they spread perfectly over the cores the run uses: a
ceiling that no scheduling can pass, only fewer operations (OpenMP threads that spin while waiting count too, so
the ceiling can be a little low).

Both sparse weights are scored on one float64 Gram matrix per layer (`collect_statistics(..., dtype=float64)`,
not timed): relative reconstruction error ||W_s X - W X||^2 / ||W X||^2, averaged over the layers. Repeats are
interleaved (the order alternates) and the medians are reported; the machine's load average is printed at the
start and the end, so a reader can tell a quiet run from a busy one. The output (the printed report, and every
repeat in `results.json`) goes to `--out` (default `benchmarks/results/reference-<date>/`).

`--threads 1` runs both sides on one thread. On a busy machine that is the steadier comparison: with more threads
than free cores, the BLAS and OpenMP threads of both sides wait for each other (on this 2-core machine at load
~10, our ResNet-50 solve took 73-105 s with 2 threads and 6-7 s with 1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import io
import json
import os
import platform
import statistics as stats_lib
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spade.layers import prunable_layers  # noqa: E402

MODEL_ALIASES = {"lite0": "efficientnet_lite0"}
BATCH = 64
DAMP = 0.01


def find_reference_file(directory: Path) -> Path:
    """The authors' `sparseGPT.py` in a checkout of their repository (``src/`` or the folder itself)."""
    for candidate in (directory / "src" / "sparseGPT.py", directory / "sparseGPT.py"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"No src/sparseGPT.py in {directory}: pass a checkout of IST-DASLab/SPADE as --reference.")


def load_reference(directory: Path) -> types.ModuleType:
    """Import the authors' solver module from `directory` under a private name; returns the module (its
    `SparseGPT` class is what the benchmark uses)."""
    path = find_reference_file(Path(directory))
    if "transformers" not in sys.modules and importlib.util.find_spec("transformers") is None:
        stand_in = types.ModuleType("transformers")
        stand_in.Conv1D = type("Conv1D", (nn.Module,), {})  # the only name their module reads
        sys.modules["transformers"] = stand_in
    spec = importlib.util.spec_from_file_location("spade_reference_sparsegpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "SparseGPT"):
        raise SystemExit(f"{path} has no SparseGPT class.")
    return module


def build_model(name: str) -> tuple[nn.Module, object]:
    """(eval model, preprocessing) for a benchmark model name."""
    import torchvision

    from spade.models import load_model
    from spade.preprocessing import Preprocessing

    name = MODEL_ALIASES.get(name, name)
    if name.startswith("efficientnet_lite"):
        loaded = load_model(name, device="cpu")
        return loaded.model, loaded.spec.preprocessing
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval(), Preprocessing()


def forward_floor(model: nn.Module, views: torch.Tensor) -> float:
    """Seconds of a plain forward of `model` over `views` in batches of 64."""
    start = time.perf_counter()
    with torch.inference_mode():
        for chunk in views.split(BATCH):
            model(chunk)
    return time.perf_counter() - start


def factorisation_floor(grams: dict[str, torch.Tensor]) -> float:
    """Seconds to factor every layer's damped Gram matrix (float32, as our solve does), largest first, by
    `cpu_workers()` single-threaded workers."""
    from concurrent.futures import ThreadPoolExecutor

    from spade.damping import damped_cholesky
    from spade.devices import cpu_threads
    from spade.layer_pool import cpu_workers

    matrices = sorted((g.float() for gram in grams.values() for g in gram), key=lambda m: -m.shape[0])

    def factor(matrix: torch.Tensor) -> None:
        with cpu_threads(1):
            damped_cholesky(matrix, DAMP)

    start = time.perf_counter()
    with ThreadPoolExecutor(cpu_workers()) as pool:
        list(pool.map(factor, matrices))
    return time.perf_counter() - start


def reference_statistics(reference: types.ModuleType, model: nn.Module, layer_names: list[str],
                         views: torch.Tensor) -> tuple[dict, float]:
    """The authors' statistics pass on a deep copy of `model` (their `add_batch` as forward hooks, as their
    notebook registers them). Returns ({layer name: their SparseGPT object}, seconds)."""
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    start = time.perf_counter()
    gpts = {name: reference.SparseGPT(modules[name]) for name in layer_names}
    handles = []
    try:
        for name in layer_names:
            def hook(layer, inp, out, _name=name):
                gpts[_name].add_batch(inp[0].data, out.data)
            handles.append(modules[name].register_forward_hook(hook))
        with torch.no_grad():
            for chunk in views.split(BATCH):
                work(chunk)
    finally:
        for handle in handles:
            handle.remove()
    return gpts, time.perf_counter() - start


def reference_solve(gpts: dict, sparsity: float) -> tuple[dict[str, torch.Tensor], float]:
    """Their `fasterprune` per layer, called as their `FOBC_core` calls it. Returns ({name: sparse weight},
    seconds); their prints are swallowed (the time to format them is counted)."""
    start = time.perf_counter()
    weights = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for name, gpt in gpts.items():
            layer = gpt.layer
            block = layer.weight.shape[2] * layer.weight.shape[3] if isinstance(layer, nn.Conv2d) else 1
            gpt.fasterprune(sparsity, prunen=0, prunem=0, percdamp=DAMP, blocksize=block)
            weights[name] = layer.weight.data.clone()
            gpt.free()
    return weights, time.perf_counter() - start


def our_statistics_and_solve(model: nn.Module, views: torch.Tensor, sparsity: float
                             ) -> tuple[dict[str, torch.Tensor], float, float, float]:
    """This project's pass and solve; ({name: sparse weight}, statistics seconds, solve seconds, CPU seconds of
    both: the process's, so every thread counts). The forward copy cache is cleared first, so its build is part of
    the statistics time."""
    from spade.forward_copy import clear_copies
    from spade.statistics import collect_statistics
    from spade.trace import solve

    clear_copies()
    cpu_start, start = time.process_time(), time.perf_counter()
    layer_stats = collect_statistics(model, views, batch_size=BATCH)
    t_stats = time.perf_counter() - start
    start = time.perf_counter()
    trace = solve(layer_stats, sparsity)
    return dict(trace.sparse_weights), t_stats, time.perf_counter() - start, time.process_time() - cpu_start


def relative_error(dense: torch.Tensor, sparse: torch.Tensor, gram: torch.Tensor) -> float:
    """||W_s X - W X||^2 / ||W X||^2 over all groups, from the (groups, d, d) Gram matrix of X (any scale).
    dense, sparse: the layer's weight, (out, in/groups, kh, kw) or (out, in)."""
    H = gram.to(torch.float64)
    groups, d = H.shape[0], H.shape[1]
    W = dense.to(torch.float64).reshape(groups, -1, d)
    delta = sparse.to(torch.float64).reshape(groups, -1, d) - W
    num = ((delta @ H) * delta).sum()
    den = ((W @ H) * W).sum()
    return float(num / den) if den > 0 else 0.0


def score(model: nn.Module, grams: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> dict:
    """Mean and per-layer relative error and the achieved sparsity of one side's sparse weights."""
    modules = dict(model.named_modules())
    errors = {name: relative_error(modules[name].weight.detach(), weights[name], gram) for name, gram in grams.items()}
    zeros = sum(int((weights[name] == 0).sum()) for name in grams)
    total = sum(weights[name].numel() for name in grams)
    return {"mean_error": sum(errors.values()) / len(errors), "achieved_sparsity": zeros / total,
            "layer_errors": errors}


def common_grams(model: nn.Module, views: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """One float64 Gram matrix per layer, (groups, d, d), that scores both sides."""
    from spade.statistics import collect_statistics

    stats64 = collect_statistics(model, views, layers=layer_names, batch_size=BATCH, dtype=torch.float64)
    return {name: stat.hessian for name, stat in stats64.layers.items()}


def run_model(reference: types.ModuleType, name: str, views_count: int, sparsity: float, repeat: int,
              log=print) -> dict:
    """Every repeat of one model, interleaved (the order alternates), and the medians."""
    from spade.augment import AugmentConfig, augment
    from spade.images import bundled_examples, load_image

    model, pre = build_model(name)
    layer_names = list(prunable_layers(model))
    views = augment(load_image(bundled_examples()["cat"]), AugmentConfig(count=views_count, seed=0), pre)
    with torch.inference_mode():
        model(views[:2])  # warm-up
    grams = common_grams(model, views, layer_names)
    runs = []
    for r in range(repeat):
        row = {"forward_floor_s": forward_floor(model, views), "factor_floor_s": factorisation_floor(grams)}
        for side in (("ours", "authors") if r % 2 == 0 else ("authors", "ours")):
            if side == "ours":
                weights, t_stats, t_solve, cpu = our_statistics_and_solve(model, views, sparsity)
                row["ours_statistics_s"], row["ours_solve_s"], row["ours_cpu_s"] = t_stats, t_solve, cpu
            else:
                gpts, row["authors_statistics_s"] = reference_statistics(reference, model, layer_names, views)
                weights, row["authors_solve_s"] = reference_solve(gpts, sparsity)
            scored = score(model, grams, weights)
            row[f"{side}_mean_error"] = scored["mean_error"]
            row[f"{side}_achieved_sparsity"] = scored["achieved_sparsity"]
            if r == 0:
                row[f"{side}_layer_errors"] = scored["layer_errors"]
        for side in ("ours", "authors"):
            row[f"{side}_total_s"] = row[f"{side}_statistics_s"] + row[f"{side}_solve_s"]
        row["loadavg_after"] = os.getloadavg()[0]
        runs.append(row)
        log(f"  {name} repeat {r + 1}/{repeat}: " + _stage_line(row))
    return {"model": MODEL_ALIASES.get(name, name), "views": views_count, "sparsity": sparsity,
            "layers": len(layer_names), "repeats": runs, "median": medians(runs)}


def medians(runs: list[dict]) -> dict:
    """The median of every timed or scored value over the repeats, and the ratios of the medians: the speed-up, its
    ceiling (the speed-up were our CPU seconds spread perfectly over the cores the run uses) and the error ratio."""
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    median = {k: stats_lib.median(run[k] for run in runs) for k in keys}
    median["speedup"] = median["authors_total_s"] / median["ours_total_s"]
    median["speedup_ceiling"] = median["authors_total_s"] * _cores() / median["ours_cpu_s"]
    median["error_ratio"] = median["ours_mean_error"] / median["authors_mean_error"]
    return median


def _cores() -> int:
    """CPU cores our solve uses (`spade.layer_pool.cpu_workers`), at most the machine's CPUs."""
    from spade.layer_pool import cpu_workers

    return min(cpu_workers(), os.cpu_count() or 1)


def _stage_line(r: dict) -> str:
    return (f"floors {r['forward_floor_s']:.2f}s + {r['factor_floor_s']:.2f}s | "
            f"ours {r['ours_statistics_s']:.2f} + {r['ours_solve_s']:.2f} = "
            f"{r['ours_statistics_s'] + r['ours_solve_s']:.2f}s (CPU {r['ours_cpu_s']:.2f}s), "
            f"err {r['ours_mean_error']:.4f} | authors "
            f"{r['authors_statistics_s']:.2f} + {r['authors_solve_s']:.2f} = "
            f"{r['authors_statistics_s'] + r['authors_solve_s']:.2f}s, err {r['authors_mean_error']:.4f}")


def table(results: list[dict]) -> str:
    """The report's Markdown table of the medians."""
    lines = ["| model | views | floors: forward, factorisation | this project: statistics + solve = total | authors: "
             "statistics + solve = total | speed-up | this project's CPU seconds: the speed-up were they spread "
             f"over {_cores()} cores | mean relative error: this project / authors (ratio) |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        m = res["median"]
        lines.append(
            f"| {res['model']} | {res['views']} | {m['forward_floor_s']:.2f} s, {m['factor_floor_s']:.2f} s | "
            f"{m['ours_statistics_s']:.2f} + "
            f"{m['ours_solve_s']:.2f} = {m['ours_total_s']:.2f} s | {m['authors_statistics_s']:.2f} + "
            f"{m['authors_solve_s']:.2f} = {m['authors_total_s']:.2f} s | **{m['speedup']:.2f}x** | "
            f"{m['ours_cpu_s']:.2f} s: {m['speedup_ceiling']:.2f}x | "
            f"{m['ours_mean_error']:.4f} / {m['authors_mean_error']:.4f} ({m['error_ratio']:.2f}x) |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=os.environ.get("SPADE_REFERENCE"),
                        help="checkout of IST-DASLab/SPADE (default: $SPADE_REFERENCE)")
    parser.add_argument("--models", default="resnet18,resnet50,lite0")
    parser.add_argument("--views", type=int, default=64, help="augmented views (>= 1)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="uniform sparsity in [0, 1)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--threads", type=int, help="CPU threads for both sides (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/reference-<date>/")
    args = parser.parse_args(argv)
    if args.views < 1 or not 0 <= args.sparsity < 1 or args.repeat < 1 or (args.threads or 1) < 1:
        parser.error("--views, --repeat and --threads must be >= 1 and --sparsity in [0, 1).")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference is None:  # `make bench` runs every script: without the authors' code there is nothing to do
        print("skipped: pass --reference DIR (a checkout of IST-DASLab/SPADE) or set SPADE_REFERENCE")
        return {}
    reference = load_reference(Path(args.reference))  # fails before any model is built
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "benchmarks" / "results" / f"reference-{date}"
    out.mkdir(parents=True, exist_ok=True)
    report: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    load_start = os.getloadavg()
    log(f"# This project vs the authors' SparseGPT ({date}, commit {_git_commit()})")
    log(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average at start (1/5/15 min): "
        + " / ".join(f"{x:.2f}" for x in load_start))
    log(f"settings: {args.views} views of the cat, seed 0, uniform sparsity {args.sparsity}, {args.repeat} "
        "interleaved repeats (medians)")
    results: list[dict] = []
    summary = {"date": date, "commit": _git_commit(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "loadavg_start": load_start, "views": args.views,
               "sparsity": args.sparsity, "repeat": args.repeat, "results": results}
    for name in args.models.split(","):
        results.append(run_model(reference, name.strip(), args.views, args.sparsity, args.repeat, log))
        # written after every model, so an interrupted run keeps what it measured
        (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        (out / "report.md").write_text("\n".join(report + ["", table(results)]) + "\n")
    summary["loadavg_end"] = os.getloadavg()
    log("load average at end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in summary["loadavg_end"]))
    log("")
    log(table(results))
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text("\n".join(report) + "\n")
    return summary


if __name__ == "__main__":
    main()
