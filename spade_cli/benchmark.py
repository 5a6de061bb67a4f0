"""``python -m spade benchmark trojan|insertion|tune|merge``: the paper's saliency benchmarks and profile tuning.

* ``trojan``: Table 1 — Trojan AUC and pointing game of every method on the dense model and its SPADE trace,
  on N samples (test photo x random crop x random trigger position) where the trigger flips the prediction.
* ``insertion``: Table 2 — insertion / deletion AUC on clean crops of the test photos.
* ``tune``: tune a per-block sparsity profile on the calibration photos and trigger (``--objective insertion``:
  on clean crops of them, for Table 2); writes a profile JSON that ``--profile FILE`` (CLI), the app and
  ``spade.sparsity.load_profile`` read.
* ``merge``: combine the shard files of a results folder and write its tables.

Results go to ``--out DIR`` as one JSON line per (sample, method) while the run goes on; a rerun with the same
settings resumes, ``--ray auto|HOST:PORT`` runs each sample as a Ray task (this machine's cores or a cluster),
``--shard i/n`` splits the samples over independent processes, and the tables (``<kind>.md``, ``.csv``, ``.json``)
are written at the end of an unsharded run or by ``merge``.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

from spade.defaults import MAX_AUGMENTATIONS, default_augmentations
from spade.errors import ConfigError
from spade_cli import arguments
from spade_cli.main import add_model_arguments, check_model_arguments, load_model_from_args
from spade_cli.trace import (
    add_augmentation_arguments,
    add_solver_arguments,
    add_trace_arguments,
    augmentation_count,
    solver_from_args,
    sparsity_from_args,
)

log = logging.getLogger(__name__)

SMOKE = {"samples": 4, "methods": "saliency,input_x_gradient", "augmentations": 16}
TUNING_OBJECTIVES = ("trojan", "insertion")
"""spade_lab.tuning.OBJECTIVES, named here so that the parser does not import torch."""
SMOKE_TUNE = {"samples": 2, "methods": "saliency", "augmentations": 16, "levels": (0.0, 0.5, 0.9)}


def shard_argument(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n (argparse type)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard; use i/n, e.g. 2/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"shard {index}/{count} does not exist; use i/n with 1 <= i <= n")
    return index, count


def _common(parser: argparse.ArgumentParser, kind: str) -> None:
    backdoored = kind in ("trojan", "tune")
    add_model_arguments(parser, "registered model (default: the registry's back-doored demo model)" if backdoored
                        else None)
    if kind in ("trojan", "tune"):
        role = "test" if kind == "trojan" else "calibration"
        parser.add_argument("--trigger", metavar="NAME|FILE.png",
                            help=f"trigger icon (heart, star, smiley, fish or an RGBA PNG; default: the model's "
                                 f"{role} back door)")
        parser.add_argument("--target", type=arguments.class_index, metavar="CLASS",
                            help=f"class the trigger switches to (default: the model's {role} back door)")
    photos = "calibration" if kind == "tune" else "test"
    parser.add_argument("--images", metavar="DIR",
                        help=f"use the images in DIR (recursive) instead of the bundled {photos} photos")
    parser.add_argument("--samples", type=arguments.positive, metavar="N",
                        help=f"number of samples (default {16 if kind == 'tune' else 200}; --smoke: "
                             f"{(SMOKE_TUNE if kind == 'tune' else SMOKE)['samples']})")
    parser.add_argument("--sample-seed", type=arguments.seed, default=1 if kind == "tune" else 0, metavar="S",
                        help=f"seed of the photo order, crops and trigger positions (default "
                             f"{1 if kind == 'tune' else 0})")
    augmentations = (f"augmented views per trace, 1 to {MAX_AUGMENTATIONS} (default "
                     f"{default_augmentations('benchmark')}, the authors' Trojan setting; --smoke: "
                     f"{SMOKE['augmentations']})")
    seed = "seed of the augmentations and of the random methods (default 0)"
    if kind == "tune":  # the sparsity is what tune searches
        add_augmentation_arguments(parser, augmentations, seed)
        add_solver_arguments(parser)
    else:
        add_trace_arguments(parser, sparsity_default="the model's, e.g. 0.5 for EfficientNet-Lite",
                            augmentations_help=augmentations, seed_help=seed)
    parser.add_argument("--batch-size", type=arguments.positive, metavar="N",
                        help="images per pass for IG, GradientShap, Occlusion, LIME and the curves (default: 8 on "
                             "the CPU, 256 on a GPU)")
    parser.add_argument("--threads", type=arguments.positive, metavar="N", help="torch CPU threads (default: torch's)")
    add_ray_arguments(parser)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--ray auto|HOST:PORT and --ray-cpus N (see spade_lab.executors)."""
    parser.add_argument("--ray", type=ray_address, metavar="auto|HOST:PORT",
                        help="run each sample as a task on Ray: 'auto' starts a Ray on this machine, HOST:PORT joins "
                             "a cluster started with 'ray start --head' (default: in this process)")
    parser.add_argument("--ray-cpus", type=arguments.positive, metavar="N",
                        help="CPUs of the Ray that --ray auto starts (default: all of this machine's)")


