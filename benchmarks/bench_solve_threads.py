"""One solve at several CPU thread counts: wall and CPU seconds, to see what a busy machine does to threads.

Usage: python benchmarks/bench_solve_threads.py [--model resnet50] [--views 64] [--sparsity 0.9]
                                                 [--threads 2,1] [--repeat 2] [--out DIR]
The statistics of the model (torchvision, random weights, seed 0; or a registry model that loads offline) over
`--views` augmented views of the cat are collected once; then `spade.trace.solve` at uniform `--sparsity` runs
at each thread count, interleaved over the repeats (the sweep's own limit, `spade.solver.SOLVER_CPU_THREADS`, is
lifted for this). Wall seconds (perf_counter) and this process's CPU seconds
(process_time) are printed per run with the load average before it: when threads outnumber the free cores, the
BLAS and OpenMP threads spin while they wait for each other, so CPU seconds rise with the wall time. Writes
``report.md`` and ``results.json`` to --out (default ``benchmarks/results/solve-threads-<date>/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", default="2,1", help="thread counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / f"solve-threads-{datetime.date.today()}")
    args = parser.parse_args(argv)

    import torch
    from bench_reference import build_model

    import spade.solver as solver_module
    from spade.augment import AugmentConfig, augment
    from spade.images import bundled_examples, load_image
    from spade.statistics import collect_statistics
    from spade.trace import solve

    solver_module.SOLVER_CPU_THREADS = None  # the sweep's own limit lifted: each run uses the count set here
    counts = [int(t) for t in args.threads.split(",")]
    model, preprocessing = build_model(args.model)
    views = augment(load_image(bundled_examples()["cat"]), AugmentConfig(count=args.views, seed=0), preprocessing)
    stats = collect_statistics(model, views, batch_size=64)
    runs = []
    for repeat in range(args.repeat):
        for threads in counts:
            torch.set_num_threads(threads)
            load = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            solve(stats, args.sparsity)
            runs.append({"repeat": repeat, "threads": threads, "load": load,
                         "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
            r = runs[-1]
            print(f"repeat {repeat + 1}, {threads} thread(s), load {load:.1f}: wall {r['wall_s']:.2f} s, "
                  f"CPU {r['cpu_s']:.2f} s", flush=True)
    lines = [f"# Solve of {args.model} at uniform {args.sparsity}, {args.views} views, by thread count "
             f"({datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, torch {torch.__version__})", "",
             "| repeat | threads | load average (1 min) before | wall s | CPU s |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['repeat'] + 1} | {r['threads']} | {r['load']:.1f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |"
              for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"model": args.model, "views": args.views,
                                                        "sparsity": args.sparsity, "runs": runs}, indent=1) + "\n")
    print("\n".join(lines))
    return runs


if __name__ == "__main__":
    main()
