"""``python -m spade explain``: saliency maps of the dense model and of its SPADE trace, side by side, with metrics.

Writes ``<out>/<method>.png`` (dense vs SPADE on one shared colour scale) for every method and
``<out>/explain.json`` with the configuration, the seeds, the predictions and every metric: rank
correlation between the two maps, insertion / deletion AUC of each map (the authors' protocol on the
dense model), and with ``--mask`` the Trojan AUC (signed, absolute, best), pointing game and mass in mask.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from spade.errors import ConfigError
from spade_cli import arguments
from spade_cli.main import add_model_arguments, check_model_arguments, load_model_from_args
from spade_cli.trace import (
    ProgressBar,
    add_trace_arguments,
    augmentation_count,
    solver_from_args,
    sparsity_from_args,
)

log = logging.getLogger(__name__)


def add_explain_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="saliency maps of a model and of its SPADE trace, with faithfulness metrics",
        description="Explain one image with saliency methods on the dense model and on its SPADE trace.")
    parser.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    add_model_arguments(parser)
    parser.add_argument("--methods", default="all",
                        help="comma-separated saliency methods or 'all' / 'paper' (default all; "
                             "e.g. saliency,lrp,integrated_gradients)")
    add_trace_arguments(parser)  # --seed also seeds the random methods
    parser.add_argument("--target", type=arguments.class_index, default=None, metavar="CLASS",
                        help="class index to explain (default: the dense model's top-1)")
    parser.add_argument("--out", metavar="DIR", default="explain_out", help="output folder (default explain_out)")
    parser.add_argument("--mask", metavar="MASK.png",
                        help="ground-truth region (white = inside), same size as IMAGE: adds Trojan AUC and "
                             "pointing game")
    parser.add_argument("--absolute", action="store_true", help="draw absolute maps instead of signed ones")
    parser.add_argument("--opacity", type=arguments.fraction, default=0.5,
                        help="map opacity over the image, 0 to 1 (default 0.5)")
    parser.add_argument("--no-curves", action="store_true", help="skip insertion/deletion (saves 2 x 201 forwards "
                                                                 "per method)")
    parser.set_defaults(func=_run_explain, check=lambda args: check_model_arguments(parser, args))


def _method_names(text: str) -> list[str]:
    from spade.saliency import METHODS, PAPER_METHODS

    if text == "all":
        return list(METHODS)
    if text == "paper":
        return list(PAPER_METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ConfigError(f"Unknown saliency method(s) {', '.join(unknown) or '(none)'}; "
                          f"choose from {', '.join(METHODS)}.")
    return names


def read_mask(path: str, image_size: tuple[int, int]):
    """The mask file as a grey ("L") PIL image of the image's size, read by `spade.images.load_image` (its pixel
    limit and checks; any side length, since the size must equal the image's)."""
    from spade.images import load_image

    mask = load_image(path, min_side=1).convert("L")
    if mask.size != image_size:
        raise ConfigError(f"The mask is {mask.size[0]}x{mask.size[1]} but the image is "
                          f"{image_size[0]}x{image_size[1]}; they must have the same size.")
    return mask


def mask_tensor(mask, preprocessing):
    """Boolean ``(crop, crop)`` tensor: the mask (`read_mask`) resized and cropped like the image (nearest
    neighbour); ConfigError when the crop keeps only one side of the region's border."""
    from torchvision.transforms import functional as TF

    nearest = dataclasses.replace(preprocessing, interpolation="nearest")
    inside = TF.pil_to_tensor(nearest.resize_crop(mask))[0] > 127
    if inside.all() or not inside.any():
        raise ConfigError("The mask must contain both white (inside) and black (outside) pixels.")
    return inside


def _map_metrics(scores) -> dict:
    """explain.json's metrics of one map (`spade.saliency.MapScores`): curve AUCs, mask scores."""
    metrics = {}
    if scores.curves is not None:
        metrics["insertion_auc"] = scores.curves.insertion_auc
        metrics["deletion_auc"] = scores.curves.deletion_auc
    if scores.mask is not None:
        auc = scores.mask.auc
        metrics["trojan_auc"] = {"signed": auc.signed, "absolute": auc.absolute, "best": auc.best}
        metrics["pointing_game"] = {"signed": scores.mask.pointing_signed, "absolute": scores.mask.pointing_absolute}
        metrics["mass_in_mask"] = scores.mask.mass_in_mask
    return metrics


