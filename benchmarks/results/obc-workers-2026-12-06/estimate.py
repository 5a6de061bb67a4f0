"""The exact solver's time estimate for the trace of bench.log.

Run from the repository root: PYTHONPATH=. python benchmarks/results/obc-workers-2026-12-06/estimate.py
"""

from spade.models import load_model
from spade.obc_cost import layer_work, side_by_side_seconds

loaded = load_model("efficientnet_lite0")
works = layer_work(loaded.model, 0.9, 64, loaded.spec.layer_selection)
print("efficientnet_lite0, uniform 0.9, 64 views (spade.obc_cost):")
for workers in (2, 1):
    print(f"  side_by_side_seconds, {workers} worker(s): {side_by_side_seconds(works.values(), workers):.1f} s")
name, work = max(works.items(), key=lambda kv: kv[1].seconds)
print(f"  largest layer {name}: {work.seconds:.1f} s")
