"""The evaluation lab: the paper's benchmarks run on the ``spade`` library (no Streamlit, and never imported by it).

* ``samples``: the Trojan and clean test sets (triggered photos with their masks, clean crops);
* ``benchmark``: Table 1 (Trojan AUC, pointing game) and Table 2 (insertion / deletion) runs, resumable;
* ``records``: the per-record result store those runs append to (folders, shards, what is done);
* ``tables``: the tables with confidence intervals, written and read back;
* ``tuning``: per-block sparsity profiles tuned greedily on calibration samples, as the authors did;
* ``photos``: which bundled photos are for building, calibrating and testing;
* ``batch``: SPADE and saliency maps for every image of a folder, with a CSV / JSON summary, resumable;
* ``executors``: where the per-sample work runs: in this process, or as Ray tasks (``--ray``; Ray imported only then).
"""
