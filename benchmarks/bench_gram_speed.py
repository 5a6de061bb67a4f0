"""How fast the statistics pass computes its Gram matrices, per layer shape, against a plain matrix product.

Usage: python benchmarks/bench_gram_speed.py [--models resnet18,resnet50] [--views 64] [--out DIR]

For each torchvision model (random weights, torch.manual_seed(0)) over `--views` random inputs, the statistics pass
(`spade.statistics.collect_statistics`) runs once to warm up and once timed, with its two Gram functions wrapped to
time every call. Per layer shape it prints the calls, the seconds and the rate in GFLOP/s. The counts: a k x k
convolution by shifted products, 2 x 13 c^2 multiply-adds per output pixel at stride 1 and 2 x 34 c^2 at stride 2
(`add_conv_gram_by_shifts`); a pointwise layer, 2 x rows x d^2 / 2 (its upper block triangle). The total time of the
pass and of its Gram functions come last, and so does the rate of one plain float32 product of the same kind. The
report goes to `--out` (default benchmarks/results/gram-speed-<date>/report.txt).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import spade.statistics as statistics  # noqa: E402


def timed_pass(model: torch.nn.Module, views: torch.Tensor) -> tuple[float, dict[tuple, list[float]]]:
    """Seconds of one statistics pass and the seconds of each Gram call, by (kind, input shape, stride)."""
    calls: dict[tuple, list[float]] = {}
    shifts, pointwise = statistics.add_conv_gram_by_shifts, statistics.add_gram

    def timed_shifts(hessian, module, x):
        start = time.perf_counter()
        rows = shifts(hessian, module, x)
        calls.setdefault(("shifts", tuple(x.shape), module.stride[0]), []).append(time.perf_counter() - start)
        return rows

    def timed_pointwise(hessian, cols):
        start = time.perf_counter()
        pointwise(hessian, cols)
        calls.setdefault(("pointwise", tuple(cols.shape), 1), []).append(time.perf_counter() - start)

    statistics.add_conv_gram_by_shifts, statistics.add_gram = timed_shifts, timed_pointwise
    try:
        start = time.perf_counter()
        statistics.collect_statistics(model, views)
        return time.perf_counter() - start, calls
    finally:
        statistics.add_conv_gram_by_shifts, statistics.add_gram = shifts, pointwise


def flops(kind: str, shape: tuple, stride: int) -> float:
    """Floating-point operations of one Gram call (see the module docstring)."""
    if kind == "shifts":
        n, c, h, w = shape
        return 2 * (13 if stride == 1 else 34) * c * c * (h // stride) * (w // stride) * n
    _, rows, d = shape
    return rows * d * d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"gram-speed-{datetime.date.today()}"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{args.views} random views; {datetime.datetime.now():%Y-%m-%d %H:%M}; {torch.get_num_threads()} threads; "
             f"load average {os.getloadavg()[0]:.1f} at start"]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    x = torch.randn(3136, 2048)
    x.T @ x
    start = time.perf_counter()
    for _ in range(5):
        x.T @ x
    seconds = (time.perf_counter() - start) / 5
    say(f"plain float32 product 2048 x 3136 @ 3136 x 2048: {2 * 3136 * 2048**2 / seconds / 1e9:.0f} GFLOP/s")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        views = torch.randn(args.views, 3, 224, 224)
        timed_pass(model, views)  # warm-up: the forward copy is built and cached
        total, calls = timed_pass(model, views)
        say(f"{name}:")
        for (kind, shape, stride), seconds in sorted(calls.items(), key=lambda kv: -sum(kv[1])):
            rate = flops(kind, shape, stride) * len(seconds) / sum(seconds) / 1e9
            say(f"  {kind:<9} input {shape} stride {stride}: {len(seconds)} calls, {sum(seconds):.3f} s, "
                f"{rate:.0f} GFLOP/s")
        say(f"  statistics pass {total:.2f} s, of which Gram functions "
            f"{sum(sum(s) for s in calls.values()):.2f} s")
    say(f"load average {os.getloadavg()[0]:.1f} at the end")
    (out / "report.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
