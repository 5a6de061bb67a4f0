"""Seconds per saliency method on EfficientNet-Lite0 (224 px), dense model and SPADE trace, with the paper's settings.

Usage: python benchmarks/bench_saliency.py [--device cpu|cuda|auto] [--methods a,b,...] [--image cat]
                                           [--augmentations N] [--threads N] [--repeats N]

For each method and each model (dense, trace) it prints the first call ("cold": includes building and
checking the method's attribution copy of that model) and the best of ``--repeats`` further calls
("warm": the copy is cached), plus one insertion/deletion evaluation (100 steps) of the dense map.
The trace is ``spade.trace.spade_trace`` at uniform sparsity 0.9 (its own time is printed too; the
augmentation count only changes the trace's quality, not the saliency timings).
Targets on a 2-core CPU: each single-pass gradient method < 1 s; Occlusion, LIME, GradientShap and
IntegratedGradients < 20 s each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spade.images import bundled_examples, load_image  # noqa: E402
from spade.metrics import insertion_deletion  # noqa: E402
from spade.models import load_model  # noqa: E402
from spade.saliency import METHODS  # noqa: E402

SLOW_TARGET = {"occlusion": 20.0, "lime": 20.0, "gradient_shap": 20.0, "integrated_gradients": 20.0}
NO_TARGET = {"smoothgrad"}  # many passes, not in the targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _target_text(name: str, seconds: float) -> str:
    if name in NO_TARGET:
        return "-"
    limit = SLOW_TARGET.get(name, 1.0)
    return f"< {limit:g} s {'ok' if seconds < limit else 'OVER'}"


def _make_trace(loaded, image, augmentations: int, device: str):
    from spade.augment import AugmentConfig
    from spade.trace import spade_trace

    start = time.perf_counter()
    trace = spade_trace(loaded.model, image, preprocessing=loaded.spec.preprocessing,
                        augment=AugmentConfig(count=augmentations), sparsity=0.9, device=device)
    return trace.model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--image", default="cat")
    parser.add_argument("--augmentations", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2, help="warm calls per method (1 for the slow ones)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]

    loaded = load_model("efficientnet_lite0", device=args.device)
    device = loaded.device
    image = load_image(bundled_examples()[args.image])
    x = loaded.spec.preprocessing(image).to(device)
    with torch.no_grad():
        target = int(loaded.model(x[None]).argmax())
    trace_model, trace_s = _make_trace(loaded, image, args.augmentations, args.device)
    print(f"efficientnet_lite0 on {device} ({torch.get_num_threads()} threads), image {args.image!r}, "
          f"target {target} ({loaded.class_names[target]})")
    print(f"SPADE trace (spade.trace.spade_trace, {args.augmentations} augmentations, uniform 0.9): {trace_s:.1f} s")
    print(f"{'method':<22} {'model':<6} {'cold s':>8} {'warm s':>8}  target")

    dense_maps = {}
    for name in names:
        method = METHODS[name]
        settings = method.settings(layer=loaded.spec.last_conv_stage) if method.accepts("layer") else None
        repeats = 1 if name in SLOW_TARGET or name in NO_TARGET else args.repeats
        for label, model in (("dense", loaded.model), ("trace", trace_model)):
            def run(method=method, model=model, settings=settings):
                return method.explain(model, x, target, settings)

            _sync(device)
            start = time.perf_counter()
            attribution = run()
            _sync(device)
            cold = time.perf_counter() - start
            warm = min((_timed(run, device) for _ in range(repeats)), default=cold)
            if label == "dense":
                dense_maps[name] = attribution.signed_map
            print(f"{name:<22} {label:<6} {cold:>8.2f} {warm:>8.2f}  {_target_text(name, warm)}")

    if dense_maps:
        name, saliency = next(iter(dense_maps.items()))
        seconds = _timed(lambda: insertion_deletion(loaded.model, x, saliency, target, steps=100), device)
        print(f"insertion/deletion of the dense {name} map (100 steps, 201 images, automatic batch): {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
