"""Two benchmark folders on the same samples, compared sample by sample: how much one run's SPADE − Dense differs
from the other's.

Usage: python benchmarks/paired_runs.py FOLDER OTHER [--methods a,b,...]

For every sample both folders scored with every given method (drawn alike: the same photo, crop and trigger
placement, else the script refuses) (default: the methods both have), each run's own
SPADE − Dense is averaged over the methods, and the per-sample difference FOLDER − OTHER gets a Student-t 95 %
interval (`spade_lab.tables.t_interval`), per metric (Trojan AUC and pointing game, or insertion and deletion AUC,
in percentage points). Each run's difference is taken against its own dense score, so runs whose dense scores differ
(one computed on a GPU, the other on a CPU) can still be compared; the script counts those records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METRICS = {"insertion": ("insertion_auc", "deletion_auc"), "trojan": ("trojan_auc", "pointing_game")}


def _drawn(record: dict) -> tuple:
    """What makes a sample: its photo, crop and trigger placement."""
    return record.get("photo"), record.get("crop"), record.get("stamp_seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--methods", default=None, help="comma-separated method names (default: those both have)")
    args = parser.parse_args()

    from spade_lab.records import load_results, read_config
    from spade_lab.tables import metric_value, t_interval

    kind = read_config(args.folder)["kind"]
    if read_config(args.other)["kind"] != kind:
        parser.error("the two folders hold different benchmarks")
    runs = [{(r["sample"], r["method"]): r for r in load_results(folder)} for folder in (args.folder, args.other)]
    methods = (args.methods.split(",") if args.methods else
               sorted({m for _, m in runs[0]} & {m for _, m in runs[1]}))
    samples = sorted(s for s in {s for s, _ in runs[0]} if all((s, m) in run for run in runs for m in methods))
    differ = [s for s in samples if any(_drawn(runs[0][s, m]) != _drawn(runs[1][s, m]) for m in methods)]
    if differ:
        parser.error(f"the folders drew different samples under the same names: {', '.join(differ[:5])}")
    print(f"{args.folder.name} − {args.other.name}: {kind}, {len(samples)} samples, methods {', '.join(methods)}")
    for metric in METRICS[kind]:
        per_sample, dense_apart = [], 0
        for sample in samples:
            gaps = []
            for method in methods:
                mine, theirs = runs[0][sample, method], runs[1][sample, method]
                dense = metric_value(mine["dense"], metric), metric_value(theirs["dense"], metric)
                dense_apart += abs(dense[0] - dense[1]) > 0.5
                gaps.append((metric_value(mine["spade"], metric) - dense[0])
                            - (metric_value(theirs["spade"], metric) - dense[1]))
            per_sample.append(sum(gaps) / len(gaps))
        cell = t_interval(per_sample)
        print(f"  {metric:<14} SPADE − Dense of the first minus the second: {cell.mean:+.2f} "
              f"[{cell.low:+.2f}, {cell.high:+.2f}] (n {cell.n}); dense scores more than 0.5 points apart on "
              f"{dense_apart} of {len(samples) * len(methods)} records")


if __name__ == "__main__":
    main()
