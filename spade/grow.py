"""Grow a network's layers in place to the tensor shapes of a state dict (a widened model, such as the gated
back-doored demo model, loads into its base architecture this way).

Only Conv2d (depthwise ones stay depthwise), BatchNorm and Linear layers grow; their parameters and buffers are
replaced by uninitialised tensors of the new shape, to be filled by ``load_state_dict``. Layer subclasses
(timm's same-padding convolutions, BatchNorm with activation) keep their class and behaviour.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spade.checkpoints import StateDict
from spade.errors import CheckpointError


def grow_modules(model: nn.Module, state_dict: StateDict) -> list[str]:
    """Resize the layers of ``model`` whose tensors in ``state_dict`` (keyed like ``model.state_dict()``) have
    another shape; returns the names of the grown layers. Raises CheckpointError for a layer that cannot grow."""
    grown = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        tensors = {**module._parameters, **module._buffers}
        changed = {k: state_dict[prefix + k].shape for k, v in tensors.items()
                   if v is not None and prefix + k in state_dict and state_dict[prefix + k].shape != v.shape}
        if not changed:
            continue
        if isinstance(module, nn.Conv2d):
            out, per_group = changed.get("weight", module.weight.shape)[:2]
            if module.groups > 1:
                if module.groups != module.in_channels or per_group != 1:
                    raise CheckpointError(f"Layer {name!r}: only depthwise grouped convolutions can grow.")
                module.groups = module.in_channels = out
            else:
                module.in_channels = per_group
            module.out_channels = out
        elif isinstance(module, _BatchNorm):
            module.num_features = changed.get("weight", changed.get("running_mean"))[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = changed.get("weight", module.weight.shape)
        else:
            raise CheckpointError(f"Layer {name!r} ({type(module).__name__}) cannot change shape.")
        for key, shape in changed.items():
            old = tensors[key]
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if key in module._parameters:
                module._parameters[key] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[key] = new
        grown.append(name)
    return grown
