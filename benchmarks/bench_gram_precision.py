"""Would bfloat16 Gram products make the statistics pass faster at no cost in error? A what-if, not a code path.

Usage: python benchmarks/bench_gram_precision.py [--model resnet18] [--views 64] [--sparsity 0.9] [--out DIR]

On CPUs with bfloat16 instructions, bfloat16 matrix products are several times faster than float32 ones, but
PyTorch's CPU kernels return them rounded to bfloat16. This script (1) times one Gram-sized product in both dtypes,
(2) collects the statistics of a random-weight torchvision model (torch.manual_seed(0)) over `--views` augmented
views of the bundled cat with float32 products (the engine) and with bfloat16 products (the engine's functions
patched for the run, then restored), and (3) solves both at uniform `--sparsity` with the default solver and scores
every layer on one float64 Gram matrix: mean relative error, how many layers needed extra dampening (statistics that
are no longer positive definite), and the largest relative difference of a Gram matrix from the float64 one.
The report goes to `--out` (default benchmarks/results/gram-precision-<date>/report.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import spade.statistics as statistics  # noqa: E402
from spade.augment import AugmentConfig, augment  # noqa: E402
from spade.images import bundled_examples, load_image  # noqa: E402
from spade.preprocessing import Preprocessing  # noqa: E402
from spade.solver import SolverConfig, reconstruction_error, solver_for  # noqa: E402


def product_seconds(dtype: torch.dtype, rows: int = 3136, width: int = 2048, repeat: int = 5) -> float:
    """Seconds of one (width x rows) @ (rows x width) product in `dtype`."""
    x = torch.randn(rows, width).to(dtype)
    x.T @ x
    start = time.perf_counter()
    for _ in range(repeat):
        x.T @ x
    return (time.perf_counter() - start) / repeat


@contextlib.contextmanager
def bfloat16_products():
    """Inside the block the statistics functions multiply in bfloat16 and accumulate the results in float32."""
    row_products, add_gram, shifts = statistics._row_products, statistics.add_gram, statistics.add_conv_gram_by_shifts

    def row_products_bf16(first, second):
        return row_products(first.bfloat16(), second.bfloat16()).float()

    def add_gram_bf16(hessian, cols):
        cols = cols.bfloat16()
        hessian += torch.bmm(cols.transpose(1, 2), cols).float()

    def shifts_bf16(hessian, module, x):
        return shifts(hessian, module, x.bfloat16().float())  # the same rounding of the inputs

    statistics._row_products, statistics.add_gram = row_products_bf16, add_gram_bf16
    statistics.add_conv_gram_by_shifts = shifts_bf16
    try:
        yield
    finally:
        statistics._row_products, statistics.add_gram = row_products, add_gram
        statistics.add_conv_gram_by_shifts = shifts


class WarningCount(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += "dampening raised" in record.getMessage()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"gram-precision-{datetime.date.today()}"
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now()
    lines = [f"{args.model}, {args.views} views of the cat, uniform {args.sparsity}; {now:%Y-%m-%d %H:%M}; "
             f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at start"]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    for dtype in (torch.float32, torch.bfloat16):
        say(f"one 2048 x 3136 Gram product in {dtype}: {product_seconds(dtype) * 1000:.1f} ms")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    pre = Preprocessing(resize=256, crop=224)
    views = augment(load_image(bundled_examples()["cat"]), AugmentConfig(count=args.views, seed=0), pre)
    exact = statistics.collect_statistics(model, views, dtype=torch.float64)
    modules = dict(model.named_modules())
    counter = WarningCount()
    logging.getLogger("spade.damping").addHandler(counter)
    for label, context in (("float32", contextlib.nullcontext), ("bfloat16", bfloat16_products)):
        with context():
            start = time.perf_counter()
            stats = statistics.collect_statistics(model, views)
            seconds = time.perf_counter() - start
        counter.count = 0
        errors, gram_diff = [], 0.0
        for name, stat in stats.layers.items():
            weight = modules[name].weight.detach()
            rows = weight.reshape(weight.shape[0], -1)
            group = 1 if weight.dim() == 2 else weight.shape[2] * weight.shape[3]
            sparse = solver_for(SolverConfig()).prune(rows, stat.hessian[0], args.sparsity, group).weight
            reference = exact.layers[name].hessian[0]
            errors.append(reconstruction_error(rows, sparse, reference))
            gram_diff = max(gram_diff, float((stat.hessian[0].double() - reference).norm() / reference.norm()))
        say(f"{label} products: statistics {seconds:.2f} s, mean relative error {sum(errors) / len(errors):.4f}, "
            f"layers needing extra dampening {counter.count} of {len(errors)}, largest relative Gram difference "
            f"{gram_diff:.1e}")
    say(f"load average {os.getloadavg()[0]:.1f} at the end")
    (out / "report.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
