"""Which layers SPADE prunes, selected by module type, and the blocks they belong to.

Names are only used for display and for profiles; selection is by type:
every ``nn.Conv2d`` (including subclasses such as timm's ``Conv2dSame``) and ``nn.Linear``,
except the stem (the first convolution) and depthwise convolutions unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def is_depthwise(module: nn.Module) -> bool:
    """A convolution whose every group holds one input channel (groups == in_channels > 1)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def layer_kind(module: nn.Module) -> str:
    """Human-readable kind: "linear", "conv1x1", "conv3x3", "depthwise3x3", "grouped-conv3x3"."""
    if isinstance(module, nn.Linear):
        return "linear"
    kh, kw = module.kernel_size
    size = f"{kh}x{kw}"
    if is_depthwise(module):
        return f"depthwise{size}"
    if module.groups > 1:
        return f"grouped-conv{size}"
    return f"conv{size}"


@dataclass(frozen=True)
class LayerSelection:
    """Options for choosing target layers by type."""

    include_stem: bool = False
    include_depthwise: bool = False


def prunable_layers(model: nn.Module, selection: LayerSelection = LayerSelection()) -> dict[str, nn.Module]:
    """Target layers of `model` in registration order: {qualified name: module}.

    The stem is the first ``nn.Conv2d`` in registration order (the image-facing convolution).
    """
    layers: dict[str, nn.Module] = {}
    seen_first_conv = False
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if isinstance(module, nn.Conv2d) and not seen_first_conv:
            seen_first_conv = True
            if not selection.include_stem:
                continue
        if is_depthwise(module) and not selection.include_depthwise:
            continue
        layers[name] = module
    return layers


def block_of(model: nn.Module, layer_name: str) -> str:
    """The block a layer belongs to, found from the module tree.

    A block is the outermost ancestor (or the layer itself) that is a non-``Sequential`` child
    of an ``nn.Sequential`` container, e.g. ResNet ``layer3.2``, timm EfficientNet ``blocks.5.1``,
    VGG ``features.10``. A layer with no such ancestor (``fc``, ``classifier``, ``conv_head``) is
    its own block.
    """
    parts = layer_name.split(".")
    parent = model
    for i, part in enumerate(parts):
        child = parent.get_submodule(part)
        if isinstance(parent, nn.Sequential) and not isinstance(child, nn.Sequential):
            return ".".join(parts[: i + 1])
        parent = child
    return layer_name


def blocks(model: nn.Module, selection: LayerSelection = LayerSelection()) -> dict[str, list[str]]:
    """{block name: [target layer names]} in registration order."""
    out: dict[str, list[str]] = {}
    for name in prunable_layers(model, selection):
        out.setdefault(block_of(model, name), []).append(name)
    return out