def ray_address(text: str) -> str:
    """argparse type of --ray: 'auto' or HOST:PORT."""
    from spade_lab.executors import RaySettings

    try:
        return RaySettings(address=text.strip()).address
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_ray_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--ray-cpus only with --ray auto, and a cluster address that answers (usage errors before anything loads)."""
    from spade_lab.executors import LOCAL, check_reachable

    if getattr(args, "ray_cpus", None) is not None and args.ray != LOCAL:
        parser.error("--ray-cpus sets the CPUs of a local Ray: use it with --ray auto")
    if getattr(args, "ray", None) not in (None, LOCAL):
        try:
            check_reachable(args.ray)
        except ConfigError as exc:
            parser.error(str(exc))


def executor_from_args(args: argparse.Namespace, loaded):
    """The executor that --ray / --ray-cpus ask for (in-process without --ray); one GPU per task on a GPU."""
    from spade_lab.executors import executor_for

    return executor_for(args.ray, cpus=args.ray_cpus, gpu=loaded.device.type == "cuda")


def add_benchmark_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="the paper's saliency benchmarks (Trojan AUC, insertion/deletion) and profile tuning",
        description="Reproduce the SPADE paper's saliency benchmarks, or tune a sparsity profile.")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    for kind, help_text in (("trojan", "Table 1: Trojan AUC and pointing game, dense vs SPADE"),
                            ("insertion", "Table 2: insertion / deletion AUC on clean images, dense vs SPADE")):
        run = sub.add_parser(kind, help=help_text, description=help_text + ".")
        _common(run, kind)
        run.add_argument("--methods", metavar="LIST",
                         help="comma-separated saliency methods, 'paper' (the ten) or 'all' (default paper; "
                              f"--smoke: {SMOKE['methods']})")
        run.add_argument("--method-profile", type=arguments.method_profile, action="append", default=[],
                         metavar="METHOD=PROFILE",
                         help="give METHOD's trace its own sparsity: a profile (built-in name, shipped stem or "
                              "JSON file, e.g. from 'benchmark tune --methods METHOD') or a uniform value; "
                              "repeatable (the authors tuned one profile per method)")
        run.add_argument("--own-profiles", action="store_true",
                         help="each method with a profile of its own for the model (spade/profiles/"
                              "<model>_<method>.json) uses it; --method-profile entries take precedence")
        run.add_argument("--shard", type=shard_argument, metavar="i/n",
                         help="score only shard i of n (1-based; merge the folder afterwards)")
        run.add_argument("--out", metavar="DIR", help=f"results folder (default benchmark_out/{kind})")
        run.add_argument("--ci", choices=("t", "bootstrap"), default="t",
                         help="95%% confidence interval: Student t (default) or seeded percentile bootstrap")
        run.add_argument("--smoke", action="store_true", help="a quick check: few samples, cheap methods")
        if kind == "trojan":
            run.add_argument("--no-flip-filter", action="store_true",
                             help="keep samples where the trigger does not flip the prediction (timing runs on a "
                                  "model without the back door)")
        else:
            run.add_argument("--steps", type=arguments.curve_steps, default=100,
                             help="points per curve, at least 2 (default 100)")
        run.set_defaults(func=_run_benchmark, kind=kind, check=lambda args, p=run: _check(p, args))

    tune = sub.add_parser("tune", help="tune a per-block sparsity profile on the calibration set",
                          description="Tune a per-block sparsity profile on calibration photos and trigger, or "
                                      "on clean calibration crops (never the test ones), and save it as a "
                                      "profile JSON.")
    _common(tune, "tune")
    tune.add_argument("--objective", choices=TUNING_OBJECTIVES, default="trojan",
                      help="what the profile maximises: trojan (Trojan AUC on the calibration back door, the "
                           "default) or insertion (insertion minus deletion AUC on clean calibration crops, for "
                           "Table 2; then the default model is the clean one)")
    tune.add_argument("--steps", type=arguments.curve_steps, default=100,
                      help="points per insertion / deletion curve with --objective insertion (default 100)")
    tune.add_argument("--methods", metavar="LIST", default=None,
                      help="methods whose mean score is maximised (default saliency,input_x_gradient)")
    tune.add_argument("--levels", type=arguments.levels, metavar="LIST",
                      help="sparsity grid, each level in [0, 1) (default 0,0.2,0.4,0.6,0.8,0.9,0.95,0.99)")
    tune.add_argument("--rounds", type=arguments.positive, default=1, help="passes over the groups (default 1)")
    tune.add_argument("--min-agreement", type=arguments.agreement, default=1.0, metavar="F",
                      help="fraction of calibration samples whose dense top-1 the trace must keep, in (0, 1] "
                           "(default 1)")
    tune.add_argument("--granularity", choices=("stage", "block"), default="stage",
                      help="tune one level per stage (default) or per block")
    tune.add_argument("--keep-decision", action="store_true",
                      help="score a sample whose trace loses the top-1 on its trace at lower levels, as the "
                           "benchmark's --keep-decision does (for a profile meant to be used with it)")
    tune.add_argument("--start", type=arguments.profile, metavar="NAME|FILE.json",
                      help="start the search from this profile instead of the dense model (e.g. the shared "
                           "profile, refined for one method): the result then scores at least as well as it on "
                           "the calibration set")
    tune.add_argument("--name", help="profile name (default <model>_tuned)")
    tune.add_argument("--out", metavar="FILE.json", help="where to write the profile (default <model>_tuned.json)")
    tune.add_argument("--smoke", action="store_true", help="a quick check: 2 samples, 3 levels, one method")
    tune.set_defaults(func=_run_tune, kind="tune", check=lambda args, p=tune: _check(p, args))

    merge = sub.add_parser("merge", help="merge the shard files of a results folder and write its tables",
                           description="Merge results*.jsonl of a benchmark folder into results.jsonl and write "
                                       "the tables.")
    merge.add_argument("folder", metavar="DIR", help="results folder (the --out of the shard runs)")
    merge.add_argument("--ci", choices=("t", "bootstrap"), default="t", help="confidence interval (default t)")
    merge.add_argument("--methods", metavar="LIST", help="tabulate only these methods (comma-separated)")
    merge.add_argument("--name", metavar="STEM", help="file name of the tables (default: the benchmark kind)")
    merge.set_defaults(func=_run_merge)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_model_arguments(parser, args)
    check_ray_arguments(parser, args)


# ----------------------------------------------------------------------------------------------------------------
class _Once(logging.Filter):
    """Let each distinct warning through once (a benchmark repeats the same per-sample warnings hundreds of times)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _quiet_repeats() -> None:
    once = _Once()
    for name in ("spade.saliency.attribution_model", "spade.damping"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Once) for f in logger.filters):
            logger.addFilter(once)


