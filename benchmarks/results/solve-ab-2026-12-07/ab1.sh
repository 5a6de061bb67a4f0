#!/bin/bash
for r in 1 2 3; do
  for side in /tmp/wt /work/main; do
    echo "== $side round $r $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $side && /work/main/.venv/bin/python benchmarks/bench_trace.py --models resnet50 --augmentations 64 --threads 1 2>&1 | grep -v "^\s*$" | tail -1)
  done
done
