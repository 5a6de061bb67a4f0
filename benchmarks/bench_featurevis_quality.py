"""Are neuron visualizations readable, and does SPADE's show the image's facet? Judged by another network.

Usage: python benchmarks/bench_featurevis_quality.py [--model efficientnet_lite0] [--judge efficientnet_lite2]
            [--methods maco,fourier] [--classes 50] [--class-offset 0] [--photos cat,coffee,flower,china]
            [--per-photo 10] [--trace decision,paper,head] [--steps N] [--views N] [--damp D]
            [--device auto] [--out DIR]

*Recognisable*: for --classes ImageNet classes spread evenly over the 1000 (shifted by --class-offset: calibration
runs use classes the test run does not; --classes 0 skips this part), the class-logit visualization of the
dense model is in the judge's top-5 for that class (rate per method; issue target: >= 60 % for the better one).
*Faithful to the image's facet*: for every photo and each of its --per-photo top dense classes, the visualization of
that class on the photo's SPADE trace (`spade.featurevis.visualization_trace`: the authors' late blocks at 0.95,
with --trace decision backed off until it keeps the decision, as the app's default; with --trace paper kept at 0.95
as in the paper; with --trace head only the classifier at 0.95, head-<t> at t, backed off like decision; several:
each reported) and on the dense model are compared with the photo in the judge's penultimate features (the input
of its last Linear layer, cosine; the measure is `spade.featurevis.judge`); the pair counts for SPADE when the
trace's picture is closer (issue target: SPADE closer on >= 70 % of at least 40 pairs). The photos default to the
held-out test photos (`spade_lab.photos.TEST_PHOTOS`; calibration runs use `CALIBRATION_PHOTOS`).
Every per-class and per-pair number is written to DIR/records.json.
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


TRACES = ("decision", "paper")
"""The late-blocks variants; the classifier-only ones are ``head`` and ``head-<target>`` (`head_target`)."""


def head_target(trace: str, default: float) -> float | None:
    """The classifier's target of a classifier-only variant: ``default`` for ``head``, t for ``head-<t>`` with t in
    (0, 1); None for any other name."""
    if trace == "head":
        return default
    name, _, value = trace.partition("-")
    try:
        target = float(value) if name == "head" else None
    except ValueError:
        return None
    return target if target is not None and 0 < target < 1 else None


def spread_classes(count: int, total: int = 1000) -> list[int]:
    """``count`` class indices spread evenly over ``total`` (the first is 0)."""
    return [round(i * total / count) for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--judge", default="efficientnet_lite2")
    parser.add_argument("--methods", default="maco,fourier", help="parameterizations to compare")
    parser.add_argument("--classes", type=int, default=50, help="0: skip the recognisable part")
    parser.add_argument("--class-offset", type=int, default=0, help="added to every class (calibration runs)")
    parser.add_argument("--photos", default=None, help="bundled photo names or image files (default: the test photos)")
    parser.add_argument("--per-photo", type=int, default=10,
                        help="top dense classes visualized per photo (0: skip the faithful part)")
    parser.add_argument("--trace", default="decision",
                        help="comma list of decision (back off from 0.95 until the trace keeps the top-1 class), "
                             "paper (0.95) and head (only the classifier at 0.95, backed off as decision); several "
                             "share one photo's statistics and dense pictures")
    parser.add_argument("--solver", default="group", help="the traces' solver (the runs before 2026-12-07: group)")
    parser.add_argument("--refit", action="store_true",
                        help="refit each trace's classifier on its own features (spade.refit; off by default, "
                             "and the Neurons page does not use it)")
    parser.add_argument("--damp", type=float, default=None,
                        help="the solver's damping, a fraction of the mean Hessian diagonal (default: SolverConfig's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the device's)")
    parser.add_argument("--views", type=int, default=None, help="augmented views of each trace")
    parser.add_argument("--crops", type=int, default=0, help="MACO's random crops per step (0: the whole image)")
    parser.add_argument("--crop-size", default="0.4,0.8", help="min,max crop side as a fraction of the image side")
    parser.add_argument("--crop-noise", type=float, default=0.05, help="noise added to each crop")
    parser.add_argument("--no-transforms", action="store_true", help="no Lucid transforms (pad, jitter, rotate)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's crop)")
    parser.add_argument("--batch", type=int, default=10, help="visualizations optimised together")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    from spade.augment import AugmentConfig
    from spade.defaults import default_augmentations
    from spade.featurevis import ClassLogit, CropsConfig, FeatureVisConfig, TransformConfig, visualize
    from spade.featurevis.compare import VISUALIZATION_TARGET, visualization_request
    from spade.featurevis.judge import faithful_pairs, judge_outputs, judge_pictures, recognised
    from spade.models import load_model
    from spade.solver import SolverConfig
    from spade.sparsity import classifier_profile
    from spade.trace import prepare_statistics, solve_keeping_decision
    from spade_lab.photos import TEST_PHOTOS, load_photos

    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, device=args.device)
    judge = load_model(args.judge, device=loaded.device)
    device = loaded.device
    methods = args.methods.split(",")
    traces = args.trace.split(",")
    if any(t not in TRACES and head_target(t, 0.95) is None for t in traces):
        parser.error(f"--trace takes {', '.join(TRACES)}, head or head-<target in (0, 1)>, got {args.trace}")
    variants = [f"{method}/{trace}" for method in methods for trace in traces]
    solver = SolverConfig(mode=args.solver, refit_output=args.refit,
                          **({} if args.damp is None else {"damp": args.damp}))
    stamp = datetime.datetime.now(datetime.UTC)
    out = args.out or ROOT / "benchmarks" / "results" / f"featurevis-{stamp:%Y-%m-%d}"
    out.mkdir(parents=True, exist_ok=True)

    def judge_photo(image) -> torch.Tensor:
        return judge_outputs(judge.model, judge.preprocessing(image).unsqueeze(0))[1]

    def judge_drawn(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return judge_pictures(judge.model, judge.spec.preprocessing, images)

    def draw(model, classes: list[int], method: str):
        config = FeatureVisConfig(steps=args.steps, parameterization=method, seed=0, lr=args.lr, size=args.size,
                                  transforms=None if args.no_transforms else TransformConfig(), crops=crops)
        images = []
        for start in range(0, len(classes), args.batch):
            chunk = [ClassLogit(c) for c in classes[start:start + args.batch]]
            images.append(visualize(model, chunk, preprocessing=loaded.spec.preprocessing, config=config).images)
        return np.concatenate(images)

    low, high = (float(v) for v in args.crop_size.split(","))
    crops = CropsConfig(args.crops, (low, high), noise=args.crop_noise) if args.crops else None
    header = (f"{args.model} judged by {args.judge} on {device}; {stamp:%Y-%m-%d %H:%M} UTC; load average "
              f"{os.getloadavg()[0]:.1f} at start; steps {args.steps or 'device default'}; lr {args.lr or 'default'}; "
              f"trace {args.trace}; solver {args.solver}, damping {solver.damp:g}"
              f"{' with classifier refit' if args.refit else ''}; "
              f"crops {crops}; transforms {not args.no_transforms}; size {args.size or 'default'}")
    print(header, flush=True)
    records: dict = {"header": header, "recognisable": {}, "faithful": {}}
    classes = [(c + args.class_offset) % 1000 for c in spread_classes(args.classes)]
    lines = [header, "", f"Recognisable: dense class-logit visualizations in {args.judge}'s top-5 ({len(classes)} "
             "classes spread over ImageNet)"]
    for method in methods if classes else ():
        t0 = time.perf_counter()
        hits: list[bool] = []
        for start in range(0, len(classes), args.batch):  # saved after each batch: a run cut short keeps its part
            chunk = classes[start:start + args.batch]
            logits, _ = judge_drawn(draw(loaded.model, chunk, method))
            hits += recognised(logits, chunk, k=5)
            records["recognisable"][method] = {"classes": classes[:len(hits)], "hits": hits,
                                               "seconds": time.perf_counter() - t0}
            (out / "records.json").write_text(json.dumps(records, indent=1) + "\n")
            print(f"  {method}: {sum(hits)}/{len(hits)} so far", flush=True)
        lines.append(f"  {method:<8} {sum(hits)}/{len(hits)} = {100 * sum(hits) / len(hits):.0f} %  "
                     f"({time.perf_counter() - t0:.0f} s)")
        print(lines[-1], flush=True)
        (out / "table.txt").write_text("\n".join(lines) + "\n")

    names = tuple(args.photos.split(",")) if args.photos else TEST_PHOTOS
    photos = load_photos(names)
    faithful_title = ["", f"Faithful: SPADE visualization closer to the photo than the dense one ({args.judge} "
                      "penultimate features, cosine), top dense classes of each photo"]
    views = args.views or default_augmentations("visualize", device)
    records["faithful"] = {variant: [] for variant in variants}

    def save(done: list[str], final: bool) -> None:
        """Write table.txt and records.json with everything measured so far (a run cut short keeps its part)."""
        table = lines + faithful_title
        for variant in variants:
            pairs = records["faithful"][variant]
            closer = sum(p["spade_cosine"] > p["dense_cosine"] for p in pairs)
            table.append(f"  {variant:<17} SPADE closer on {closer}/{len(pairs)} = "
                         f"{100 * closer / max(len(pairs), 1):.0f} % of pairs")
        table.append(f"photos done: {', '.join(done) or 'none'} of {', '.join(photos)}"
                     + ("" if final else " (run still going or cut short)"))
        table.append(f"load average {os.getloadavg()[0]:.1f} at {'the end' if final else 'the last write'}")
        (out / "table.txt").write_text("\n".join(table) + "\n")
        (out / "records.json").write_text(json.dumps(records, indent=1) + "\n")

    if args.per_photo <= 0:
        print(f"written to {out}")
        return
    save([], False)
    done: list[str] = []
    for name, image in photos.items():
        # one statistics pass per photo; each trace variant is solved from it and shared by the methods
        stats = prepare_statistics(loaded.model, image, preprocessing=loaded.spec.preprocessing,
                                   augment_config=AugmentConfig(count=views, seed=0),
                                   selection=loaded.spec.layer_selection)
        solved, cache = {}, {}  # the cache: "decision" starts from the 0.95 trace "paper" solved
        for trace in traces:
            requested, decision = visualization_request(loaded.model, None, trace != "paper",
                                                        loaded.spec.layer_selection)
            target = head_target(trace, VISUALIZATION_TARGET)
            if target is not None:
                requested = classifier_profile(loaded.model, target, selection=loaded.spec.layer_selection)
            solved[trace] = solve_keeping_decision(stats, requested, solver, None, decision=decision,
                                                   cache=cache).trace
        top = [p.index for p in loaded.predict(image, k=args.per_photo)]
        photo_features = judge_photo(image)
        for method in methods:
            dense_features = judge_drawn(draw(loaded.model, top, method))[1]
            for trace, spade in solved.items():
                pairs = faithful_pairs(dense_features, judge_drawn(draw(spade.model, top, method))[1], photo_features)
                for index, pair in zip(top, pairs):
                    records["faithful"][f"{method}/{trace}"].append(
                        {"photo": name, "class": index, "dense_cosine": pair.dense_cosine,
                         "spade_cosine": pair.spade_cosine, "trace_sparsity": spade.settings.get("sparsity_scale"),
                         "trace_top1_agrees": bool(spade.top1_agrees)})
        done.append(name)
        save(done, len(done) == len(photos))
        print(f"{name}: " + "; ".join(
            f"{v} {sum(p['spade_cosine'] > p['dense_cosine'] for p in records['faithful'][v])}/"
            f"{len(records['faithful'][v])}" for v in variants), flush=True)
    save(done, True)
    print(f"written to {out}")

if __name__ == "__main__":
    main()
