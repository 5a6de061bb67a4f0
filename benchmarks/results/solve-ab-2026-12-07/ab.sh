#!/bin/bash
# Old (dcfd3a3, /tmp/wt) and new (3963477, /work/main) bench_trace runs, alternating.
for r in 1 2; do
  for side in /tmp/wt /work/main; do
    echo "== $side round $r $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $side && /work/main/.venv/bin/python benchmarks/bench_trace.py --models resnet18,resnet50 --augmentations 64 2>&1 | grep -v "^\s*$")
  done
done
