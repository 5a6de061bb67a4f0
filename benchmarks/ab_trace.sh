#!/usr/bin/env bash
# `benchmarks/bench_trace.py` of two checkouts, alternating round by round, so that the machine's load falls on both
# alike: the A/B runs under benchmarks/results/*-ab-*/.
# Usage: benchmarks/ab_trace.sh OLD_DIR NEW_DIR ROUNDS [bench_trace.py arguments...]
# OLD_DIR is typically a worktree of the old commit: git worktree add /tmp/wt REV --detach && ln -s "$PWD/.venv" /tmp/wt/
# Both run with this checkout's .venv. Per run: "== DIR round R HH:MM:SS load L", then bench_trace's result rows.
set -euo pipefail
old=$1 new=$2 rounds=$3
shift 3
python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
for round in $(seq "$rounds"); do
  for side in "$old" "$new"; do
    echo "== $side round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd "$side" && "$python" benchmarks/bench_trace.py "$@" 2>&1 | grep -v -e '^\s*$' -e '^model ' || true)
  done
done