def _smoke_defaults(args: argparse.Namespace, table: dict) -> None:
    for key, value in table.items():
        if getattr(args, key, None) is None and args.smoke:
            setattr(args, key, value)


def _load(args: argparse.Namespace, default_model: str):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _quiet_repeats()
    if not args.checkpoint and not args.model:
        args.model = default_model
    return load_model_from_args(args)


def _given_trigger(args: argparse.Namespace):
    """--trigger read (a built-in name or a PNG file, `spade_lab.samples.resolve_trigger`) before the model loads:
    (label, RGBA image), or None when the model's back door gives it."""
    from spade_lab.samples import resolve_trigger

    return None if args.trigger is None else resolve_trigger(args.trigger)


def _backdoor(args: argparse.Namespace, loaded, role: str, given) -> tuple[str, object, int]:
    """(trigger label, RGBA trigger image, target class): ``given`` (`_given_trigger`) and --target, the model's
    ``role`` back door filling in what is missing."""
    from spade_lab.samples import resolve_trigger

    if given is not None and args.target is not None:
        return (*given, args.target)
    try:
        door = loaded.spec.backdoor(role)
    except ConfigError:
        raise ConfigError(f"The model {loaded.spec.name} has no known {role} back door; pass --trigger NAME "
                          "and --target CLASS.") from None
    label, image = resolve_trigger(door.trigger) if given is None else given
    return label, image, (door.target if args.target is None else args.target)


