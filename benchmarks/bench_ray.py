"""Samples per minute of the smoke Trojan benchmark: in-process vs on a local Ray with 1 and 2 workers.

Usage: python benchmarks/bench_ray.py [--samples 8] [--workers 1,2] [--repeats 3] [--out DIR]

The smoke benchmark (`python -m spade benchmark trojan --smoke`: the shipped back-doored efficientnet_lite0,
saliency + input_x_gradient, 16 augmentations) on ``--samples`` samples, scored by `spade_lab.benchmark.run_benchmark`
into a fresh folder for every run:

* in-process with 1 torch thread (what each Ray task gets: the numbers are then identical) and with torch's default;
* on a Ray started here with N CPUs for each N of ``--workers``: the time to start it, a warm-up (each worker starts,
  imports torch and the library, and fetches the model once), then the timed run.

Overhead per task: (Ray with 1 worker - in-process with 1 thread) / samples, i.e. what shipping a sample out and its
records back costs on top of the work; and the round trip of an empty task through the same executor.
The configurations run interleaved, ``--repeats`` rounds, and the table gives each one's median (and range), so that a
change of load hits all of them. Writes table.txt and records.json (every run) to --out. On a shared machine timings
move with the load: compare rows of one table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _noop(shared, item):
    return item


def _warm(shared, item):
    import torch  # noqa: F401  (what a real task imports first)

    import spade_lab.benchmark  # noqa: F401

    return os.getpid()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--empty-tasks", type=int, default=200, help="empty tasks timed for the round trip")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all runs (the median counts)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from spade.augment import AugmentConfig
    from spade.models import default_backdoored_model, load_model
    from spade.solver import SolverConfig
    from spade_lab.benchmark import SMOKE_METHODS, BenchmarkConfig, model_identity, run_benchmark
    from spade_lab.executors import RayExecutor, RaySettings
    from spade_lab.photos import TEST_PHOTOS
    from spade_lab.samples import SampleConfig, build_samples, bundled_photos, resolve_trigger

    loaded = load_model(default_backdoored_model(), device="cpu")
    door = loaded.spec.backdoor("test")
    _, trigger = resolve_trigger(door.trigger)
    samples = build_samples(loaded.model, loaded.spec.preprocessing, bundled_photos(TEST_PHOTOS, "test photos"),
                            SampleConfig(count=args.samples), trigger=trigger, target=door.target)
    config = BenchmarkConfig(methods=SMOKE_METHODS, sparsity=loaded.spec.default_sparsity,
                             augment=AugmentConfig(count=16), solver=SolverConfig(mode=loaded.spec.default_solver))
    identity = {"model": model_identity(loaded)}
    scratch = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    default_threads = torch.get_num_threads()
    rows = []

    def timed_run(label: str, executor=None, **extra) -> dict:
        folder = scratch / f"run{len(rows)}"
        start = time.perf_counter()
        summary = run_benchmark(loaded, samples, config, folder, identity, executor=executor)
        seconds = time.perf_counter() - start
        row = {"run": label, "samples": summary.samples, "records": summary.computed, "seconds": seconds,
               "samples_per_minute": 60 * summary.samples / seconds, **extra}
        rows.append(row)
        print(f"  {label}: {seconds:.1f} s, {row['samples_per_minute']:.2f} samples/min", flush=True)
        return row

    load_start = os.getloadavg()[0]
    print(f"smoke benchmark, {len(samples.records)} samples, {os.cpu_count()} cores, load {load_start:.1f}", flush=True)
    worker_counts = [int(w) for w in args.workers.split(",")]
    for round_ in range(1, args.repeats + 1):  # the configurations interleaved, so that a change of load hits all
        print(f"round {round_}", flush=True)
        torch.set_num_threads(1)
        timed_run("in-process, 1 thread", threads=1, round=round_, load=os.getloadavg()[0])
        for workers in worker_counts:
            start = time.perf_counter()
            executor = RayExecutor(RaySettings(cpus=workers))
            started = time.perf_counter() - start
            try:
                start = time.perf_counter()
                pids = {pid for _, pid in executor.map(_warm, executor.put(None), range(4 * workers))}
                warm = time.perf_counter() - start
                shared = executor.put(None)
                start = time.perf_counter()
                for _ in executor.map(_noop, shared, range(args.empty_tasks)):
                    pass
                empty_ms = 1000 * (time.perf_counter() - start) / args.empty_tasks
                timed_run(f"Ray, {workers} worker(s)", executor, workers=workers, ray_start_s=started,
                          warm_up_s=warm, worker_processes=len(pids), empty_task_ms=empty_ms, round=round_,
                          load=os.getloadavg()[0])
            finally:
                executor.close()
        torch.set_num_threads(default_threads)
        timed_run(f"in-process, {default_threads} threads", threads=default_threads, round=round_,
                  load=os.getloadavg()[0])

    def median(values):
        return statistics.median(values) if values else float("nan")

    labels = list(dict.fromkeys(r["run"] for r in rows))
    summary = {}
    for label in labels:
        runs = [r for r in rows if r["run"] == label]
        summary[label] = {key: median([r[key] for r in runs if key in r])
                          for key in ("seconds", "ray_start_s", "warm_up_s", "empty_task_ms")}
        summary[label]["min"] = min(r["seconds"] for r in runs)
        summary[label]["max"] = max(r["seconds"] for r in runs)
    base = summary["in-process, 1 thread"]["seconds"]
    ray_one = summary.get("Ray, 1 worker(s)")
    overhead = None if ray_one is None else (ray_one["seconds"] - base) / args.samples
    lines = [f"bench_ray {datetime.date.today()}: smoke Trojan benchmark ({loaded.spec.name}, "
             f"{', '.join(SMOKE_METHODS)}, 16 augmentations), {len(samples.records)} samples, CPU only, "
             f"{os.cpu_count()} cores shared with other engineers' jobs (1-minute load average {load_start:.1f} at the "
             f"start, {os.getloadavg()[0]:.1f} at the end: above 2, every run here got only part of the cores); "
             f"median of {args.repeats} interleaved round(s)",
             "",
             f"{'run':<24} {'seconds':>8} {'(min-max)':>13} {'samples/min':>12} {'speed-up':>9} {'Ray start':>10} "
             f"{'warm-up':>8} {'empty task':>11}"]
    for label, m in summary.items():
        ray_cols = (f"{m['ray_start_s']:>9.1f}s {m['warm_up_s']:>7.1f}s {m['empty_task_ms']:>9.1f}ms"
                    if label.startswith("Ray") else f"{'-':>10} {'-':>8} {'-':>11}")
        spread = f"({m['min']:.1f}-{m['max']:.1f})"
        lines.append(f"{label:<24} {m['seconds']:>8.1f} {spread:>13} {60 * args.samples / m['seconds']:>12.2f} "
                     f"{base / m['seconds']:>8.2f}x {ray_cols}")
    if overhead is not None:
        lines += ["", f"overhead per task (Ray 1 worker - in-process 1 thread, per sample, medians): {overhead:+.2f} s "
                  "(within the noise of the load when near 0 or negative); empty-task round trip: see the table"]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.txt").write_text(table + "\n")
        (args.out / "records.json").write_text(json.dumps(
            {"date": str(datetime.date.today()), "samples": len(samples.records), "cores": os.cpu_count(),
             "load_start": load_start, "load_end": os.getloadavg()[0], "repeats": args.repeats,
             "torch": torch.__version__, "medians": summary, "runs": rows, "overhead_per_task_s": overhead},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
