"""``python -m spade batch DIR --out OUT``: SPADE and saliency maps for every image of a folder (see spade_lab.batch).

Per image: ``OUT/maps/<image>.<method>.png`` (image | dense map | SPADE map); for the folder ``OUT/summary.csv`` and
``OUT/summary.json`` (prediction, whether the trace kept it, the sparsity used, the takeaway numbers per method, or
the error of an image that could not be explained). A rerun with the same settings skips the images already done;
``--ray auto|HOST:PORT`` explains the images as Ray tasks.
"""

from __future__ import annotations

import argparse

from spade.errors import ConfigError
from spade_cli import arguments
from spade_cli.benchmark import add_ray_arguments, check_ray_arguments, executor_from_args
from spade_cli.main import add_model_arguments, check_model_arguments, load_model_from_args
from spade_cli.trace import add_trace_arguments, augmentation_count, solver_from_args, sparsity_from_args

DEFAULT_METHODS = "saliency,integrated_gradients,gradcam"
"""spade_lab.batch.DEFAULT_METHODS written out: the parser is built without importing torch."""


def add_batch_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch", help="SPADE and saliency maps for every image of a folder, with a CSV / JSON summary",
        description="Explain every image of a folder (recursively) with saliency methods on the dense model and on "
                    "its SPADE trace: one PNG per image and method, summary.csv and summary.json. Resumable.")
    parser.add_argument("folder", metavar="DIR", help="folder of images (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    parser.add_argument("--out", metavar="OUT", required=True, help="output folder")
    add_model_arguments(parser)
    parser.add_argument("--methods", metavar="LIST", default=DEFAULT_METHODS,
                        help=f"comma-separated saliency methods, 'paper' or 'all' (default {DEFAULT_METHODS})")
    add_trace_arguments(parser)  # --seed also seeds the random methods
    parser.add_argument("--absolute", action="store_true", help="draw absolute maps instead of signed ones")
    parser.add_argument("--opacity", type=arguments.fraction, default=0.5,
                        help="map opacity over the image, 0 to 1 (default 0.5)")
    parser.add_argument("--threads", type=arguments.positive, metavar="N", help="torch CPU threads (default: torch's)")
    add_ray_arguments(parser)

    def check(args: argparse.Namespace) -> None:
        check_model_arguments(parser, args)
        check_ray_arguments(parser, args)

    parser.set_defaults(func=_run_batch, check=check)


def _print_record(record: dict) -> None:
    if record["status"] != "ok":
        print(f"{record['image']}: ERROR {record['error']}", flush=True)
        return
    p = record["prediction"]
    kept = "kept" if record["kept_decision"] else "CHANGED"
    moved = ", ".join(f"{m} moved {100 * v['moved']:.0f}%" for m, v in record["methods"].items()
                      if v["moved"] is not None)
    print(f"{record['image']}: {p['name'] or p['index']} ({100 * p['probability']:.0f}%), decision {kept} at "
          f"sparsity {record['used_sparsity']}; {moved}  [{record['seconds']:.1f}s]", flush=True)


def _run_batch(args: argparse.Namespace) -> int:
    import torch

    from spade.augment import AugmentConfig
    from spade_lab.batch import BatchConfig, list_images, run_batch
    from spade_lab.benchmark import model_identity, parse_methods

    methods = parse_methods(args.methods)
    names = list_images(args.folder)  # a missing or empty folder is an error before the model loads
    if not names:
        raise ConfigError(f"No images (PNG, JPEG, WebP, BMP, TIFF, GIF) in {args.folder}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model_from_args(args)
    config = BatchConfig(methods=methods, sparsity=sparsity_from_args(args, loaded.spec.default_sparsity),
                         augment=AugmentConfig(count=augmentation_count(args, loaded.device), seed=args.seed),
                         solver=solver_from_args(args, loaded.spec.default_solver),
                         keep_decision=args.keep_decision, seed=args.seed, absolute=args.absolute,
                         opacity=args.opacity)
    with executor_from_args(args, loaded) as executor:
        where = f"on Ray ({executor.workers} workers)" if executor.name != "in-process" else f"on {loaded.device}"
        print(f"batch: {len(names)} image(s) in {args.folder}, {loaded.spec.name} {where}, methods "
              f"{', '.join(methods)}; results in {args.out}", flush=True)
        summary = run_batch(loaded, args.folder, args.out, config, executor=executor,
                            identity={"model": model_identity(loaded)}, on_record=_print_record)
    print(f"{summary.explained} explained, {summary.skipped} already done, {summary.failed} failed, in "
          f"{summary.seconds:.0f}s -> {summary.folder / 'summary.csv'}, {summary.folder / 'summary.json'}")
    return 0
