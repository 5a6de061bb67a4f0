"""The quality measure of feature visualizations, judged by another network (used by
``benchmarks/bench_featurevis_quality.py``).

*Recognisable*: a class visualization counts when the judge puts the class in its top-k (k = 5).
*Faithful to the image's facet*: for one (photo, class) pair, the SPADE visualization counts when it is closer to
the photo than the dense visualization is, by the cosine of the judge's penultimate features (the input of its last
``nn.Linear``, found by type).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spade.devices import model_device
from spade.errors import ConfigError
from spade.preprocessing import Preprocessing


def judge_head(judge: nn.Module) -> nn.Linear:
    """The judge's last ``nn.Linear`` module (its classifier); ConfigError when it has none."""
    heads = [m for m in judge.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ConfigError(f"{type(judge).__name__} has no Linear layer to read penultimate features from.")
    return heads[-1]


def judge_outputs(judge: nn.Module, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) judge-normalized images -> (logits (B, classes), penultimate features (B, F)), float32 CPU.
    The judge runs in eval mode on its own device, without gradients; its hook is removed on return."""
    seen: list[torch.Tensor] = []
    handle = judge_head(judge).register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].flatten(1)))
    was_training = judge.training
    judge.eval()
    try:
        with torch.no_grad():
            logits = judge(normalized.to(model_device(judge)))
    finally:
        handle.remove()
        judge.train(was_training)
    return logits.float().cpu(), seen[-1].float().cpu()


def judge_pictures(judge: nn.Module, preprocessing: Preprocessing,
                   images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`judge_outputs` of (B, H, W, 3) float [0, 1] pictures, resized (bilinear, antialiased) to the judge's crop
    and normalized with its ``preprocessing``."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"Expected pictures of shape (B, H, W, 3), got {images.shape}.")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(preprocessing.crop, preprocessing.crop), mode="bilinear", antialias=True)
    return judge_outputs(judge, preprocessing.normalize(x))


def recognised(logits: torch.Tensor, classes: list[int], k: int = 5) -> list[bool]:
    """Whether classes[i] is among the top-``k`` of logits[i] ((B, classes) tensor, B == len(classes))."""
    if logits.shape[0] != len(classes):
        raise ConfigError(f"{logits.shape[0]} rows of logits for {len(classes)} classes.")
    top = logits.topk(k, dim=1).indices
    return [int(c) in row.tolist() for c, row in zip(classes, top)]


@dataclass(frozen=True)
class FaithfulPair:
    """One (photo, class) pair: the cosine of the dense and of the SPADE visualization's judge features with the
    photo's; ``spade_closer`` when the SPADE one is strictly closer."""

    dense_cosine: float
    spade_cosine: float

    @property
    def spade_closer(self) -> bool:
        return self.spade_cosine > self.dense_cosine


def faithful_pairs(dense: torch.Tensor, spade: torch.Tensor, photo: torch.Tensor) -> list[FaithfulPair]:
    """Per row: (B, F) dense and SPADE visualization features against the (F,) or (1, F) photo features."""
    if dense.shape != spade.shape:
        raise ConfigError(f"Dense and SPADE features differ in shape: {tuple(dense.shape)} vs {tuple(spade.shape)}.")
    photo = photo.reshape(1, -1)
    d = F.cosine_similarity(dense, photo, dim=1)
    s = F.cosine_similarity(spade, photo, dim=1)
    return [FaithfulPair(float(a), float(b)) for a, b in zip(d, s)]
