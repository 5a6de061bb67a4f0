"""Feature visualization speed: seconds per visualization at the default steps, dense model and SPADE trace.

Usage: python benchmarks/bench_featurevis.py [--device auto|cpu|cuda] [--models efficientnet_lite0,resnet50]
                                             [--steps N] [--size PX] [--threads N] [--repeat N]

Targets: efficientnet_lite0 under 60 s at the CPU default (128 steps, 224 px); resnet50 under 10 s at
512 steps on a GPU. efficientnet_lite0 uses its offline ImageNet weights and the bundled "coffee" photo
(objective: its predicted class); torchvision models use random weights when theirs are not cached (speed
does not depend on the values). The trace is the visualization default (0.95 on the late blocks; 128
augmentations on the CPU, 1024 on a GPU); its own time is reported separately. The load average is
printed with every figure: other processes on the machine slow the CPU figures down, catastrophically so
(10-100x) with torch's libgomp busy-waiting on two busy cores; run with OMP_WAIT_POLICY=PASSIVE in the
environment (it must be set before torch loads) or --threads 1 to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _model(name: str, device):
    import torch
    import torchvision

    from spade.errors import WeightsUnavailableError
    from spade.models import get_spec, load_model

    try:
        loaded = load_model(name, device=device)
        return loaded.model, loaded.spec.preprocessing, loaded.source
    except WeightsUnavailableError:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval().to(device)
        return model, get_spec(name).preprocessing, "random weights"


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=None, help="default: 128 on the CPU, 512 on a GPU")
    parser.add_argument("--size", type=int, default=None, help="default: the model's crop")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=2, help="visualizations per model (default 2)")
    parser.add_argument("--no-trace", action="store_true", help="time the dense visualization only")
    args = parser.parse_args()

    import torch

    from spade.augment import AugmentConfig
    from spade.devices import resolve_device
    from spade.featurevis import ClassLogit, FeatureVisConfig, neuron_evidence, visualization_trace, visualize
    from spade.images import bundled_examples, load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    image = load_image(bundled_examples()["coffee"])
    print(f"device {device}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {_load()}")
    for name in args.models.split(","):
        model, pre, source = _model(name, device)
        with torch.no_grad():
            predicted = int(model(pre(image).unsqueeze(0).to(device)).argmax())
        objective = ClassLogit(predicted)
        config = FeatureVisConfig(steps=args.steps, size=args.size)
        resolved = config.resolved(device, pre.crop)
        print(f"{name} ({source}); objective {objective.describe()}; {resolved.steps} steps at {resolved.size} px")
        visualize(model, objective, preprocessing=pre, config=FeatureVisConfig(steps=2, size=resolved.size))  # warm-up
        models = {"dense": model}
        if not args.no_trace:
            count = 1024 if device.type == "cuda" else 128
            sync()
            t0 = time.perf_counter()
            trace = visualization_trace(model, image, preprocessing=pre, augment=AugmentConfig(count=count))
            sync()
            print(f"  trace ({count} augmentations, late blocks 0.95): {time.perf_counter() - t0:6.1f} s   "
                  f"logit cosine {trace.logit_cosine:.3f}   {_load()}")
            models["trace"] = trace.model
        for label, m in models.items():
            times = []
            for i in range(args.repeat):
                sync()
                t0 = time.perf_counter()
                result = visualize(m, objective, preprocessing=pre, config=FeatureVisConfig(
                    steps=args.steps, size=args.size, seed=i))
                sync()
                times.append(time.perf_counter() - t0)
            print(f"  {label:<5} visualization: {statistics.median(times):6.1f} s (median of {args.repeat}: "
                  + ", ".join(f"{t:.1f}" for t in times) + f")   objective {result.curves[0, 0]:.2f} -> "
                  f"{result.final_values[0]:.2f}   {_load()}", flush=True)
            t0 = time.perf_counter()
            neuron_evidence(m, image, objective, preprocessing=pre)
            sync()
            print(f"  {label:<5} evidence (64 views + map): {time.perf_counter() - t0:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
