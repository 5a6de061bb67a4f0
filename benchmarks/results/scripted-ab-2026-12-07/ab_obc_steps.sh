#!/bin/bash
# Before (bd18dce, /tmp/wt) and after (the cheaper low-rank steps, /work/main), alternating, torch's two threads.
for r in 1 2 3; do
  for side in /tmp/wt /work/main; do
    echo "== $side round $r $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $side && /work/main/.venv/bin/python benchmarks/bench_trace.py --models efficientnet_lite0 --solver group,obc --no-resolve 2>&1 | grep -v "^\s*$" | tail -2)
  done
done
