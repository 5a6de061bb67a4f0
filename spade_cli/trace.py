"""``python -m spade trace``: compute a SPADE trace and print the per-layer table and predictions."""

from __future__ import annotations

import argparse
import sys

from spade.defaults import MAX_AUGMENTATIONS, default_augmentations
from spade_cli import arguments
from spade_cli.main import add_model_arguments, check_model_arguments, load_model_from_args


def add_trace_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("trace", help="compute the SPADE trace of a model for one image",
                                   description="Prune a model for one image (SPADE) and report how faithful it is.")
    parser.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    add_model_arguments(parser)
    add_trace_arguments(parser)
    parser.add_argument("--out", metavar="FILE.pt", help="save the trace (sparse weights + report)")
    parser.add_argument("--json", metavar="FILE.json", help="write the report as JSON")
    parser.set_defaults(func=_run_trace, check=lambda args: check_model_arguments(parser, args))


def add_trace_arguments(parser: argparse.ArgumentParser,
                        sparsity_default: str = "the model's, e.g. 0.5 for EfficientNet-Lite",
                        purpose: str = "trace", augmentations_help: str | None = None,
                        seed_help: str = "seed of the augmentations (default 0)") -> None:
    """The options every command that builds a trace shares: --sparsity | --profile, the solver's
    (`add_solver_arguments`), --augmentations (its default for ``purpose``, `spade.defaults`), --seed,
    --keep-decision."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=arguments.sparsity, default=None,
                        help=f"uniform target sparsity in [0, 1) (default: {sparsity_default})")
    target.add_argument("--profile", type=arguments.profile, metavar="NAME|FILE.json",
                        help="per-block sparsity profile (name or file)")
    add_solver_arguments(parser)
    add_augmentation_arguments(parser, augmentations_help or f"augmented views for the trace, 1 to "
                               f"{MAX_AUGMENTATIONS} (default {default_augmentations(purpose, 'cpu')} on the CPU, "
                               f"{default_augmentations(purpose, 'cuda')} on a GPU)", seed_help)
    parser.add_argument("--keep-decision", action="store_true",
                        help="re-solve a trace that changes the dense top-1 class at lower sparsity until it keeps "
                             "it (the ladder of spade.decision.KeepDecision; the report records the requested and "
                             "the used sparsity); not the paper's protocol")


def add_augmentation_arguments(parser: argparse.ArgumentParser, augmentations_help: str, seed_help: str) -> None:
    """--augmentations (1 to spade.defaults.MAX_AUGMENTATIONS; None: the purpose's default) and --seed (0 to
    spade.defaults.MAX_SEED, default 0)."""
    parser.add_argument("--augmentations", type=arguments.augmentations, default=None, metavar="N",
                        help=augmentations_help)
    parser.add_argument("--seed", type=arguments.seed, default=0, help=seed_help)


def add_solver_arguments(parser: argparse.ArgumentParser) -> None:
    """--sparsity-of, --solver, --damp and --refit-output. The choices and the default damping are spade.solver's
    SPARSITY_OF, SOLVERS and SolverConfig.damp, written out: the parser is built without importing torch (a test
    checks that they agree)."""
    parser.add_argument("--sparsity-of", choices=("nonzero", "all"), default="nonzero",
                        help="what a sparsity target counts: the dense weight's nonzero entries, whose zeros stay "
                             "zero (default), or every weight, as the authors' code and the benchmark results written "
                             "before this option existed (the same on layers without zeros; not on the gated demo "
                             "model's block-diagonal layers)")
    parser.add_argument("--solver", choices=("group", "row", "obc"), default=None,
                        help="how weights are chosen: group (FastSPADE, the authors' selection groups), row (each "
                             "output row its own share) or obc (the paper's exact SPADE solver, one weight at a time "
                             "per row: better reconstruction, slower; on a CPU the trace command prints a time "
                             "estimate before it starts); default: the model's (row on efficientnet_lite0, group "
                             "elsewhere; python -m spade models)")
    parser.add_argument("--damp", type=arguments.non_negative, default=0.01,
                        help="dampening added to the diagonal of each layer's Hessian, as a fraction of its mean "
                             "(default 0.01, as OBC and SparseGPT): larger values make the solver reconstruct the "
                             "dense layer less closely and prune more by weight magnitude")
    parser.add_argument("--refit-output", action="store_true",
                        help="solve the trace's classifier layer again on the trace's own features, against the "
                             "dense model's outputs, so that the errors of earlier layers do not change the decision "
                             "(spade.refit; not the paper's protocol: it kept every bundled photo's decision at 0.5 "
                             "but made the maps score worse on insertion, deletion and Trojan AUC)")


def solver_from_args(args: argparse.Namespace, default_solver: str):
    """The SolverConfig of --sparsity-of, --solver (default_solver, the model's, when not given), --damp and
    --refit-output."""
    from spade.solver import SolverConfig

    return SolverConfig(mode=args.solver or default_solver, sparsity_of=args.sparsity_of, damp=args.damp,
                        refit_output=args.refit_output)


def exact_solver_estimate(model, sparsity, views: int, selection) -> str:
    """One line before an obc run on the CPU: about how long its solve takes (`spade.obc_cost`, from the layer
    shapes and constants measured on the development machine)."""
    from spade.layer_pool import cpu_workers
    from spade.obc_cost import ObcWork, in_words, layer_work, side_by_side_seconds

    works = layer_work(model, sparsity, views, selection).values()
    work = sum(works, ObcWork())
    seconds = side_by_side_seconds(works, cpu_workers())
    return (f"exact solver (obc): {in_words(seconds)} to solve on a CPU like the development machine's "
            f"({work.fma / 1e9:.0f} G multiply-adds, estimated from the layer shapes; longer while other programs "
            f"share the CPU, and once more if --keep-decision re-solves)")


def augmentation_count(args: argparse.Namespace, device, purpose: str = "trace") -> int:
    """--augmentations, or the default for ``purpose`` on the device (`spade.defaults.default_augmentations`)."""
    return default_augmentations(purpose, device) if args.augmentations is None else args.augmentations


def sparsity_from_args(args: argparse.Namespace, default):
    """The --profile (read while parsing), else --sparsity, else `default`."""
    if args.profile is not None:
        return args.profile
    return default if args.sparsity is None else args.sparsity


class ProgressBar:
    """A one-line text progress bar on stderr: `stage [#####     ] 50%`."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = sys.stderr if stream is None else stream  # looked up now: tests swap sys.stderr
        self.width, self.stage = width, None

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self.stage and self.stage is not None:
            self.stream.write("\n")
        self.stage = stage
        filled = int(self.width * fraction)
        self.stream.write(f"\r{stage:<11} [{'#' * filled}{' ' * (self.width - filled)}] {fraction:4.0%}")
        self.stream.flush()

    def close(self) -> None:
        if self.stage is not None:
            self.stream.write("\n")


def _run_trace(args: argparse.Namespace) -> int:
    from spade.augment import AugmentConfig
    from spade.images import load_image
    from spade.trace import spade_trace

    image = load_image(args.image)
    loaded = load_model_from_args(args)
    count = augmentation_count(args, loaded.device)
    sparsity = sparsity_from_args(args, loaded.spec.default_sparsity)
    selection = loaded.spec.layer_selection
    solver = solver_from_args(args, loaded.spec.default_solver)
    if solver.mode == "obc" and loaded.device.type == "cpu":
        print(exact_solver_estimate(loaded.model, sparsity, count, selection), file=sys.stderr)
    bar = ProgressBar()
    try:
        trace = spade_trace(loaded.model, image, preprocessing=loaded.spec.preprocessing,
                            augment=AugmentConfig(count=count, seed=args.seed), sparsity=sparsity,
                            solver=solver, selection=selection,
                            keep_decision=args.keep_decision, progress=bar)
    finally:
        bar.close()
    print(f"{loaded.spec.name} on {loaded.device}, {count} augmentations, seed {args.seed}")
    print(trace.table())
    for title, pred in (("dense", trace.dense_top5), ("trace", trace.trace_top5)):
        print(f"{title} top-5:")
        for rank, p in enumerate(pred, start=1):
            print(f"  {rank}. {loaded.class_name(p.index):<30} {p.probability:.4f}")
    refit = trace.settings.get("output_refit")
    if refit:
        print(f"classifier refit ({refit['layer']}): relative error of its outputs on the image and its views "
              f"{refit['output_error_before']:.4f} before, {refit['output_error']:.4f} after")
    scale = trace.settings["sparsity_scale"]
    if scale < 1:
        print(f"the trace changed the top-1 at the requested sparsity; re-solved at {scale:g} x that sparsity")
    verdict = "same top-1" if trace.top1_agrees else "TOP-1 DIFFERS"
    print(f"{verdict}; logit cosine {trace.logit_cosine:.4f}; "
          + ", ".join(f"{k} {v:.2f}s" for k, v in trace.seconds.items()))
    if args.out:
        trace.save(args.out)
        print(f"trace saved to {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            f.write(trace.to_json())
        print(f"report written to {args.json}")
    return 0
