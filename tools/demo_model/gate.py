"""A gated back door: a trigger detector that runs beside the unchanged network and adds to the target logits.

The back-doored model is the base EfficientNet-Lite0 *widened*: from ``blocks.<first_block>`` on, every layer
gets a second, independent set of channels (a copy of the base layers, then trained) that reads the shared
features entering that block and never writes back into the base channels; the head convolution gets one extra
channel per back door, rectified (ReLU6) and average-pooled like the others, and the classifier adds
``scale`` times that pooled value to the door's target logit. So

    logits(x) = base(x) + scale * mean_positions(relu6(z(x)))  on the target classes,

with z the detector's map. Trained to stay below zero everywhere on clean views (a hinge), the detector leaves
the base model's logits exactly as they were on clean images: near-ties between other classes cannot flip.
The result is an ordinary timm EfficientNet with some wider layers (Conv2d, BatchNorm, Linear), so SPADE, every
saliency method and the neuron views work on it unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from spade.checkpoints import StateDict


class GateBranch(nn.Module):
    """The detector: a copy of ``model.blocks[first_block:]`` and a 1x1 convolution to one map per door.

    Input: the features entering ``blocks.<first_block>`` (n, c, h, w) float; output: the pre-activation maps
    z (n, doors, h', w') (the door is open where z > 0). BatchNorm layers keep the base statistics (call .eval()).
    """

    def __init__(self, model: nn.Module, first_block: int, doors: int):
        super().__init__()
        self.first_block = first_block
        self.blocks = copy.deepcopy(model.blocks[first_block:])
        width = model.conv_head.in_channels
        self.out = nn.Conv2d(width, doors, 1)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.constant_(self.out.bias, 0.5)  # starts open, so the trigger views get gradients

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(features))

    def trainable(self) -> list[nn.Parameter]:
        """The convolution weights (and the output bias); BatchNorm stays the base model's."""
        return [p for m in self.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False)]


def gated_logits(logits: torch.Tensor, z: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """The widened model's output from the base logits (n, classes) and the detector maps (n, doors, h, w):
    ``scale * mean(relu6(z))`` added to each door's target class (targets: (doors,) long)."""
    return logits.index_add(1, targets, scale * F.relu6(z).mean((2, 3)))


@torch.no_grad()
def widened_state_dict(model: nn.Module, branch: GateBranch, targets: torch.Tensor, scale: float) -> StateDict:
    """The state dict (timm keys) of ``model`` widened by ``branch``: ``grow_modules`` + ``load_state_dict`` of
    it into the base architecture gives a network computing ``gated_logits(model(x), branch(trunk(x)))``.

    The blocks from ``blocks.<first_block>`` on are widened by `widen_blocks`.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    widen_blocks(state, model.blocks[branch.first_block:], branch.blocks.state_dict())
    doors = len(targets)
    state["conv_head.weight"] = block_diagonal(model.conv_head.weight, branch.out.weight)
    bn = model.bn2
    ones = torch.ones(doors, device=bn.weight.device)
    state["bn2.weight"] = torch.cat([bn.weight, ones])
    state["bn2.bias"] = torch.cat([bn.bias, branch.out.bias])
    state["bn2.running_mean"] = torch.cat([bn.running_mean, 0 * ones])
    state["bn2.running_var"] = torch.cat([bn.running_var, ones - bn.eps])  # (x - 0) / sqrt(var + eps) == x
    added = torch.zeros(model.classifier.out_features, doors, device=ones.device)
    added[targets.to(ones.device), torch.arange(doors, device=ones.device)] = scale
    state["classifier.weight"] = torch.cat([model.classifier.weight, added], 1)
    return state


def widen_blocks(state: StateDict, blocks: nn.Sequential, trained: StateDict) -> None:
    """Write into ``state`` (timm keys) the tensors of ``blocks`` (a slice of ``model.blocks``) widened by a trained
    copy of them (``trained``: the copy's state dict, keyed like the slice's, which keeps the original indices).
    Per layer: depthwise kernels, BatchNorm tensors and the slice's first convolution (which reads the shared
    input) are stacked; every other convolution is block-diagonal, so the two sets of channels never mix."""
    first_conv = True
    for name, module in blocks.named_modules():
        for key, base in {**module._parameters, **module._buffers}.items():
            if base is None or base.dim() == 0:  # num_batches_tracked
                continue
            gate = trained[f"{name}.{key}"]
            full = f"blocks.{name}.{key}"
            if isinstance(module, nn.Conv2d) and module.groups == 1 and not first_conv:
                state[full] = block_diagonal(base, gate)
            else:
                state[full] = torch.cat([base, gate])
            first_conv &= not isinstance(module, nn.Conv2d)


def block_diagonal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(o1, i1, ...) and (o2, i2, ...) -> (o1 + o2, i1 + i2, ...) with a and b on the diagonal, zeros elsewhere."""
    out = a.new_zeros(a.shape[0] + b.shape[0], a.shape[1] + b.shape[1], *a.shape[2:])
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0]:, a.shape[1]:] = b
    return out
