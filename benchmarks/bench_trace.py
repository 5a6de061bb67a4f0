"""SPADE trace speed per stage: augmentation, statistics, solve, re-solve, plus the forward-pass floor.

Usage: python benchmarks/bench_trace.py [--device auto|cpu|cuda] [--models efficientnet_lite0,resnet18,resnet50]
                                       [--repeat N] [--solver group|row|obc[,...]] [--rounds N] [--layers]
                                       [--augmentations N] [--no-resolve] [--threads N]
Each model runs in its own subprocess so that the peak memory figure is its own. With --repeat N every model
runs N times and a median row follows (timings on a shared 2-core machine drift by 15-25 % between quiet
and busy hours).
efficientnet_lite0 uses its offline ImageNet weights and 128 augmentations; the torchvision models use
random weights (speed does not depend on the values) and 64 augmentations, uniform sparsity 0.9.
On CUDA the counts are 1024 for every model (the authors' demo value). --solver picks the layer solver (default
group, FastSPADE; obc is the paper's exact solver). Several solvers, comma-separated (``--solver group,obc``), run
in one process on the same statistics, interleaved round by round (``--rounds``), so that load on a shared machine
falls on all of them alike; ``--layers`` adds per-layer solve times and errors side by side, and, where obc is among
them, its multiply-adds and estimated bytes moved (`spade.obc_cost`, counted from the algorithm, not measured) and
the two constants of the time estimate fitted to its per-layer times. ``--augmentations N`` overrides the count.
The "(cpu)" columns are the process's CPU seconds during the statistics pass and the solve: about the wall time
times the cores where a stage keeps them all busy.
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


def measure(name: str, device_name: str, modes: list[str], count: int | None = None, rounds: int = 1,
            resolve: bool = True) -> list[dict]:
    """One row per (round, solver), solvers interleaved within each round, all on one set of statistics."""
    import torch
    import torchvision

    from spade.augment import AugmentConfig, augment
    from spade.devices import resolve_device
    from spade.images import bundled_examples, load_image
    from spade.models import load_model
    from spade.obc_cost import matrix_work
    from spade.preprocessing import Preprocessing
    from spade.solver import SolverConfig
    from spade.statistics import collect_statistics
    from spade.trace import solve

    device = resolve_device(device_name)
    if name.startswith("efficientnet_lite"):
        loaded = load_model(name, device=device)
        model, pre, default_count, sparsity = loaded.model, loaded.spec.preprocessing, 128, 0.9
    else:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval().to(device)
        pre, default_count, sparsity = Preprocessing(), 64, 0.9
    if device.type == "cuda":
        default_count = 1024
    count = count or default_count
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
    t0, c0 = time.perf_counter(), time.process_time()
    stats = collect_statistics(model, batch, batch_size=64 if device.type == "cpu" else 256)
    sync()
    t_stats, c_stats = time.perf_counter() - t0, time.process_time() - c0
    names = list(stats.layers)
    modules = dict(model.named_modules())
    rows = []
    for round_ in range(rounds):
        for mode in modes:
            ends: list[tuple[float, float]] = []
            t0, c0 = time.perf_counter(), time.process_time()
            trace = solve(stats, sparsity, SolverConfig(mode=mode),
                          progress=lambda stage, f, ends=ends: ends.append((f, time.perf_counter())))
            sync()
            t_solve, c_solve = time.perf_counter() - t0, time.process_time() - c0
            t_resolve = None
            if resolve:
                t1 = time.perf_counter()
                solve(stats, 0.8, SolverConfig(mode=mode))
                sync()
                t_resolve = time.perf_counter() - t1
            layers, last = [], t0
            for i, report in enumerate(trace.layers):
                end = max((t for f, t in ends if f <= (i + 1) / len(names) + 1e-9), default=last)
                stat = stats.layers[names[i]]
                groups, d = stat.hessian.shape[0], stat.hessian.shape[1]
                rank = stat.rows if isinstance(modules[names[i]], torch.nn.Linear) else None
                work = matrix_work(report.weight_shape[0] // groups, d, sparsity, rank)
                layers.append({"name": report.name, "rows": report.weight_shape[0], "d": d, "groups": groups,
                               "seconds": end - last, "error": report.error, "fma": work.fma * groups,
                               "bytes": work.bytes * groups, "steps": work.steps * groups})
                last = end
            errors = [r.error for r in trace.layers]
            rows.append({
                "model": name, "device": str(device), "solver": mode, "round": round_, "augmentations": count,
                "sparsity": sparsity, "augment_s": t_aug, "forward_floor_s": t_fwd, "statistics_s": t_stats,
                "statistics_cpu_s": c_stats, "solve_s": t_solve, "solve_cpu_s": c_solve, "resolve_s": t_resolve,
                "end_to_end_s": t_aug + t_stats + t_solve,
                "mean_rel_error": sum(errors) / len(errors), "max_rel_error": max(errors), "layers": layers,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="efficientnet_lite0,resnet18,resnet50")
    parser.add_argument("--repeat", type=int, default=1, help="runs per model; a median row follows")
    parser.add_argument("--solver", default="group", help="layer solver(s), comma-separated: group, row, obc")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the solvers, interleaved, per process")
    parser.add_argument("--augmentations", type=int, default=None, help="views (default: see above)")
    parser.add_argument("--layers", action="store_true", help="per-layer times and errors of the solvers")
    parser.add_argument("--no-resolve", action="store_true", help="skip the re-solve at 0.8")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()
    modes = args.solver.split(",")
    if unknown := [m for m in modes if m not in ("group", "row", "obc")]:
        parser.error(f"unknown solver(s) {', '.join(unknown)}")
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.one, args.device, modes, args.augmentations, args.rounds,
                                 not args.no_resolve)))
        return
    header = (f"{'model':<26}{'device':<8}{'augs':>5}{'augment':>9}{'forward':>9}{'stats':>8}{'(cpu)':>8}"
              f"{'solve':>8}{'(cpu)':>8}{'re-solve':>9}{'total':>8}{'mean err':>9}{'peak RSS':>9}")
    print(header)
    for name in args.models.split(","):
        runs = []
        for _ in range(args.repeat):
            command = [sys.executable, __file__, "--one", name, "--device", args.device, "--solver", args.solver,
                       "--rounds", str(args.rounds)] + (["--no-resolve"] if args.no_resolve else [])
            if args.augmentations:
                command += ["--augmentations", str(args.augmentations)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
            results = json.loads(out.stdout.strip().splitlines()[-1])
            runs += results
            for r in results:
                print(_row(r), flush=True)
            if args.layers:
                print(_layer_table(results), flush=True)
        for mode in modes:
            mine = [r for r in runs if r["solver"] == mode]
            if len(mine) > 1:
                median = {key: statistics.median(r[key] for r in mine) if isinstance(value, float) else value
                          for key, value in mine[0].items()}
                print(_row(median, label="median"), flush=True)


def _layer_table(results: list[dict]) -> str:
    """Per-layer solve seconds and relative errors of each solver (the median over rounds), obc's counted work, and
    the constants of `spade.obc_cost` fitted to obc's per-layer times."""
    modes = list(dict.fromkeys(r["solver"] for r in results))
    per = {m: [r["layers"] for r in results if r["solver"] == m] for m in modes}
    names = [layer["name"] for layer in per[modes[0]][0]]

    def median(mode: str, i: int, key: str) -> float:
        return statistics.median(layers[i][key] for layers in per[mode])

    head = f"{'layer':<22}{'rows x d':>12}" + "".join(f"{m + ' s':>10}{m + ' err':>10}" for m in modes)
    if "obc" in modes:
        head += f"{'obc GFMA':>10}{'obc GB':>8}"
    lines = [head]
    for i, name in enumerate(names):
        first = per[modes[0]][0][i]
        line = f"{name:<22}{str(first['rows']) + ' x ' + str(first['d']):>12}"
        line += "".join(f"{median(m, i, 'seconds'):>10.2f}{median(m, i, 'error'):>10.4f}" for m in modes)
        if "obc" in modes:
            line += f"{first['fma'] / 1e9:>10.1f}{first['bytes'] / 1e9:>8.1f}"
        lines.append(line)
    totals = "".join(f"{sum(median(m, i, 'seconds') for i in range(len(names))):>10.2f}"
                     f"{statistics.mean(median(m, i, 'error') for i in range(len(names))):>10.4f}" for m in modes)
    lines.append(f"{'all layers (mean err)':<34}" + totals)
    if "obc" in modes:
        fma = sum(layer["fma"] for layer in per["obc"][0])
        moved = sum(layer["bytes"] for layer in per["obc"][0])
        seconds = statistics.median(r["solve_s"] for r in results if r["solver"] == "obc")
        lines.append(f"obc: {fma / 1e9:.0f} GFMA and about {moved / 1e9:.0f} GB moved per trace (counted from the "
                     f"algorithm); {fma / 1e9 / seconds:.1f} GFMA/s and {moved / 1e9 / seconds:.1f} GB/s reached "
                     f"over the {seconds:.1f} s solve")
        lines.append(_fit(per["obc"], names))
    return "\n".join(lines)


