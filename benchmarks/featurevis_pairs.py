"""The faithful part of several `bench_featurevis_quality.py` folders together: per variant (method/trace), on how
many (photo, class) pairs the SPADE picture was closer to the photo than the dense one, and the mean of the
per-pair cosine difference (SPADE − dense, judge's penultimate features) with a Student-t 95 % interval.

Usage: python benchmarks/featurevis_pairs.py FOLDER [FOLDER ...]

Folders that split one run by photos (one process each) are added up; a pair that appears twice is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()

    from spade_lab.tables import t_interval

    pairs: dict[str, dict[tuple[str, int], dict]] = {}
    for folder in args.folders:
        for variant, records in json.loads((folder / "records.json").read_text())["faithful"].items():
            seen = pairs.setdefault(variant, {})
            for record in records:
                key = (record["photo"], record["class"])
                if key in seen:
                    sys.exit(f"{folder}: pair {key} of {variant} is already in an earlier folder")
                seen[key] = record
    for variant, records in pairs.items():
        diffs = [r["spade_cosine"] - r["dense_cosine"] for r in records.values()]
        closer = sum(d > 0 for d in diffs)
        ci = t_interval(diffs)
        photos = sorted({photo for photo, _ in records})
        agrees = [r["trace_top1_agrees"] for r in records.values() if "trace_top1_agrees" in r]  # older runs: none
        print(f"{variant:<18} SPADE closer on {closer}/{len(diffs)} pairs ({100 * closer / len(diffs):.1f} %); "
              f"mean cosine difference {ci.mean:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]; "
              f"top-1 kept {f'{sum(agrees)}/{len(agrees)}' if agrees else 'not recorded'}; "
              f"photos {', '.join(photos)}")


if __name__ == "__main__":
    main()
