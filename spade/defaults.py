"""Default augmentation counts: how many augmented views a trace (or the evidence search) uses, by purpose and
device, and the limits every front end enforces on augmentation counts and seeds. Every front end takes its
default from here. Imports no torch, so that command-line help can quote it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spade.errors import ConfigError

if TYPE_CHECKING:
    import torch


MAX_AUGMENTATIONS = 8192
"""Most augmented views one trace may ask for (`spade.augment.AugmentConfig` refuses more): the views alone take
count x 3 x crop x crop float32 values, about 4.9 GB at 8192 views of a 224-pixel crop, eight times the authors'
1024."""

MAX_SEED = 2**63 - 1
"""Largest accepted seed (seeds are in [0, MAX_SEED]): a signed 64-bit integer, which torch's and NumPy's
generators and every JSON reader take as is."""


@dataclass(frozen=True)
class AugmentationCounts:
    """Augmented views on the CPU and on an accelerator (any other device type); both >= 1."""

    cpu: int
    accelerator: int


AUGMENTATIONS: dict[str, AugmentationCounts] = {
    # the Explore page's form and its classroom walkthrough: a quick first trace
    "explore": AugmentationCounts(cpu=64, accelerator=64),
    # the Trojan lab page
    "trojan_lab": AugmentationCounts(cpu=64, accelerator=128),
    # one trace from the command line (`trace`, `explain`): the authors' 1024 on a GPU
    "trace": AugmentationCounts(cpu=128, accelerator=1024),
    # the trace a neuron visualization is made on (Neurons page, `visualize`, the human study)
    "visualize": AugmentationCounts(cpu=128, accelerator=1024),
    # benchmark and profile tuning traces: the authors' Trojan setting
    "benchmark": AugmentationCounts(cpu=256, accelerator=256),
    # views searched for the crops of an image that excite a neuron most (spade.featurevis.evidence)
    "evidence": AugmentationCounts(cpu=64, accelerator=64),
}


def default_augmentations(purpose: str, device: str | torch.device = "cpu") -> int:
    """The default number of augmented views for ``purpose`` (a key of AUGMENTATIONS) on ``device`` (a resolved
    device or its name such as "cuda:0"; the CPU gives the CPU count, any other device type the accelerator
    count)."""
    counts = AUGMENTATIONS.get(purpose)
    if counts is None:
        raise ConfigError(f"Unknown augmentation purpose {purpose!r}; choose one of {', '.join(AUGMENTATIONS)}.")
    return counts.cpu if str(device).partition(":")[0] == "cpu" else counts.accelerator