def _photos(args: argparse.Namespace, role: str):
    from spade_lab.photos import CALIBRATION_PHOTOS, TEST_PHOTOS
    from spade_lab.samples import bundled_photos, folder_photos

    if args.images:
        return folder_photos(args.images), str(args.images)
    names = CALIBRATION_PHOTOS if role == "calibration" else TEST_PHOTOS
    return bundled_photos(names, f"bundled {role} photos"), f"bundled:{','.join(names)}"


def _print_record(record: dict) -> None:
    d, s = record["dense"], record["spade"]
    if "trojan_auc" in d:
        text = (f"AUC {100 * d['trojan_auc']:5.1f} -> {100 * s['trojan_auc']:5.1f}  pointing "
                f"{int(d['pointing_game'])} -> {int(s['pointing_game'])}")
    else:
        text = (f"insertion {100 * d['insertion_auc']:5.1f} -> {100 * s['insertion_auc']:5.1f}  deletion "
                f"{100 * d['deletion_auc']:5.1f} -> {100 * s['deletion_auc']:5.1f}")
    keeps = "" if record["trace"]["top1_agrees"] else "  (trace CHANGES the top-1)"
    seconds = record["seconds"]
    print(f"{record['sample']} {record['method']:<21} {text}  [{seconds['dense']:.1f}+{seconds['spade']:.1f}s]{keeps}",
          flush=True)


