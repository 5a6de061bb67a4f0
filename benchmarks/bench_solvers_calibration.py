"""Solvers compared on the calibration door: Trojan AUC gain of SPADE traces from each solver at the same profiles.

Usage: python benchmarks/bench_solvers_calibration.py [--profile NAME|FILE.json] [--own-profiles]
                                                      [--solvers group,obc,group@1] [--samples N]
                                                      [--shard i/n] [--out FILE.jsonl] [--threads N]
                                                      [--device auto|cpu|cuda] [--weights FILE.pt]
       python benchmarks/bench_solvers_calibration.py --summary FILE.jsonl
The back-doored demo model's *calibration* back door only (the four build photos stamped with the star; never the
test photos or the heart), 256 views, `--keep-decision`, the seven gradient methods, on one profile or
(--own-profiles) each on the method's own shipped profile where it has one. A solver is a mode, optionally with a
damping (`group@1`: the sweep with damping 1 instead of 0.01). --weights scores a trial build of the demo model (a
difference file written by `python -m tools.demo_model build --out FILE.pt`) instead of the shipped one. Each sample's
statistics are recorded once and solved by every solver; one JSON line per (sample, method) is appended to --out,
so shards can run side by side on one file (by default in a dated folder under benchmarks/results/, so the
records behind a figure can be committed with it). --summary prints the mean SPADE - Dense Trojan AUC and pointing
game per method and solver, and the solve times (a run prints them at its end). Defaults: the shipped Trojan
profile and 2 samples (`make bench`, about 10 minutes on the 2-core CPU; the figures in benchmarks/results/README.md
used --samples 8).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(args: argparse.Namespace) -> None:
    import torch

    from spade.models import get_spec, load_spec, with_delta_file
    from spade.saliency import METHODS, mask_scores
    from spade.sparsity import load_profile, method_profiles
    from spade.trace import solve_keeping_decision
    from spade_lab.benchmark import BenchmarkConfig, method_settings, statistics_for, trojan_record
    from spade_lab.photos import CALIBRATION_PHOTOS
    from spade_lab.samples import SampleConfig, build_samples, bundled_photos, resolve_trigger

    if args.threads:
        torch.set_num_threads(args.threads)
    shard, shards = (int(v) for v in args.shard.split("/"))
    spec = get_spec(args.model)
    loaded = load_spec(with_delta_file(spec, args.weights) if args.weights else spec, device=args.device)
    door = loaded.spec.backdoor("calibration")
    samples = build_samples(loaded.model, loaded.spec.preprocessing,
                            bundled_photos(CALIBRATION_PHOTOS, "bundled calibration photos"),
                            SampleConfig(count=args.samples, seed=0), trigger=resolve_trigger(door.trigger)[1],
                            target=door.target)
    profile = load_profile(args.profile)
    config = BenchmarkConfig()
    # the paper's gradient methods: its ten without the perturbation ones and the random GradientShap
    gradient = [m.name for m in METHODS.values() if m.paper and not m.random and m.family != "perturbation"]
    solvers = {spec: solver_config(spec) for spec in args.solvers.split(",")}
    own = method_profiles(loaded.spec.name, gradient) if args.own_profiles else {}
    profiles = {name: own.get(name, profile) for name in gradient}
    with open(args.out, "a") as out:
        for record in samples.records[shard - 1::shards]:
            rendered = samples.render(record)
            stats = statistics_for(loaded, rendered.image, config)
            x = loaded.spec.preprocessing(rendered.image)
            traces = {}
            for sparsity in dict.fromkeys(profiles.values()):
                for spec, solver in solvers.items():
                    start = time.perf_counter()
                    trace = solve_keeping_decision(stats, sparsity, solver).trace
                    traces[sparsity, spec] = trace, {"sparsity_scale": trace.settings["sparsity_scale"],
                                                     "logit_cosine": trace.logit_cosine,
                                                     "seconds": time.perf_counter() - start}
            for name in gradient:
                settings = method_settings(name, loaded, config)
                row = {"sample": record.id, "method": name, "profile": profiles[name].name,
                       "dense": trojan_record(mask_scores(METHODS[name].explain(loaded.model, x, record.target,
                                                                                settings), rendered.mask)),
                       "solvers": {}}
                for spec in solvers:
                    trace, summary = traces[profiles[name], spec]
                    scores = trojan_record(mask_scores(METHODS[name].explain(trace.model, x, record.target,
                                                                             settings), rendered.mask))
                    row["solvers"][spec] = {**scores, "trace": summary}
                out.write(json.dumps(row) + "\n")
                out.flush()
            print(record.id, {f"{p.name} {spec}": round(s["seconds"], 1) for (p, spec), (_, s) in traces.items()},
                  flush=True)


def solver_config(spec: str):
    """The SolverConfig of 'MODE' or 'MODE@DAMP' (e.g. 'group@1')."""
    from spade.solver import SolverConfig

    mode, _, damp = spec.partition("@")
    return SolverConfig(mode=mode, damp=float(damp)) if damp else SolverConfig(mode=mode)


def summary(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    by_method = collections.defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    solvers = list(rows[0]["solvers"])
    print(f"{'method':<22}{'n':>3}{'dense AUC':>10}" + "".join(f"{m + ' AUC':>12}{m + ' PG':>11}" for m in solvers))
    gains = {m: ([], []) for m in solvers}
    for name, group in by_method.items():
        dense_auc = statistics.mean(r["dense"]["trojan_auc"] for r in group)
        cells = ""
        for mode in solvers:
            auc = 100 * statistics.mean(r["solvers"][mode]["trojan_auc"] - r["dense"]["trojan_auc"] for r in group)
            pg = 100 * statistics.mean(r["solvers"][mode]["pointing_game"] - r["dense"]["pointing_game"]
                                       for r in group)
            gains[mode][0].append(auc)
            gains[mode][1].append(pg)
            cells += f"{auc:>+12.2f}{pg:>+11.1f}"
        print(f"{name:<22}{len(group):>3}{100 * dense_auc:>10.2f}{cells}")
    print(f"{'average':<25}{'':>10}" + "".join(f"{statistics.mean(a):>+12.2f}{statistics.mean(p):>+11.1f}"
                                               for a, p in gains.values()))
    first = {r["sample"]: r for r in rows}.values()
    for mode in solvers:
        traces = [r["solvers"][mode]["trace"] for r in first]
        backed_off = sum(t["sparsity_scale"] < 1 for t in traces)
        print(f"{mode}: {len(traces)} samples, solve {statistics.mean(t['seconds'] for t in traces):.1f} s per sample "
              f"(back-offs included), {backed_off} re-solved at a lower sparsity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0_trojan", help="a back-doored registry model")
    parser.add_argument("--profile", default="efficientnet_lite0_trojan", help="sparsity profile (name or file)")
    parser.add_argument("--own-profiles", action="store_true",
                        help="each method on its own shipped profile where it has one (as benchmark --own-profiles)")
    parser.add_argument("--solvers", default="group,obc", help="MODE or MODE@DAMP, comma-separated")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--shard", default="1/1", help="i/n: every n-th sample from the i-th (1-based)")
    parser.add_argument("--out", help="JSON lines to append to (needed with --shard; default: "
                                      "benchmarks/results/solvers-calibration-<date>/calibration.jsonl, to commit)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--weights", metavar="FILE.pt",
                        help="a trial build's difference file (default: the shipped one)")
    parser.add_argument("--summary", metavar="FILE.jsonl", help="print the table of a finished run")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
    elif args.shard != "1/1" and not args.out:
        parser.error("--shard needs --out (the shards' shared file)")
    else:
        if not args.out:
            args.out = str(ROOT / "benchmarks" / "results" / f"solvers-calibration-{time.strftime('%Y-%m-%d')}"
                           / "calibration.jsonl")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from spade.devices import full_float32

        with full_float32():  # no TF32 on a GPU, so that its figures compare with the CPU's
            run(args)
        if args.shard == "1/1":
            summary(args.out)


if __name__ == "__main__":
    main()
