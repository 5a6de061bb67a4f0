"""Several sparsity levels of one layer: solved one by one, or together (`spade.trace.solve_many`).

Usage: python benchmarks/bench_solver_levels.py [--solver obc|group|row] [--layers NAME,...] [--levels 0.2,0.4,...]
                                                [--views N] [--threads N]
The statistics of efficientnet_lite0 (offline weights) on the bundled cat photo, at --views augmentations, are
recorded once; then the chosen layers are solved at every level, one `solve` per level and one `solve_many` for all.
The exact solver ("obc") removes weights along one greedy path whatever the target, so solve_many takes the lower
levels as snapshots of the pass to the highest; the sweeps solve each level in turn either way. This is what a
profile tuning (`python -m spade benchmark tune`) asks of each group, and what a decision-keeping trace asks of every
layer (its back-off levels). Prints the seconds of both and checks that they give the same weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TUNING_GRID = "0.2,0.4,0.6,0.8,0.9,0.95,0.99"  # the authors' grid without the dense 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="obc", choices=["obc", "group", "row"])
    parser.add_argument("--layers", default="blocks.5.0.conv_pwl,blocks.6.0.conv_pwl,conv_head")
    parser.add_argument("--levels", default=TUNING_GRID)
    parser.add_argument("--views", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()

    import torch

    from spade.augment import AugmentConfig
    from spade.images import bundled_examples, load_image
    from spade.models import load_model
    from spade.solver import SolverConfig
    from spade.statistics import LayerStatistics
    from spade.trace import prepare_statistics, solve, solve_many

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("efficientnet_lite0", device="cpu")
    stats = prepare_statistics(loaded.model, load_image(bundled_examples()["cat"]),
                               preprocessing=loaded.spec.preprocessing, augment_config=AugmentConfig(count=args.views),
                               selection=loaded.spec.layer_selection)
    levels = [float(v) for v in args.levels.split(",")]
    solver = SolverConfig(mode=args.solver)
    print(f"{args.solver}, {args.views} views, {torch.get_num_threads()} threads, levels {args.levels}")
    print(f"{'layer':<24} {'shape':>12} {'one by one s':>13} {'together s':>11} {'speed-up':>9} {'same':>5}")
    for name in args.layers.split(","):
        subset = LayerStatistics(model=stats.model, layers={name: stats.layers[name]})
        t0 = time.perf_counter()
        alone = [solve(subset, level, solver).sparse_weights[name] for level in levels]
        t1 = time.perf_counter()
        together = [trace.sparse_weights[name] for trace in solve_many(subset, levels, solver)]
        t2 = time.perf_counter()
        same = all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
        shape = "x".join(str(n) for n in alone[0].shape[:2])
        print(f"{name:<24} {shape:>12} {t1 - t0:>13.1f} {t2 - t1:>11.1f} {(t1 - t0) / (t2 - t1):>8.1f}x "
              f"{'yes' if same else 'NO':>5}", flush=True)


if __name__ == "__main__":
    main()