def _fit(runs: list[list[dict]], names: list[str]) -> str:
    """Least-squares seconds = a * GFMA + b * steps over obc's layers (all rounds): the constants of
    `spade.obc_cost`."""
    import torch

    A = torch.tensor([[layer["fma"] / 1e9, layer["steps"]] for layers in runs for layer in layers],
                     dtype=torch.float64)
    y = torch.tensor([layer["seconds"] for layers in runs for layer in layers], dtype=torch.float64)
    a, b = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.flatten().tolist()
    if b < 0:  # the steps explain nothing here (load on a shared machine swamps them): the time per GFMA alone
        a, b = float(y.sum() / A[:, 0].sum()), 0.0
    return f"fitted: SECONDS_PER_GFMA = {a:.4f}, SECONDS_PER_STEP = {b:.6f}"


def _row(r: dict, label: str = "") -> str:
    model = r["model"] + ("" if r["solver"] == "group" else f" ({r['solver']})") + (" " + label if label else "")
    return (f"{model:<26} {r['device']:<7}{r['augmentations']:>5}"
            f"{r['augment_s']:>8.2f}s{r['forward_floor_s']:>8.2f}s{r['statistics_s']:>7.2f}s"
            f"{r.get('statistics_cpu_s', 0):>7.2f}s{r['solve_s']:>7.2f}s"
            f"{r.get('solve_cpu_s', 0):>7.2f}s"
            + (f"{r['resolve_s']:>8.2f}s" if r.get("resolve_s") is not None else f"{'-':>9}")
            + f"{r['end_to_end_s']:>7.2f}s{r['mean_rel_error']:>9.4f}{r['peak_rss_gib']:>8.2f}G"
            + (f"  cuda peak {r['peak_cuda_gib']:.2f}G" if r["peak_cuda_gib"] else ""))

if __name__ == "__main__":
    main()
