"""Layer-wise Relevance Propagation with zennit (Captum's LRP rejects timm ``Conv2dSame`` and skip connections).

Composite (a ``zennit.composites.LayerMapComposite``), following the authors' "alpha = 1" LRP:

* every convolution (standard, depthwise, timm ``Conv2dSame``) and every ``nn.Linear``, the first layer
  included: ``AlphaBeta(alpha=1, beta=0)`` (the alpha1-beta0 / z+ rule for signed inputs);
* ReLU / ReLU6 / Hardtanh: ``Pass`` (relevance goes through unchanged);
* residual additions (the ``zennit.layer.Sum`` inside each ``ResidualSum`` made by the attribution copy)
  and average pooling: ``Norm`` (relevance split in proportion to each operand's contribution);
* BatchNorm: merged into the preceding convolution by zennit's ``SequentialMergeBatchNorm`` canonizer,
  then ``Pass``. timm's ``BatchNormAct2d`` is split into BN + activation first (see ``attribution_model``),
  and the residual additions of torchvision / timm / custom blocks become ``ResidualSum`` modules found with
  ``torch.fx`` — this replaces zennit's torchvision-only ``ResNetCanonizer`` for every architecture.
* max pooling keeps its gradient (winner takes all).

The relevance seed is 1 at the target logit (0 elsewhere). Biases (including the BatchNorm shifts
merged into the convolutions) are left out of the rule (``ignore_bias=True``, default; to our knowledge
the Nam et al. LRP code the authors used also computes its z terms without bias, not verified here).
Relevance is then conserved exactly where every unit has some positive contribution (checked in the
tests on bias-free ResNet / EfficientNet-Lite / tiny models: input relevance sums to 1 within 5 %). On
the pretrained EfficientNet-Lite0, units whose input window is all zero but that are switched on by their
BatchNorm shift carry relevance the rule cannot pass down (mostly at the depthwise convolutions of the
last stages): the input relevance sums to about 0.04 of the seed (with ``ignore_bias=False`` the biases
absorb even more: about 1e-4). The map's shape, which is what is displayed and scored, does not depend
on this overall scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Norm, Pass
from zennit.types import Activation, AvgPool, BatchNorm, Convolution

from spade.errors import ConfigError
from spade.progress import Progress
from spade.saliency.attribution_model import Mode, attribution_copy


@dataclass(frozen=True)
class LRPSettings:
    """alpha/beta of the AlphaBeta rule (alpha - beta must be 1; the authors used alpha = 1, beta = 0);
    ignore_bias: leave biases out of the rule (see the module docstring)."""

    alpha: float = 1.0
    beta: float = 0.0
    stabilizer: float = 1e-6
    ignore_bias: bool = True


def lrp_composite(settings: LRPSettings) -> LayerMapComposite:
    """The zennit composite described in the module docstring."""
    if settings.alpha - settings.beta != 1.0 or settings.beta < 0:
        raise ConfigError("LRP needs alpha - beta = 1 and beta >= 0 (e.g. alpha=1, beta=0 or alpha=2, beta=1).")
    zero = ["bias"] if settings.ignore_bias else None
    rule = AlphaBeta(alpha=settings.alpha, beta=settings.beta, stabilizer=settings.stabilizer, zero_params=zero)
    layer_map = [
        (Activation, Pass()),
        (Sum, Norm(stabilizer=settings.stabilizer)),
        (AvgPool, Norm(stabilizer=settings.stabilizer)),
        (Convolution, rule),
        (nn.Linear, rule),
        (BatchNorm, Pass()),
    ]
    return LayerMapComposite(layer_map=layer_map, canonizers=[SequentialMergeBatchNorm()])


def run_lrp(model: nn.Module, x: torch.Tensor, target: int, settings: LRPSettings, progress: Progress) -> torch.Tensor:
    composite = lrp_composite(settings)

    def one_hot(output: torch.Tensor) -> torch.Tensor:
        if target >= output.shape[1]:
            raise ConfigError(f"Target class {target} does not exist; the model has {output.shape[1]} outputs.")
        seed = torch.zeros_like(output)
        seed[:, target] = 1.0
        return seed

    with (attribution_copy(model, Mode.LRP, x) as net, torch.enable_grad(),
          Gradient(model=net, composite=composite) as attributor):
        _, relevance = attributor(x.detach().clone(), one_hot)
    return relevance[0]