def _run_benchmark(args: argparse.Namespace) -> int:
    from spade.augment import AugmentConfig
    from spade.models import default_backdoored_model
    from spade.saliency import METHODS
    from spade.sparsity import method_profiles
    from spade_lab.benchmark import BenchmarkConfig, model_identity, parse_methods, run_benchmark
    from spade_lab.samples import SampleConfig, build_samples

    kind = args.kind
    _smoke_defaults(args, SMOKE)
    methods = parse_methods(args.methods or "paper")
    method_sparsity = tuple(args.method_profile)  # read while parsing; the names are checked here
    if method_sparsity:
        parse_methods([method for method, _ in method_sparsity])
    trigger = _given_trigger(args) if kind == "trojan" else None
    photos, photos_label = _photos(args, "test")
    loaded = _load(args, default_backdoored_model() if kind == "trojan" else _default_model())
    if args.own_profiles:
        given = dict(method_sparsity)
        # every method's, not only those run now: the folder's config stays the same when methods are added later
        own = method_profiles(loaded.spec.name, METHODS)
        method_sparsity += tuple((name, profile) for name, profile in own.items() if name not in given)
    count = augmentation_count(args, loaded.device, "benchmark")
    sparsity = sparsity_from_args(args, loaded.spec.default_sparsity)
    config = BenchmarkConfig(kind=kind, methods=methods, sparsity=sparsity,
                             method_sparsity=method_sparsity, augment=AugmentConfig(count=count, seed=args.seed),
                             seed=args.seed, batch_size=args.batch_size, steps=getattr(args, "steps", 100),
                             keep_decision=args.keep_decision,
                             solver=solver_from_args(args, loaded.spec.default_solver))
    sample_config = SampleConfig(count=args.samples or 200, seed=args.sample_seed,
                                 require_flip=not getattr(args, "no_flip_filter", False))
    identity = {"model": model_identity(loaded), "images": photos_label, "samples": sample_config.identity()}
    trigger_image = target = None
    if kind == "trojan":
        trigger_label, trigger_image, target = _backdoor(args, loaded, "test", trigger)
        identity.update(trigger=trigger_label, target=target)
    out = Path(args.out or f"benchmark_out/{'smoke-' if args.smoke else ''}{kind}")
    start = time.perf_counter()
    samples = build_samples(loaded.model, loaded.spec.preprocessing, photos, sample_config,
                            trigger=trigger_image, target=target)
    share = "" if args.shard is None else f" (shard {args.shard[0]}/{args.shard[1]})"
    print(f"{kind} benchmark: {loaded.spec.name} on {loaded.device}; {len(samples.records)} samples from "
          f"{samples.candidates} candidates in {time.perf_counter() - start:.1f}s{share}; methods "
          f"{', '.join(methods)}; results in {out}", flush=True)
    with executor_from_args(args, loaded) as executor:
        if executor.name != "in-process":
            print(f"on Ray: {executor.workers} worker(s)", flush=True)
        summary = run_benchmark(loaded, samples, config, out, identity, shard=args.shard, on_record=_print_record,
                                executor=executor)
    print(f"{summary.computed} result(s) computed, {summary.skipped} already there, in {summary.seconds:.0f}s "
          f"-> {summary.path}")
    if args.shard is not None:
        print(f"when every shard is done: python -m spade benchmark merge {out}")
        return 0
    extra = {"run": {"device": str(loaded.device), "weights": str(loaded.source),
                     "requested_samples": sample_config.count,
                     "candidates": samples.candidates, "kept_fraction": len(samples.records) / samples.candidates}}
    _write_tables(out, kind, args.ci, extra=extra)
    return 0


def _default_model() -> str:
    from spade.models import DEFAULT_MODEL

    return DEFAULT_MODEL


def _write_tables(folder: Path, kind: str, ci: str, extra: dict | None = None,
                  methods: tuple[str, ...] | None = None, stem: str | None = None):
    from spade_lab.records import load_results, read_config
    from spade_lab.tables import summarize, write_tables

    config = read_config(folder)
    records = load_results(folder)  # every method the folder holds, also those of earlier runs
    if methods:
        records = [r for r in records if r["method"] in methods]
    summary = summarize(records, kind, ci=ci, seed=config.get("seed", 0))
    title = {"trojan": "Trojan saliency benchmark (the paper's Table 1)",
             "insertion": "Insertion / deletion benchmark (the paper's Table 2)"}[kind]
    paths = write_tables(summary, folder, config, title=f"{title}: {config['model']['name']}", extra=extra,
                         stem=stem)
    print()
    print(paths[0].read_text())
    print("tables written to " + ", ".join(str(p) for p in paths))


