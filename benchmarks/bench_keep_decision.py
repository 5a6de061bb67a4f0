"""Which sparsities keep the dense decision: per bundled photo, solver and view count, on efficientnet_lite0.

Usage: python benchmarks/bench_keep_decision.py [--solvers group,row] [--views 64,128] [--photos NAME,...]
                                                [--levels 0.3,0.4,...] [--late 0.5,0.7,0.9,0.95]
                                                [--profile NAME|FILE.json ...] [--refit] [--bias-probe]
                                                [--held-out N] [--stage-probe LEVEL] [--out DIR]
For every photo the statistics are recorded once per view count (seed 0, as the app and the CLI), then every solver
solves all uniform levels, the late-blocks profiles (`spade.sparsity.late_blocks_profile`, the Neurons page's
choice) and any --profile (a tuned profile, e.g. a candidate default) in one `solve_many`. Prints, per photo: the
dense top-1 and its margin over the runner-up (a near-tie flips on the slightest change, whatever the solver), the
pattern of levels that keep the top-1 (Y) or change it (.), the highest level up to which every level keeps it, and
the logit cosine to the dense model at 0.5, and the share of --held-out fresh augmented views (seed 1, not seen by
the trace) on which the trace at 0.5 predicts the dense model's top-1 for that view. --refit solves with the
classifier refit (`spade.refit`, off by default in the app and the CLI), which fits the image and its views: the
held-out share says whether it fits more than those. --bias-probe adds, per uniform level, whether the trace would
keep the top-1 if only its classifier's bias were refitted (`bias_shift`; a probe, not part of the engine).
--stage-probe LEVEL adds, per stage of the network (blocks grouped as `spade_lab.tuning.stage_groups`), a profile
that prunes only that stage to LEVEL and one that prunes every stage but that one to LEVEL: which stages' pruning
alone changes the decision, and whether leaving any one stage dense saves it.
The photos are marked with their split (`spade_lab.photos`): defaults may be chosen on the calibration photos only;
the test photos say whether the choice holds up. Writes the table and one JSON record per run to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

UNIFORM_LEVELS = "0.3,0.4,0.5,0.6,0.7,0.8,0.9"
LATE_LEVELS = "0.5,0.7,0.9,0.95"


def held_up_to(levels: list[float], kept: list[bool]) -> float | None:
    """The highest level up to which every level (in increasing order) keeps the decision; None if the lowest fails."""
    highest = None
    for level, keeps in sorted(zip(levels, kept)):
        if not keeps:
            break
        highest = level
    return highest


def top1(model, views):
    """``model``'s top-1 class on each of ``views`` (N, 3, H, W): an (N,) tensor."""
    import torch

    with torch.inference_mode():
        return model(views).argmax(1)


def bias_shift(trace, fit, inputs, dense_weight):
    """(classes,) float64: the least-squares change of the trace's classifier bias that best matches the dense
    logits on the output fit's images (weighted as `spade.statistics.OutputFit.weights`: the un-augmented image as
    much as all views together), given the trace's own features. dense_weight: the dense classifier's (classes, d).
    A bias moves no input gradient, so a gradient method's map of a given class is the same with or without it;
    only which class is the top-1 can change."""
    from spade.refit import trace_features

    sparse_weight = trace.model.get_submodule(fit.layer).weight.detach().double()
    dense = fit.dense.double() @ dense_weight.double().T
    traced = trace_features(trace.model, fit, inputs=inputs).double() @ sparse_weight.T
    w = fit.weights.double()[:, None]
    return (w * (dense - traced)).sum(0) / w.sum()