def _run_explain(args: argparse.Namespace) -> int:
    import torch

    from spade.augment import AugmentConfig
    from spade.images import load_image
    from spade.saliency import METHODS, attribution_pair, settings_for
    from spade.trace import spade_trace
    from spade.visualize import comparison_png

    names = _method_names(args.methods)
    image = load_image(args.image)
    mask = read_mask(args.mask, image.size) if args.mask else None
    loaded = load_model_from_args(args)
    preprocessing = loaded.spec.preprocessing
    mask = None if mask is None else mask_tensor(mask, preprocessing)
    x = preprocessing(image).to(loaded.device)
    with torch.no_grad():
        dense_logits = loaded.model(x[None])
    target = int(dense_logits.argmax()) if args.target is None else args.target
    if target >= dense_logits.shape[1]:  # before the statistics pass
        raise ConfigError(f"--target must be a class index in [0, {dense_logits.shape[1] - 1}], got {target}.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    count = augmentation_count(args, loaded.device)
    sparsity = sparsity_from_args(args, loaded.spec.default_sparsity)
    bar = ProgressBar()
    try:
        trace = spade_trace(loaded.model, image, preprocessing=preprocessing,
                            augment=AugmentConfig(count=count, seed=args.seed), sparsity=sparsity,
                            selection=loaded.spec.layer_selection,
                            solver=solver_from_args(args, loaded.spec.default_solver),
                            keep_decision=args.keep_decision, progress=bar)
        picture = preprocessing.to_uint8(x)
        report_methods = {}
        kind = "absolute" if args.absolute else "signed"
        for name in names:
            settings = settings_for(name, layer=loaded.spec.last_conv_stage, seed=args.seed)
            pair = attribution_pair(name, loaded.model, trace, x, target, settings, progress=bar)
            png = comparison_png(picture, *pair.maps(kind), METHODS[name].label, signed=not args.absolute,
                                 opacity=args.opacity)
            (out / f"{name}.png").write_bytes(png)
            scores = pair.scores(mask, model=None if args.no_curves else loaded.model, progress=bar)
            report_methods[name] = {
                "settings": dataclasses.asdict(settings),
                "seconds": {"dense": pair.dense.seconds, "spade": pair.spade.seconds},
                "shared_scale": pair.shared_scale(kind),
                "rank_correlation_dense_vs_spade": scores.rank_correlation,
                "dense": _map_metrics(scores.dense),
                "spade": _map_metrics(scores.spade),
            }
    finally:
        bar.close()

    report = {
        "image": str(args.image),
        "model": loaded.spec.name,
        "weights": loaded.source,
        "device": str(loaded.device),
        "target": {"index": target, "name": loaded.class_name(target)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seed": args.seed,
        "map": "absolute" if args.absolute else "signed",
        "mask": args.mask,
        "trace": trace.to_dict(),
        "methods": report_methods,
    }
    (out / "explain.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"{loaded.spec.name}: target {target} ({loaded.class_name(target)}); trace "
          f"{'keeps' if trace.top1_agrees else 'CHANGES'} the top-1")
    for name, entry in report_methods.items():
        parts = [f"rank corr {entry['rank_correlation_dense_vs_spade']:.3f}"]
        for label in ("dense", "spade"):
            m = entry[label]
            if "insertion_auc" in m:
                parts.append(f"{label} ins/del {m['insertion_auc']:.3f}/{m['deletion_auc']:.3f}")
            if "trojan_auc" in m:
                parts.append(f"{label} AUC {m['trojan_auc']['best']:.3f}")
        print(f"  {name:<22} " + "; ".join(parts))
    print(f"wrote {len(report_methods)} PNG file(s) and explain.json to {out}")
    return 0
