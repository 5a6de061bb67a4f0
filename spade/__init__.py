"""SPADE Explorer library: per-sample sparse traces of image classifiers for interpretability.

Pure library (no Streamlit). The main entry points are re-exported here::

    from spade import AugmentConfig, load_image, load_model, spade_trace
    loaded = load_model("efficientnet_lite0")
    trace = spade_trace(loaded.model, load_image("cat.jpg"), preprocessing=loaded.spec.preprocessing,
                        augment=AugmentConfig(count=128), sparsity=0.5)
    report = trace.table()  # per-layer sparsity and reconstruction error, as text

Submodules are imported lazily so that ``import spade`` stays cheap.
"""

from __future__ import annotations

import importlib

from spade.errors import (
    CheckpointError,
    ConfigError,
    ImageLoadError,
    SpadeError,
    WeightsUnavailableError,
)

_LAZY = {
    "AugmentConfig": "spade.augment",
    "augment": "spade.augment",
    "collect_statistics": "spade.statistics",
    "LayerStatistics": "spade.statistics",
    "SolverConfig": "spade.solver",
    "SOLVERS": "spade.solver",
    "AttributionPair": "spade.saliency.compare",
    "attribution_pair": "spade.saliency.compare",
    "SpadeTrace": "spade.trace",
    "prepare_statistics": "spade.trace",
    "solve": "spade.trace",
    "solve_many": "spade.trace",
    "spade_trace": "spade.trace",
    "solve_keeping_decision": "spade.trace",
    "DecisionTrace": "spade.trace",
    "KeepDecision": "spade.decision",
    "default_augmentations": "spade.defaults",
    "SparsityProfile": "spade.sparsity",
    "PROFILES": "spade.sparsity",
    "load_profile": "spade.sparsity",
    "load_image": "spade.images",
    "load_model": "spade.models",
    "load_checkpoint": "spade.models",
    "MODELS": "spade.models",
}

__all__ = ["CheckpointError", "ConfigError", "ImageLoadError", "SpadeError", "WeightsUnavailableError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spade' has no attribute {name!r}")
