"""SPADE trace speed per stage: augmentation, statistics, solve, re-solve, plus the forward-pass floor.

Usage: python benchmarks/bench_trace.py [--device auto|cpu|cuda] [--models efficientnet_lite0,resnet18,resnet50]
                                       [--repeat N] [--solver group|row|obc]
Each model runs in its own subprocess so that the peak memory figure is its own. With --repeat N every model
runs N times and a median row follows (timings on a shared 2-core machine drift by 15-25 % between quiet
and busy hours).
efficientnet_lite0 uses its offline ImageNet weights and 128 augmentations; the torchvision models use
random weights (speed does not depend on the values) and 64 augmentations, uniform sparsity 0.9.
On CUDA the counts are 1024 for every model (the authors' demo value). --solver picks the layer solver (default
group, FastSPADE; obc is the paper's exact solver, minutes per solve on a CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(name: str, device_name: str, mode: str = "group") -> dict:
    import torch
    import torchvision

    from spade.augment import AugmentConfig, augment
    from spade.devices import resolve_device
    from spade.images import bundled_examples, load_image
    from spade.models import load_model
    from spade.preprocessing import Preprocessing
    from spade.solver import SolverConfig
    from spade.statistics import collect_statistics
    from spade.trace import solve

    device = resolve_device(device_name)
    if name.startswith("efficientnet_lite"):
        loaded = load_model(name, device=device)
        model, pre, count, sparsity = loaded.model, loaded.spec.preprocessing, 128, 0.9
    else:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval().to(device)
        pre, count, sparsity = Preprocessing(), 64, 0.9
    if device.type == "cuda":
        count = 1024
    image = load_image(bundled_examples()["cat"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    batch = augment(image, AugmentConfig(count=count), pre)
    t_aug = time.perf_counter() - t0

    with torch.inference_mode():
        model(batch[:2].to(device))  # warm-up
        sync()
        t0 = time.perf_counter()
        for chunk in batch.split(32):
            model(chunk.to(device))
        sync()
        t_fwd = time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    stats = collect_statistics(model, batch, batch_size=64 if device.type == "cpu" else 256)
    sync()
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace = solve(stats, sparsity, SolverConfig(mode=mode))
    sync()
    t_solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    solve(stats, 0.8, SolverConfig(mode=mode))
    sync()
    t_resolve = time.perf_counter() - t0
    errors = [r.error for r in trace.layers]
    return {
        "model": name, "device": str(device), "solver": mode, "augmentations": count, "sparsity": sparsity,
        "augment_s": t_aug, "forward_floor_s": t_fwd, "statistics_s": t_stats, "solve_s": t_solve,
        "resolve_s": t_resolve, "end_to_end_s": t_aug + t_stats + t_solve,
        "mean_rel_error": sum(errors) / len(errors), "max_rel_error": max(errors),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="efficientnet_lite0,resnet18,resnet50")
    parser.add_argument("--repeat", type=int, default=1, help="runs per model; a median row follows")
    parser.add_argument("--solver", choices=("group", "row", "obc"), default="group", help="layer solver")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.solver)))
        return
    header = (f"{'model':<26}{'device':<8}{'augs':>5}{'augment':>9}{'forward':>9}{'stats':>8}{'solve':>8}"
              f"{'re-solve':>9}{'total':>8}{'mean err':>9}{'peak RSS':>9}")
    print(header)
    for name in args.models.split(","):
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, "--one", name, "--device", args.device,
                                  "--solver", args.solver],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(_row(runs[-1]), flush=True)
        if len(runs) > 1:
            median = {key: statistics.median(r[key] for r in runs) if isinstance(value, float) else value
                      for key, value in runs[0].items()}
            print(_row(median, label="median"), flush=True)


def _row(r: dict, label: str = "") -> str:
    model = r["model"] + ("" if r["solver"] == "group" else f" ({r['solver']})") + (" " + label if label else "")
    return (f"{model:<26}{r['device']:<8}{r['augmentations']:>5}"
            f"{r['augment_s']:>8.2f}s{r['forward_floor_s']:>8.2f}s{r['statistics_s']:>7.2f}s{r['solve_s']:>7.2f}s"
            f"{r['resolve_s']:>8.2f}s{r['end_to_end_s']:>7.2f}s{r['mean_rel_error']:>9.4f}{r['peak_rss_gib']:>8.2f}G"
            + (f"  cuda peak {r['peak_cuda_gib']:.2f}G" if r["peak_cuda_gib"] else ""))

if __name__ == "__main__":
    main()
