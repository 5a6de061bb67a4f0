"""Which records of a results folder were copied from another folder rather than computed for it.

Some folders reuse records of another run (the ``-keep`` folders reuse every sample whose trace kept the decision
at the requested sparsity; the per-method folders reuse the methods that stay on the shared profile). A copied
record carries ``"copied_from": "<source folder name>"``; the tables then count only the other records in their
timing line, and say how many were copied from where.

A record counts as copied when the source holds a record of the same sample and method with the same photo, the
same scores and the same measured seconds (timings to the nanosecond do not repeat by chance); fields the copy
added (``sparsity_scale``, ``sparsity``) do not matter.
"""

from __future__ import annotations

import json
from pathlib import Path

from spade.errors import ConfigError

COPIED_FROM = "copied_from"


def fingerprint(record: dict) -> tuple:
    """What a copy shares with its original: identity, scores and the measured seconds."""
    return (record["sample"], record["method"], record.get("photo"),
            json.dumps(record.get("dense"), sort_keys=True), json.dumps(record.get("spade"), sort_keys=True),
            json.dumps(record.get("seconds"), sort_keys=True))


def mark_copied(folder: str | Path, source: str | Path) -> int:
    """Mark the records of ``folder``'s results file that are copies of records in ``source``'s, rewriting the file
    in place (same order, one JSON object per line). Returns how many records are marked as copied from ``source``
    (those marked by an earlier call included)."""
    from spade_lab.records import RESULTS_FILE, read_records

    target, origin = Path(folder) / RESULTS_FILE, Path(source) / RESULTS_FILE
    for path in (target, origin):
        if not path.is_file():
            raise ConfigError(f"{path.parent} has no {RESULTS_FILE}; merge its shards first.")
    originals = {fingerprint(r) for r in read_records(origin)}
    records = read_records(target)
    name = Path(source).resolve().name
    for record in records:
        if COPIED_FROM not in record and fingerprint(record) in originals:
            record[COPIED_FROM] = name
    target.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return sum(r.get(COPIED_FROM) == name for r in records)
