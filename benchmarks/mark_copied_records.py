"""Mark the records a results folder copied from another folder, and rewrite its tables.

Usage: python benchmarks/mark_copied_records.py FOLDER SOURCE

Adds ``"copied_from": "<SOURCE's name>"`` to every record of FOLDER/results.jsonl that is a copy of a record of
SOURCE/results.jsonl (same sample, method, photo, scores and measured seconds; see ``spade_lab.provenance``), then
runs ``python -m spade benchmark merge FOLDER`` so that the tables' timing line counts only the records computed
for FOLDER and names where the others came from. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from spade_lab.provenance import mark_copied

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the results folder whose records were partly copied")
    parser.add_argument("source", help="the results folder they were copied from")
    args = parser.parse_args()
    count = mark_copied(args.folder, args.source)
    print(f"{count} record(s) of {args.folder} are marked as copied from {Path(args.source).resolve().name}")
    subprocess.run([sys.executable, "-m", "spade", "benchmark", "merge", args.folder], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
