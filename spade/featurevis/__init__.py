"""Neuron visualizations, dense vs SPADE (the paper's second finding).

A feature visualization optimises an image to excite one neuron (Lucid style: Fourier parameterisation,
decorrelated colours, random transforms, Adam). On the dense model it mixes every facet the neuron has
learned; on the SPADE trace of one image it shows the facet that image used. ``neuron_evidence`` shows the
neuron on the image itself (activation map, most exciting augmented views).

Modules: ``methods`` (the offered methods and the default), ``objectives`` (what to maximise, hooks), ``param``
(image parameterisation), ``spectrum`` (MACO's amplitude), ``transforms`` (random transforms), ``optimize`` (the
optimisation), ``evidence`` (maps and views), ``compare`` (dense vs trace in one call).
"""

from spade.featurevis.compare import NeuronComparison, compare_neuron, visualization_trace
from spade.featurevis.evidence import (
    EVIDENCE_AUGMENT,
    NeuronEvidence,
    activation_map,
    last_spatial_layer,
    neuron_evidence,
)
from spade.featurevis.methods import DEFAULT_METHOD, DEFAULT_METHOD_REASON, METHOD_LABELS, method_label
from spade.featurevis.objectives import (
    ChannelMean,
    ClassLogit,
    Neuron,
    Objective,
    WeightedSum,
    capture,
    check_objective,
    objective_values,
    parse_neuron,
)
from spade.featurevis.optimize import CPU_STEPS, GPU_STEPS, FeatureVisConfig, FeatureVisResult, visualize
from spade.featurevis.transforms import CropsConfig, TransformConfig

__all__ = [
    "CPU_STEPS",
    "DEFAULT_METHOD",
    "DEFAULT_METHOD_REASON",
    "EVIDENCE_AUGMENT",
    "GPU_STEPS",
    "METHOD_LABELS",
    "ChannelMean",
    "ClassLogit",
    "CropsConfig",
    "FeatureVisConfig",
    "FeatureVisResult",
    "Neuron",
    "NeuronComparison",
    "NeuronEvidence",
    "Objective",
    "TransformConfig",
    "WeightedSum",
    "activation_map",
    "capture",
    "check_objective",
    "compare_neuron",
    "last_spatial_layer",
    "method_label",
    "neuron_evidence",
    "objective_values",
    "parse_neuron",
    "visualization_trace",
    "visualize",
]