def _run_merge(args: argparse.Namespace) -> int:
    from spade_lab.benchmark import parse_methods
    from spade_lab.records import merge_folder, read_config

    folder = Path(args.folder)
    kind = read_config(folder)["kind"]
    methods = parse_methods(args.methods) if args.methods else None
    records = merge_folder(folder)
    print(f"merged {len(records)} result(s) into {folder / 'results.jsonl'}")
    _write_tables(folder, kind, args.ci, methods=methods, stem=args.name)
    return 0


def _run_tune(args: argparse.Namespace) -> int:
    from spade.augment import AugmentConfig
    from spade.models import default_backdoored_model
    from spade_lab.benchmark import model_identity, parse_methods
    from spade_lab.samples import SampleConfig, build_samples
    from spade_lab.tuning import AUTHORS_LEVELS, OBJECTIVES, TuningConfig, save_profile, tune_profile, tuning_metadata

    _smoke_defaults(args, SMOKE_TUNE)
    methods = parse_methods(args.methods or "saliency,input_x_gradient")
    levels = args.levels or AUTHORS_LEVELS
    trojan = args.objective == "trojan"
    if not trojan and (args.trigger or args.target is not None):
        raise ConfigError("--objective insertion tunes on clean crops: leave out --trigger and --target.")
    given = _given_trigger(args) if trojan else None
    photos, photos_label = _photos(args, "calibration")
    loaded = _load(args, default_backdoored_model() if trojan else _default_model())
    trigger_label = trigger_image = target = None
    if trojan:
        trigger_label, trigger_image, target = _backdoor(args, loaded, "calibration", given)
        try:
            if trigger_label == loaded.spec.backdoor("test").trigger:
                log.warning("tuning with the test trigger %s: the benchmark would no longer be held out",
                            trigger_label)
        except ConfigError:
            pass
    count = augmentation_count(args, loaded.device, "benchmark")
    config = TuningConfig(methods=methods, levels=levels, augment=AugmentConfig(count=count, seed=args.seed),
                          rounds=args.rounds, min_agreement=args.min_agreement, granularity=args.granularity,
                          seed=args.seed, batch_size=args.batch_size, keep_decision=args.keep_decision,
                          solver=solver_from_args(args, loaded.spec.default_solver), start=args.start,
                          objective=args.objective, steps=args.steps)
    sample_config = SampleConfig(count=args.samples or 16, seed=args.sample_seed)
    samples = build_samples(loaded.model, loaded.spec.preprocessing, photos, sample_config,
                            trigger=trigger_image, target=target)
    name = args.name or f"{loaded.spec.name}_tuned"
    out = Path(args.out or f"{name}.json")
    door = f", trigger {trigger_label} -> class {target}" if trojan else ", clean"
    print(f"tuning {name}: {loaded.spec.name} on {loaded.device}, {len(samples.records)} calibration samples "
          f"({photos_label}{door}), methods {', '.join(methods)}, maximising {OBJECTIVES[args.objective]}",
          flush=True)

    def step(entry: dict) -> None:
        score = "breaks the top-1" if entry["score"] is None else f"score {100 * entry['score']:.2f}"
        print(f"  {entry['group']:<14} {entry['level']:<5g} {score}  (top-1 kept {100 * entry['agreement']:.0f}%)",
              flush=True)

    with executor_from_args(args, loaded) as executor:
        result = tune_profile(loaded, samples, config, name=name, on_step=step, executor=executor)
    metadata = tuning_metadata(config, {"model": model_identity(loaded), "images": photos_label,
                                        "trigger": trigger_label, "target": target,
                                        "sample_config": sample_config.identity(),
                                        "sample_ids": [r.id for r in samples.records], "device": str(loaded.device)})
    save_profile(result, out, metadata)
    print(f"dense {OBJECTIVES[args.objective]} {100 * result.dense_score:.2f} -> traced {100 * result.score:.2f}; "
          f"top-1 kept on {100 * result.agreement:.0f}% of the calibration samples; {result.seconds:.0f}s")
    for block, level in result.profile.targets:
        print(f"  {block:<14} {level:g}")
    print(f"profile written to {out} (use it with --profile {out})")
    return 0

