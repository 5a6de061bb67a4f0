"""Command line interface: ``python -m spade <command> ...``.

Each sub-command registers itself with a function ``add_<name>_parser(subparsers)`` that adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit code). To add a command, write such a
function and append it to ``COMMANDS``. Every option's value is range-checked while the arguments are parsed
(the types of `spade_cli.arguments`) or by the command's ``check``, before any model is loaded. Errors of the
library's own types (SpadeError) are printed as ``error: <message>`` on stderr with exit code 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from spade.errors import SpadeError
from spade_cli import arguments

EXIT_USAGE = 2


def add_model_arguments(parser: argparse.ArgumentParser, model_help: str | None = None) -> None:
    """The shared ``--model | --checkpoint FILE --arch NAME``, ``--device`` and ``--download`` options.

    Building the parser imports no torch, so ``--help`` and argument errors are instant.
    """
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="NAME", help=model_help or "registered model (default: "
                        "efficientnet_lite0; list: python -m spade models)")
    source.add_argument("--checkpoint", metavar="FILE", help="your own checkpoint (state dict or TorchScript)")
    parser.add_argument("--arch", metavar="NAME", help="architecture of --checkpoint (a registered model name)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--download", action="store_true", help="allow downloading torchvision weights missing from the hub cache"
    )


def load_model_from_args(args: argparse.Namespace):
    """The LoadedModel chosen by add_model_arguments' options."""
    from spade.models import DEFAULT_MODEL, load_checkpoint, load_model

    if args.checkpoint:
        return load_checkpoint(args.checkpoint, args.arch, device=args.device)
    return load_model(args.model or DEFAULT_MODEL, device=args.device, download=args.download)


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.checkpoint and not args.arch:
        parser.error("--checkpoint needs --arch NAME (the architecture it was trained with)")
    if args.arch and not args.checkpoint:
        parser.error("--arch is only used with --checkpoint; use --model NAME for a registered model")


# --------------------------------------------------------------------------------------------------------------
def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="print a classifier's top classes for an image", description="Classify one image."
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    add_model_arguments(parser)
    parser.add_argument("-k", "--top", type=arguments.positive, default=5, metavar="K",
                        help="how many classes to print (default 5)")
    parser.set_defaults(func=_run_predict, check=lambda args: check_model_arguments(parser, args))


def _run_predict(args: argparse.Namespace) -> int:
    from spade.images import load_image

    image = load_image(args.image)
    loaded = load_model_from_args(args)
    print(f"{loaded.spec.name} on {loaded.device} (weights: {loaded.source})")
    for rank, p in enumerate(loaded.predict(image, k=args.top), start=1):
        print(f"{rank:>2}. {p.name:<32} {p.probability:7.4f}  (class {p.index})")
    return 0


def add_models_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the registered models", description="List the models.")
    parser.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from spade.models import MODELS

    for name, spec in MODELS.items():
        state = "available" if spec.weights_available() else "needs weights"
        print(f"{name:<20} {state:<14} {spec.description}")
    return 0


def _lazy(module: str, name: str) -> Callable[[argparse._SubParsersAction], None]:
    """A sub-command defined in its own module (imported when the parser is built)."""

    def add(subparsers: argparse._SubParsersAction) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(subparsers)

    return add


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_predict_parser,
    add_models_parser,
    _lazy("spade_cli.trace", "add_trace_parser"),
    _lazy("spade_cli.explain", "add_explain_parser"),
    _lazy("spade_cli.visualize", "add_visualize_parser"),
    _lazy("spade_cli.benchmark", "add_benchmark_parser"),
    _lazy("spade_cli.batch", "add_batch_parser"),
]


# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spade", description="SPADE Explorer: sparse per-sample traces of image classifiers."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    check = getattr(args, "check", None)  # optional per-command validation; exits 2 with usage on misuse
    if check is not None:
        check(args)
    try:
        return int(args.func(args) or 0)
    except SpadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