def pattern(kept: list[bool]) -> str:
    """Y for each level that keeps the decision, . for each that changes it."""
    return "".join("Y" if k else "." for k in kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", default="group,row")
    parser.add_argument("--views", default="64,128")
    parser.add_argument("--photos", default=None, help="bundled photo names (default: all, calibration first)")
    parser.add_argument("--levels", default=UNIFORM_LEVELS)
    parser.add_argument("--late", default=LATE_LEVELS, help="targets of the late-blocks profile")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME|FILE.json",
                        help="also solve this sparsity profile (repeatable; column 'profiles', in the given order)")
    parser.add_argument("--refit", action="store_true", help="refit the classifier on each trace (spade.refit)")
    parser.add_argument("--bias-probe", action="store_true",
                        help="also: would each uniform level keep the top-1 with only the classifier's bias refitted")
    parser.add_argument("--held-out", type=int, default=32, metavar="N",
                        help="fresh views (seed 1) on which the trace at 0.5 is compared with the dense model")
    parser.add_argument("--stage-probe", type=float, default=None, metavar="LEVEL",
                        help="also solve, per stage, that stage alone at LEVEL and every other stage at LEVEL")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "keep-decision")
    args = parser.parse_args()

    import torch

    from spade.augment import AugmentConfig, augment
    from spade.models import load_model
    from spade.solver import SolverConfig
    from spade.sparsity import SparsityProfile, late_blocks_profile, load_profile
    from spade.trace import prepare_statistics, solve_many
    from spade_lab.photos import CALIBRATION_PHOTOS, TEST_PHOTOS, load_photos
    from spade_lab.tuning import stage_groups

    names = args.photos.split(",") if args.photos else [*CALIBRATION_PHOTOS, *TEST_PHOTOS]
    split = {**dict.fromkeys(CALIBRATION_PHOTOS, "calibration"), **dict.fromkeys(TEST_PHOTOS, "test")}
    uniform = [float(v) for v in args.levels.split(",")]
    late_targets = [float(v) for v in args.late.split(",")]
    loaded = load_model("efficientnet_lite0", device="cpu")
    late = [late_blocks_profile(loaded.model, target, selection=loaded.spec.layer_selection) for target in late_targets]
    profiles = [load_profile(name) for name in args.profile]
    if args.stage_probe is not None:
        level = args.stage_probe
        stages = stage_groups(loaded.model, loaded.spec.layer_selection)
        profiles += [SparsityProfile(f"only {stage}", tuple((b, level) for b in blocks))
                     for stage, blocks in stages.items()]
        profiles += [SparsityProfile(f"all but {stage}", tuple((b, 0.0) for b in blocks), default=level)
                     for stage, blocks in stages.items()]
    photos = load_photos(tuple(names))
    width = max(8, len(profiles))  # of the profiles' pattern column
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    header = (f"efficientnet_lite0 (offline), seed 0, {'classifier refit, ' if args.refit else ''}"
              f"{torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f} at start, {started:%Y-%m-%d %H:%M} UTC")
    lines = [header, f"uniform levels {args.levels}; late-blocks targets {args.late}"
                     f"{'; profiles ' + ', '.join(p.name for p in profiles) if profiles else ''}", "",
             f"{'photo':<13} {'split':<11} {'dense top-1':<18} {'margin':>6} {'solver':<6} {'views':>5} "
             f"{'uniform':<9} {'holds to':>8} {'cos@0.5':>7} {'late':<6} {'holds to':>8} {'profiles':<{width}} "
             f"{'held-out':>8} {'s':>5}"]
    print("\n".join(lines), flush=True)
    records = []
    for name in names:
        image = photos[name]
        top = loaded.predict(image, k=2)
        margin = top[0].probability - top[1].probability
        held_out = augment(image, AugmentConfig(count=args.held_out, seed=1), loaded.spec.preprocessing)
        dense_held = top1(loaded.model, held_out)
        for views in (int(v) for v in args.views.split(",")):
            stats = prepare_statistics(loaded.model, image, preprocessing=loaded.spec.preprocessing,
                                       augment_config=AugmentConfig(count=views, seed=0),
                                       selection=loaded.spec.layer_selection)
            fit_inputs = stats.output_fit.inputs() if args.bias_probe else None  # the views, once for all solvers
            for solver in args.solvers.split(","):
                t0 = time.perf_counter()
                traces = solve_many(stats, [*uniform, *late, *profiles],
                                    SolverConfig(mode=solver, refit_output=args.refit))
                seconds = time.perf_counter() - t0
                half = traces[uniform.index(0.5)] if 0.5 in uniform else None
                agree = None if half is None else top1(half.model, held_out) == dense_held
                held = float("nan") if agree is None else float(agree.float().mean())
                kept = [trace.top1_agrees for trace in traces]
                ends = (len(uniform), len(uniform) + len(late))
                kept_uniform, kept_late, kept_profiles = kept[:ends[0]], kept[ends[0]:ends[1]], kept[ends[1]:]
                cosine = float("nan") if half is None else half.logit_cosine
                kept_bias = []
                if args.bias_probe:
                    fit, dense_top = stats.output_fit, int(stats.reference_logits.argmax())
                    dense_weight = loaded.model.get_submodule(fit.layer).weight.detach()
                    kept_bias = [int((trace.trace_logits[0].double() + bias_shift(trace, fit, fit_inputs, dense_weight))
                                     .argmax()) == dense_top for trace in traces[:len(uniform)]]
                record = {"photo": name, "split": split.get(name, "other"), "dense_top1": top[0].name,
                          "dense_probability": top[0].probability, "margin": margin, "solver": solver,
                          "views": views, "uniform": dict(zip(uniform, kept_uniform)),
                          "late_blocks": dict(zip(late_targets, kept_late)),
                          "uniform_holds_to": held_up_to(uniform, kept_uniform),
                          "uniform_bias_refitted": dict(zip(uniform, kept_bias)) if args.bias_probe else None,
                          "late_holds_to": held_up_to(late_targets, kept_late),
                          "profiles": {p.name: k for p, k in zip(profiles, kept_profiles)},
                          "profile_logit_cosine": {p.name: t.logit_cosine for p, t in zip(profiles, traces[ends[1]:])},
                          "logit_cosine_at_0.5": cosine, "held_out_agreement_at_0.5": held,
                          "refit": args.refit, "solve_seconds": seconds}
                records.append(record)
                line = (f"{name:<13} {record['split']:<11} {top[0].name[:18]:<18} {margin:>6.3f} {solver:<6} "
                        f"{views:>5} {pattern(kept_uniform):<9} {record['uniform_holds_to'] or '-':>8} {cosine:>7.3f} "
                        f"{pattern(kept_late):<6} {record['late_holds_to'] or '-':>8} "
                        f"{pattern(kept_profiles):<{width}} {held:>8.2f} {seconds:>5.1f}")
                if kept_bias:
                    line += f"  bias refitted {pattern(kept_bias)}"
                lines.append(line)
                print(line, flush=True)
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(lines[-1])
    (args.out / "table.txt").write_text("\n".join(lines) + "\n")
    (args.out / "records.json").write_text(json.dumps({"header": header, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
