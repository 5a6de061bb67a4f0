#!/bin/bash
# Before (4df30dc, a git worktree in /tmp/wt) and after (the compiled sweep, /work/main), alternating, torch's two threads.
for r in 1 2 3; do
  for side in /tmp/wt /work/main; do
    echo "== $side round $r $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $side && /work/main/.venv/bin/python benchmarks/bench_trace.py --models resnet18,resnet50 --augmentations 64 2>&1 | grep -v "^\s*$" | tail -2)
  done
done
