"""``python -m spade visualize``: feature visualization of one neuron on the dense model and on the SPADE trace.

Writes into ``--out``: ``image.png`` (the model's view of the image), ``dense.png`` / ``spade.png`` (the
visualizations), ``dense_map.png`` / ``spade_map.png`` (the neuron's map over the image, one shared colour
scale), ``dense_views.png`` / ``spade_views.png`` (the augmented views that excite it most) and
``visualize.json`` (settings, trace summary, objective values and curves).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from spade.defaults import MAX_AUGMENTATIONS, default_augmentations
from spade_cli import arguments
from spade_cli.main import add_model_arguments, check_model_arguments, load_model_from_args
from spade_cli.trace import (
    ProgressBar,
    add_trace_arguments,
    augmentation_count,
    solver_from_args,
    sparsity_from_args,
)

VISUALIZATION_METHODS = ("fourier", "maco")


def add_visualize_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize", help="visualize a neuron on the dense model and on the SPADE trace of an image",
        description="Feature visualization of one neuron (default: the predicted class) on the dense model and "
        "on the SPADE trace of IMAGE, plus the neuron's activation map and most exciting views of the image.")
    parser.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    add_model_arguments(parser)
    parser.add_argument("--neuron", default="class:PRED", metavar="SPEC",
                        help="class:PRED (default), class:INDEX, LAYER:CHANNEL (channel mean) or "
                        "LAYER:CHANNEL:Y:X (one spatial neuron); LAYER is a module name, e.g. blocks.5.0.conv_pwl")
    parser.add_argument("--steps", type=arguments.positive, default=None,
                        help="optimisation steps (default 128 on the CPU, 512 on a GPU)")
    parser.add_argument("--size", type=arguments.positive, default=None,
                        help="visualization size in pixels (default: the model's crop)")
    # the names of spade.featurevis.methods.METHOD_LABELS, written out so that building the parser imports no torch
    parser.add_argument("--method", choices=VISUALIZATION_METHODS, default=None,
                        help="fourier (Lucid-style, the default: another network recognises its pictures far more "
                        "often) or maco (phases only, under a natural amplitude spectrum)")
    add_trace_arguments(parser, sparsity_default="0.95 on the classifier alone for a class logit, on the late blocks "
                        "for a channel or neuron", purpose="visualize")
    parser.add_argument("--late-blocks", action="store_true",
                        help="a class logit's trace too at 0.95 on the late blocks (the authors' choice) instead of "
                             "the classifier alone")
    views = default_augmentations("evidence")
    parser.add_argument("--views", type=arguments.augmentations, default=views,
                        help=f"augmented views searched for the evidence, 1 to {MAX_AUGMENTATIONS} (default {views})")
    parser.add_argument("--top-k", type=arguments.positive, default=4, help="most exciting views to save (default 4)")
    parser.add_argument("--out", metavar="DIR", default="spade-visualize",
                        help="output folder (default spade-visualize)")
    parser.set_defaults(func=_run_visualize, check=lambda args: _check_visualize_arguments(parser, args))


def _check_visualize_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_model_arguments(parser, args)
    if args.late_blocks and (args.sparsity is not None or args.profile is not None):
        parser.error("--late-blocks is a sparsity of its own; leave out --sparsity and --profile")


def _views_strip(views, gap: int = 4):
    """(k, H, W, 3) float [0, 1] -> one (H, k * (W + gap) - gap, 3) uint8 image."""
    import numpy as np

    k, h, w, _ = views.shape
    strip = np.full((h, k * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i in range(k):
        strip[:, i * (w + gap):i * (w + gap) + w] = (views[i] * 255).round().astype(np.uint8)
    return strip


def _run_visualize(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from spade.augment import AugmentConfig
    from spade.featurevis import (
        DEFAULT_METHOD,
        EVIDENCE_AUGMENT,
        FeatureVisConfig,
        check_objective,
        compare_neuron,
        parse_neuron,
        visualization_trace,
    )
    from spade.images import load_image
    from spade.visualize import joint_normalize, overlay

    image = load_image(args.image)
    loaded = load_model_from_args(args)
    predicted = loaded.predict(image, k=1)[0]
    objective = parse_neuron(args.neuron, predicted=predicted.index)
    pre = loaded.spec.preprocessing
    check_objective(loaded.model, objective, loaded.to_batch(image))
    count = augmentation_count(args, loaded.device, "visualize")
    sparsity = sparsity_from_args(args, None)  # None: visualization_trace's default for the objective
    config = FeatureVisConfig(steps=args.steps, size=args.size, seed=args.seed,
                              parameterization=args.method or DEFAULT_METHOD)
    evidence_augment = replace(EVIDENCE_AUGMENT, count=args.views, seed=args.seed)
    bar = ProgressBar()
    try:
        trace = visualization_trace(loaded.model, image, preprocessing=pre,
                                    augment=AugmentConfig(count=count, seed=args.seed), sparsity=sparsity,
                                    selection=loaded.spec.layer_selection,
                                    solver=solver_from_args(args, loaded.spec.default_solver),
                                    keep_decision=args.keep_decision,
                                    objective=None if args.late_blocks else objective, progress=bar)
        result = compare_neuron(loaded.model, trace.model, image, objective, preprocessing=pre, config=config,
                                evidence_augment=evidence_augment, top_k=args.top_k,
                                feature_layer=loaded.spec.last_conv_stage, progress=bar)
    finally:
        bar.close()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense_ev, trace_ev = result.dense_evidence, result.trace_evidence
    image_u8 = (dense_ev.image * 255).round().astype("uint8")
    Image.fromarray(image_u8).save(out / "image.png")
    Image.fromarray(result.dense.image_uint8(0)).save(out / "dense.png")
    Image.fromarray(result.trace.image_uint8(0)).save(out / "spade.png")
    dense_map, trace_map, scale = joint_normalize(dense_ev.activation_map, trace_ev.activation_map, signed=True)
    Image.fromarray(overlay(image_u8, dense_map, 0.6)).save(out / "dense_map.png")
    Image.fromarray(overlay(image_u8, trace_map, 0.6)).save(out / "spade_map.png")
    Image.fromarray(_views_strip(dense_ev.views)).save(out / "dense_views.png")
    Image.fromarray(_views_strip(trace_ev.views)).save(out / "spade_views.png")

    name = objective.describe()
    if name.startswith("class "):
        name += f" ({loaded.class_name(int(name.split()[1]))})"
    report = {
        "format": "spade-visualize/1",
        "image": str(args.image),
        "model": loaded.spec.name,
        "weights": loaded.source,
        "device": str(loaded.device),
        "predicted": {"index": predicted.index, "name": predicted.name, "probability": predicted.probability},
        "neuron": args.neuron,
        "objective": name,
        "map_scale": scale,
        "trace_report": {"settings": trace.settings, "top1_agrees": trace.top1_agrees,
                         "logit_cosine": trace.logit_cosine, "params_kept": trace.params_kept,
                         "params_total": trace.params_total, "seconds": trace.seconds},
        **result.to_dict(),
        "evidence_augment": asdict(evidence_augment),
        "curves": {"dense": result.dense.curves[:, 0].tolist(), "trace": result.trace.curves[:, 0].tolist()},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "visualize.json").write_text(json.dumps(report, indent=2))
    print(f"{loaded.spec.name} on {loaded.device}; predicted {predicted.name} ({predicted.probability:.3f})")
    kept, pruned = trace.pruned_params
    print(f"neuron: {name}; trace keeps {kept:,} of {pruned:,} weights of its pruned layers, "
          f"logit cosine {trace.logit_cosine:.4f}")
    if not trace.top1_agrees:
        print(f"warning: the trace does not keep the model's top-1 class (logit cosine {trace.logit_cosine:.3f}), so "
              "its visualization may not show what the model used; try --keep-decision, a lower --sparsity or more "
              "--augmentations", file=sys.stderr)
    for label, vis, ev in (("dense", result.dense, dense_ev), ("spade", result.trace, trace_ev)):
        print(f"{label:<5} visualization: objective {vis.curves[0, 0]:.3f} -> {vis.final_values[0]:.3f} "
              f"in {vis.settings['steps']} steps ({vis.seconds:.1f}s); on the image {ev.value:.3f}")
    print(f"maps on the image: {result.evidence_note()}")
    print(f"written to {out}/: image.png, dense.png, spade.png, dense_map.png, spade_map.png, "
          "dense_views.png, spade_views.png, visualize.json")
    return 0
