"""Feature visualization speed: seconds per visualization at the default steps, dense model and SPADE trace.

Usage: python benchmarks/bench_featurevis.py [--device auto|cpu|cuda] [--models efficientnet_lite0,resnet50]
                                             [--steps N] [--size PX] [--threads N] [--repeat N] [--page]

--page times the Neurons page's default run end to end instead (efficientnet_lite0, the bundled cat, its
predicted class; issue #37's target on the CPU: 30 s): the class's visualization trace (the classifier alone at
0.95, backed off until it keeps the top-1; the model's solver), both pictures side by side and, in the same run,
one after the other, and the evidence on the image.

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
    parser.add_argument("--page", action="store_true", help="the Neurons page's default run, end to end")
    args = parser.parse_args()
    if args.page:
        return page(args)

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


def page(args: argparse.Namespace) -> None:
    """The Neurons page's default run on the cat, timed stage by stage (see the module docstring)."""
    import torch

    from spade.augment import AugmentConfig
    from spade.defaults import default_augmentations
    from spade.featurevis import ClassLogit, FeatureVisConfig, neuron_evidence, visualization_trace
    from spade.featurevis.evidence import EVIDENCE_AUGMENT
    from spade.featurevis.side_by_side import visualize_each
    from spade.images import bundled_examples, load_image
    from spade.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("efficientnet_lite0", device=args.device)
    device, pre = loaded.device, loaded.preprocessing
    image = load_image(bundled_examples()["cat"])
    objective = ClassLogit(loaded.predict(image, k=1)[0].index)
    config = FeatureVisConfig(steps=args.steps, size=args.size)
    print(f"Neurons page default on {device}, torch threads {torch.get_num_threads()}, {_load()}; "
          f"{objective.describe()}; {config.resolved(device, pre.crop).steps} steps")
    visualize_each({"dense": loaded.model}, objective, preprocessing=pre, config=FeatureVisConfig(steps=2))  # warm-up
    for repeat in range(args.repeat):
        t0 = time.perf_counter()
        trace = visualization_trace(loaded.model, image, preprocessing=pre, objective=objective,
                                    augment=AugmentConfig(count=default_augmentations("visualize", device)),
                                    selection=loaded.spec.layer_selection, solver=loaded.spec.solver,
                                    keep_decision=True)
        t_trace = time.perf_counter() - t0
        models = {"dense": loaded.model, "trace": trace.model}
        t0 = time.perf_counter()
        visualize_each(models, objective, preprocessing=pre, config=config)
        t_side = time.perf_counter() - t0
        t0 = time.perf_counter()
        for m in models.values():
            neuron_evidence(m, image, objective, preprocessing=pre, augment_config=EVIDENCE_AUGMENT,
                            feature_layer=loaded.spec.last_conv_stage)
        t_evidence = time.perf_counter() - t0
        t0 = time.perf_counter()
        visualize_each(models, objective, preprocessing=pre, config=config, workers=1)
        t_sequential = time.perf_counter() - t0
        total = t_trace + t_side + t_evidence
        scale = trace.settings.get("sparsity_scale")
        print(f"  repeat {repeat + 1}: trace {t_trace:.1f} s (at {scale:.2f} x the requested sparsity)"
              f" + both pictures side by side {t_side:.1f} s + evidence {t_evidence:.1f} s"
              f" = {total:.1f} s end to end; the pictures one after the other: {t_sequential:.1f} s"
              f" ({t_sequential / t_side:.2f}x the side-by-side time)   {_load()}", flush=True)


if __name__ == "__main__":
    main()
