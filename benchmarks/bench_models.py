"""Load time and single-image latency of every model whose weights are available offline.

Usage: python benchmarks/bench_models.py [--runs N] [--models a,b,...]
Prints one row per (model, device): load time (first and median of 3 loads), end-to-end predict latency on a
PIL image (preprocessing + forward + top-5), and forward-only latency on a prepared batch of one; medians of
--runs runs after warm-up. CPU always, CUDA when present.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spade.images import bundled_examples, load_image  # noqa: E402
from spade.models import available_models, load_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, runs: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench(name: str, device: str, runs: int, image) -> str:
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        loaded = load_model(name, device=device)
        _sync(loaded.device)
        loads.append(time.perf_counter() - start)
    predict_ms = _median_ms(lambda: loaded.predict(image, k=5), runs, loaded.device)
    x = loaded.to_batch(image)

    def forward():
        with torch.no_grad():
            loaded.model(x)

    forward_ms = _median_ms(forward, runs, loaded.device)
    crop = loaded.spec.preprocessing.crop
    return (f"{name:<20} {str(loaded.device):<7} {crop:>4} {loads[0]:>9.2f} {statistics.median(loads):>10.2f} "
            f"{predict_ms:>11.1f} {forward_ms:>11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--models", default="", help="comma-separated names (default: all available offline)")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n] or available_models()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    image = load_image(bundled_examples()["cat"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    print(f"{'model':<20} {'device':<7} {'px':>4} {'load 1st s':>9} {'load med s':>10} "
          f"{'predict ms':>11} {'forward ms':>11}")
    for device in devices:
        for name in names:
            print(bench(name, device, args.runs, image), flush=True)


if __name__ == "__main__":
    main()
