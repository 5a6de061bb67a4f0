"""Dense vs SPADE neuron visualization for one image: the trace for visualization, and the side-by-side result."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from torch import nn

from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.featurevis.evidence import EVIDENCE_AUGMENT, NeuronEvidence, neuron_evidence
from spade.featurevis.objectives import ClassLogit, Objective
from spade.featurevis.optimize import FeatureVisConfig, FeatureVisResult
from spade.featurevis.side_by_side import prefixed, visualize_each
from spade.layers import LayerSelection, prunable_layers
from spade.metrics import ALIKE_CORRELATION, rank_correlation
from spade.preprocessing import Preprocessing
from spade.progress import Progress
from spade.solver import SolverConfig
from spade.sparsity import Sparsity, SparsityProfile, classifier_profile, late_blocks_profile, resolve_targets
from spade.trace import SpadeTrace, prepare_statistics, solve_keeping_decision

log = logging.getLogger(__name__)

#: The SPADE authors' target for neuron visualizations (they pruned the late blocks and the classifier to it).
VISUALIZATION_TARGET = 0.95
#: The ladder of the default visualization sparsity when the decision is to be kept: the target lowered to 0.9,
#: 0.8, 0.7, 0.5, then 0.3 (compact models such as EfficientNet-Lite0 lose the top-1 class at 0.95 on typical
#: photos; the bundled cat, whose top two classes differ by 0.001 in probability, keeps it with the classifier
#: alone pruned to 0.3, not to 0.5: `benchmarks/results/featurevis-head-2026-12-07/`).
VISUALIZATION_DECISION = KeepDecision.toward(VISUALIZATION_TARGET, (0.9, 0.8, 0.7, 0.5, 0.3))


def default_visualization_profile(model: nn.Module, objective: Objective | None = None,
                                  selection: LayerSelection = LayerSelection()) -> SparsityProfile:
    """The trace profile a visualization of ``objective`` is made on by default, at VISUALIZATION_TARGET.

    A class logit: `spade.sparsity.classifier_profile` (only the classifier pruned; every feature exact). On
    efficientnet_lite0 its pictures were closer to the photo than the dense ones on 29 of 40 calibration pairs,
    against 12 of 40 with the late blocks pruned (`benchmarks/results/featurevis-head-2026-12-07/`): pruned late
    blocks are fitted to the photo's views only, and a visualization starts far from them. Any other objective
    (a channel inside the network does not depend on the classifier), or None: the authors' late blocks
    (`spade.sparsity.late_blocks_profile`)."""
    if isinstance(objective, ClassLogit):
        return classifier_profile(model, VISUALIZATION_TARGET, selection=selection)
    return late_blocks_profile(model, VISUALIZATION_TARGET, selection=selection)


def visualization_request(model: nn.Module, sparsity: Sparsity | None = None, keep_decision: bool = False,
                          selection: LayerSelection = LayerSelection(), objective: Objective | None = None
                          ) -> tuple[Sparsity, KeepDecision]:
    """(requested sparsity, policy) of a visualization trace (`spade.trace.solve_keeping_decision`).

    sparsity None: `default_visualization_profile` for ``objective`` (None: the late blocks), lowered with
    keep_decision along VISUALIZATION_DECISION. A given sparsity: itself, lowered with keep_decision along the
    default `spade.decision.KeepDecision` ladder.
    """
    if sparsity is not None:
        return sparsity, KeepDecision().when(keep_decision)
    return default_visualization_profile(model, objective, selection), VISUALIZATION_DECISION.when(keep_decision)


def visualization_trace(model: nn.Module, image: Image.Image, *, preprocessing: Preprocessing,
                        augment: AugmentConfig = AugmentConfig(), sparsity: Sparsity | None = None,
                        selection: LayerSelection = LayerSelection(), solver: SolverConfig = SolverConfig(),
                        keep_decision: bool = False, objective: Objective | None = None,
                        progress: Progress | None = None) -> SpadeTrace:
    """The SPADE trace of ``model`` for ``image`` that ``objective`` is visualized on: the visualization default
    sparsity (`default_visualization_profile`: only the classifier at 0.95 for a class logit, the authors' late
    blocks at 0.95 for any other objective, and for None: no particular one) unless ``sparsity`` is given.

    keep_decision: when the trace's top-1 class differs from the dense model's, re-solve from the same
    statistics at the lower sparsities of `visualization_request`'s policy in turn, stopping at the first that
    keeps it (re-solving reuses the statistics, so it costs solver time only). The trace's settings record the
    requested and the used sparsity.
    """
    requested, decision = visualization_request(model, sparsity, keep_decision, selection, objective)
    # statistics only where the trace prunes (a class's default: the classifier alone); the other layers stay dense
    targets = resolve_targets(model, list(prunable_layers(model, selection)), requested)
    pruned = [name for name, target in targets.items() if target > 0]
    stats = prepare_statistics(model, image, preprocessing=preprocessing, augment_config=augment,
                               selection=selection, layers=pruned or None, progress=progress)
    trace = solve_keeping_decision(stats, requested, solver, progress, decision=decision).trace
    trace.settings["augment"] = asdict(augment)
    return trace


@dataclass(frozen=True, eq=False)
class NeuronComparison:
    """One neuron, visualized on the dense model and on the trace (same seed, same settings), with the
    evidence on the image for both (None when not asked for)."""

    objective: Objective
    dense: FeatureVisResult
    trace: FeatureVisResult
    dense_evidence: NeuronEvidence | None
    trace_evidence: NeuronEvidence | None

    @property
    def evidence_correlation(self) -> float | None:
        """Spearman rank correlation of the dense and the trace's maps on the image, in [-1, 1]; None without
        evidence, NaN when a map is constant."""
        if self.dense_evidence is None or self.trace_evidence is None:
            return None
        return rank_correlation(self.dense_evidence.activation_map, self.trace_evidence.activation_map)

    def evidence_note(self) -> str | None:
        """One plain sentence on how the two maps on the image compare and why; None without evidence."""
        correlation = self.evidence_correlation
        if correlation is None:
            return None
        if correlation != correlation:
            return "One of the two maps is constant, so they cannot be compared pixel by pixel."
        values = f"{self.dense_evidence.value:.3f} dense, {self.trace_evidence.value:.3f} SPADE on the image"
        if correlation >= ALIKE_CORRELATION:
            return (f"The two maps agree (rank correlation {correlation:.2f}; {values}) by design: the trace was "
                    "fitted to reproduce the model on this image and its augmented views. Where SPADE differs is "
                    "away from this image, in the visualizations above, which start from noise and can use only "
                    "what the trace kept.")
        return (f"The two maps differ (rank correlation {correlation:.2f}; {values}): with fewer weights the trace "
                "draws the neuron's value from other places of the image.")

    def to_dict(self) -> dict:
        """JSON-ready summary: settings, final objective values and the evidence numbers."""
        out = {"objective": self.objective.describe(), "settings": self.dense.settings,
               "seconds": {"dense": self.dense.seconds, "trace": self.trace.seconds}}
        for name, vis, ev in (("dense", self.dense, self.dense_evidence), ("trace", self.trace, self.trace_evidence)):
            out[name] = {"final_value": float(vis.final_values[0]), "first_value": float(vis.curves[0, 0]),
                         "last_value": float(vis.curves[-1, 0])}
            if ev is not None:
                out[name]["evidence"] = {"value_on_image": ev.value, "map_kind": ev.map_kind,
                                         "top_view_indices": ev.view_indices.tolist(),
                                         "top_view_values": ev.view_values.tolist()}
        if self.dense_evidence is not None:
            correlation = self.evidence_correlation
            out["evidence_rank_correlation"] = None if correlation != correlation else correlation
        return out


def compare_neuron(model: nn.Module, trace_model: nn.Module, image: Image.Image | None, objective: Objective, *,
                   preprocessing: Preprocessing, config: FeatureVisConfig = FeatureVisConfig(),
                   evidence_augment: AugmentConfig = EVIDENCE_AUGMENT, top_k: int = 4,
                   feature_layer: str | None = None, progress: Progress | None = None,
                   preview: Callable[[str, int, np.ndarray], None] | None = None) -> NeuronComparison:
    """Visualize ``objective`` on the dense ``model`` and on ``trace_model`` (a SpadeTrace's ``model``) with
    the same config and seed, side by side on the CPU (`spade.featurevis.side_by_side`), and collect the evidence
    on ``image`` for both (skipped when image is None). Progress stages are prefixed "dense" / "trace";
    ``preview("dense" | "trace", step, image uint8 HxWx3)`` sees the images as they are optimised
    (`spade.featurevis.optimize.visualize`), always from the calling thread."""
    pictures = visualize_each({"dense": model, "trace": trace_model}, objective, preprocessing=preprocessing,
                              config=config, progress=progress, preview=preview)
    dense, trace = pictures["dense"], pictures["trace"]
    dense_ev = trace_ev = None
    if image is not None:
        kwargs = {"preprocessing": preprocessing, "augment_config": evidence_augment, "top_k": top_k,
                  "feature_layer": feature_layer}
        dense_ev = neuron_evidence(model, image, objective, progress=prefixed(progress, "dense"), **kwargs)
        trace_ev = neuron_evidence(trace_model, image, objective, progress=prefixed(progress, "trace"), **kwargs)
    return NeuronComparison(objective=objective, dense=dense, trace=trace,
                            dense_evidence=dense_ev, trace_evidence=trace_ev)
