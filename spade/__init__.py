"""SPADE Explorer library: per-sample sparse traces of image classifiers for interpretability.

Pure library (no Streamlit). See README.md for usage.
"""

from spade.errors import (
    CheckpointError,
    ConfigError,
    ImageLoadError,
    SpadeError,
    WeightsUnavailableError,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ImageLoadError",
    "SpadeError",
    "WeightsUnavailableError",
]
