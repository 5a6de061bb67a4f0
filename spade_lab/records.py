"""A benchmark results folder: its configuration, per-(sample, method) JSONL results, shards and merging.

Layout of a folder::

    config.json                        what the results were computed with (checked on every resume)
    results.jsonl                      one JSON object per (sample, method), appended as they finish
    results.shard-<i>-of-<n>.jsonl     the same, written by ``--shard i/n`` processes (merged by ``merge``)

Every ``results*.jsonl`` file counts: a rerun skips the (sample, method) pairs found in any of them.
A line cut short by a killed process is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from spade.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
FORMAT = "spade-benchmark/1"


def shard_file(index: int, count: int) -> str:
    return f"results.shard-{index}-of-{count}.jsonl"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_folder(folder: str | Path, identity: dict) -> Path:
    """Create ``folder`` and its config.json, or check that an existing one holds results of the same
    configuration (``identity``: JSON-ready settings that decide the numbers); ConfigError otherwise."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / CONFIG_FILE
    wanted = json.loads(json.dumps({"format": FORMAT, **identity}))  # tuples -> lists, as read back
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"Cannot read {path} ({exc}); remove it or use another --out folder.") from exc
        if found != wanted:
            changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise ConfigError(f"{root} holds results of another configuration (differs in: {', '.join(changed)}); "
                              "use another --out folder.")
    else:
        _write_atomic(path, json.dumps(wanted, indent=2) + "\n")
    return root


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a benchmark results folder (no {CONFIG_FILE}).")
    return json.loads(path.read_text())


def result_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.glob("results*.jsonl") if p.is_file())


def read_records(path: Path) -> list[dict]:
    """The records of one JSONL file; malformed lines (a process killed mid-write) are skipped with a warning."""
    records = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is incomplete and is ignored", path.name, number)
                continue
            if isinstance(record, dict) and "sample" in record and "method" in record:
                records.append(record)
    return records


def _key(record: dict) -> tuple[str, str]:
    return record["sample"], record["method"]


def load_results(folder: str | Path, method_order: list[str] | None = None) -> list[dict]:
    """Every record of the folder, one per (sample, method) (the first one found wins), sorted by sample
    index, then by ``method_order`` (then by name)."""
    seen: dict[tuple[str, str], dict] = {}
    for path in result_files(folder):
        for record in read_records(path):
            seen.setdefault(_key(record), record)
    rank = {name: i for i, name in enumerate(method_order or [])}
    return sorted(seen.values(), key=lambda r: (r.get("index", 0), r["sample"], rank.get(r["method"], len(rank)),
                                                 r["method"]))


def done_pairs(folder: str | Path) -> set[tuple[str, str]]:
    return {_key(r) for path in result_files(folder) for r in read_records(path)}


class ResultWriter:
    """Appends records to one JSONL file, one line each, flushed at once (safe to kill at any time)."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short: start a fresh one
                    with path.open("a") as out:
                        out.write("\n")

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()


def merge_folder(folder: str | Path, method_order: list[str] | None = None) -> list[dict]:
    """Combine every results*.jsonl of ``folder`` into results.jsonl (sorted, one record per pair) and remove
    the shard files it now contains. Returns the merged records."""
    root = Path(folder)
    read_config(root)
    records = load_results(root, method_order)
    shards = [p for p in result_files(root) if p.name != RESULTS_FILE]
    _write_atomic(root / RESULTS_FILE, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    for path in shards:
        path.unlink()
    log.info("merged %d records from %d shard file(s) into %s", len(records), len(shards), root / RESULTS_FILE)
    return records
