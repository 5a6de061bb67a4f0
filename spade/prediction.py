"""Top-k predictions: the one :class:`Prediction` type of a loaded model (``LoadedModel.predict``) and of a
SPADE trace (``SpadeTrace.dense_top5`` / ``trace_top5``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prediction:
    """One entry of a top-k prediction. Unpacks as ``index, name, probability``.

    index: class index; name: class name, ``""`` where the class names are not known (a trace knows only
    indices); probability: softmax probability in [0, 1].
    """

    index: int
    name: str
    probability: float

    def __iter__(self):
        return iter((self.index, self.name, self.probability))


def top_k(logits: torch.Tensor, k: int = 5, class_name: Callable[[int], str] | None = None) -> list[Prediction]:
    """The ``k`` most probable classes of one image's ``logits`` (any shape holding one row, e.g. ``(1, classes)``),
    most probable first; ``class_name(index)`` names them (``""`` without it). Softmax in float32 on the logits'
    device; ``k`` is clipped to [1, classes]."""
    probabilities = logits.detach().float().softmax(-1).flatten()
    values, indices = probabilities.topk(max(1, min(k, probabilities.numel())))
    return [Prediction(int(i), class_name(int(i)) if class_name is not None else "", float(p))
            for p, i in zip(values.tolist(), indices.tolist())]
