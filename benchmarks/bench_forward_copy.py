"""The forward copy against the model it copies: seconds per forward pass over a batch of views.

Usage: python benchmarks/bench_forward_copy.py [--models efficientnet_lite0,resnet50] [--batch 64] [--repeats 7]
                                                [--out DIR]
Both run the same random batch (seed 0) under ``torch.inference_mode``, interleaved, after one warm-up each; the
median of the repeats is reported with the ratio, and the load average at the start and the end says whether the
machine was quiet. Registry models load as the app loads them; a torchvision model whose weights are not here
is built with random weights (nothing is downloaded). Writes ``report.md`` and ``results.json`` to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def model_for(name: str):
    """The registry's model when its weights are here, else the torchvision architecture with random weights
    (the speed of a forward pass does not depend on the values); returns (model, label)."""
    import torchvision

    from spade.errors import WeightsUnavailableError
    from spade.models import MODELS, load_model

    if name in MODELS:
        try:
            return load_model(name, device="cpu").model, name
        except WeightsUnavailableError:
            pass
    return getattr(torchvision.models, name)(weights=None).eval(), f"{name} (random weights)"


def time_pair(model, batch, repeats: int) -> dict:
    import torch

    from spade.forward_copy import forward_copy

    with torch.inference_mode(), forward_copy(model, batch[:1]) as copy:
        runs = {"original": [], "copy": []}
        for net in (model, copy):  # warm-up
            net(batch)
        for _ in range(repeats):
            for label, net in (("original", model), ("copy", copy)):
                start = time.perf_counter()
                net(batch)
                runs[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(values) for label, values in runs.items()}
    return {**{f"{k}_s": v for k, v in medians.items()}, "ratio": medians["copy"] / medians["original"],
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet50")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / f"forward-copy-{datetime.date.today()}")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    batch = torch.randn(args.batch, 3, 224, 224)
    load_start = os.getloadavg()[0]
    results = {}
    for name in args.models.split(","):
        model, label = model_for(name)
        results[label] = r = time_pair(model, batch, args.repeats)
        print(f"{label}: original {r['original_s']:.3f} s, forward copy {r['copy_s']:.3f} s per batch of {args.batch} "
              f"(copy / original = {r['ratio']:.2f})", flush=True)
    load_end = os.getloadavg()[0]
    lines = [f"# Forward copy vs original ({datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads)", "",
             f"Batch of {args.batch} random 224x224 views, median of {args.repeats} interleaved repeats. "
             f"Load average (1 min) {load_start:.1f} at the start, {load_end:.1f} at the end.", "",
             "| model | original s | forward copy s | copy / original |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {r['original_s']:.3f} | {r['copy_s']:.3f} | {r['ratio']:.2f} |" for n, r in results.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"batch": args.batch, "repeats": args.repeats,
                                                        "load": [load_start, load_end], "models": results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
