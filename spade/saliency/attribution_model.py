"""Attribution copies: a private deep copy of a model in which every activation is one the method handles.

Why: Captum's DeepLift only knows ``nn.ReLU`` (not ``nn.ReLU6``) and fails when one activation module is
called several times per forward pass (torchvision's Bottleneck reuses one ``ReLU(inplace=True)`` three
times); Captum's GuidedBackprop only overrides ``nn.ReLU`` (on ReLU6 models it silently returns the plain
gradient); zennit's batch-norm merging only sees leaf ``BatchNorm`` modules directly after a linear layer
(timm's ``BatchNormAct2d`` hides its activation inside the BN) and its rules need residual additions as
modules. The given model is never modified: everything happens on ``copy.deepcopy(model)``.

What a copy for each :class:`Mode` contains:

* ``PLAIN``: the engine's forward copy (``spade.forward_copy``: BatchNorm folded where the data flow is
  certain, channels_last when equal; same function, fewer ops), for gradient, perturbation and CAM methods.
* Every other mode first splits timm ``BatchNormAct2d`` into ``Sequential(bn, drop, act)`` and gives every
  activation call site its own fresh, non-inplace module. Call sites are found with ``torch.fx``: each
  module's *own* forward is traced with all its children as leaves; if it calls one activation module
  several times, or calls a functional ReLU / ReLU6 / hardtanh, the module is replaced by a
  ``GraphModule`` of the same name with one module per call site. Modules that cannot be traced are left
  as they are and the call counting below reports any reuse that remains.
  - ``DEEPLIFT``: every clamp (ReLU, ReLU6, hardtanh(a, b)) -> :class:`ClampAsReLUs`
    (``a + relu(x - a) - relu(x - b)`` with ``nn.ReLU`` modules that each get a private input tensor), on
    which Captum's rescale rule gives exactly the rescale multiplier of the clamp,
    ``(f(x) - f(x0)) / (x - x0)``; checked by DeepLift's completeness (attributions sum to f(x) - f(0)).
    Max-pooling modules used several times are also split per call site.
  - ``GUIDED``: every clamp -> :class:`GuidedClamp`, whose backward is ``relu(grad) * [a < x < b]``
    (the guided-backprop rule: the true local gradient, then only positive signals pass).
  - ``LRP``: every clamp -> a fresh ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` (zennit passes relevance
    through them), and every addition of two tensors -> ``zennit.layer.Sum`` on the stacked operands so a
    proportional rule can split relevance between a residual branch and its shortcut.

Each copy is checked on the first input it sees: its logits must match an eval-mode copy of the model
(``rtol=1e-4``), else :class:`~spade.errors.SpadeError`. Copies use the channels_last memory format when
that reproduces the logits too (faster on the CPU for depthwise convolutions). Copies are cached per
(model object, mode) in a weak-keyed cache and rebuilt when any parameter or buffer of the model was
replaced or changed in place (tracked by ``data_ptr`` and the tensor version counter); a lock per copy
serialises concurrent users.
"""

from __future__ import annotations

import copy
import enum
import logging
import operator
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import fx, nn

from spade.devices import full_float32
from spade.errors import SpadeError
from spade.fold import ChildrenAreLeaves, is_bn_act
from spade.forward_copy import (
    CachedCopy,
    build_forward_copy,
    cached_copy,
    cached_forward_copy,
    clear_copies,
    fingerprint,
    frozen_eval_copy,
    outputs_match,
    prefer_channels_last,
)

log = logging.getLogger(__name__)


class Mode(str, enum.Enum):
    PLAIN = "plain"
    DEEPLIFT = "deeplift"
    GUIDED = "guided"
    LRP = "lrp"


# --------------------------------------------------------------------------------------------------
# Canonical activation modules
# --------------------------------------------------------------------------------------------------


class _Canonical:
    """Marker base class: a module built by this file, never rewritten again."""


class ClampAsReLUs(nn.Module, _Canonical):
    """``clamp(x, low, high)`` written as ``low + relu(x - low) - relu(x - high)`` with two ``nn.ReLU``.

    Used for DeepLift: each ``nn.ReLU`` gets Captum's rescale multiplier, and the two multipliers add up
    to the rescale multiplier of the clamp itself. Each ReLU's input is a new tensor used by nothing else
    (``x - low`` is computed even for ``low == 0``): Captum hooks the gradient of the ReLU's input
    *tensor*, which would otherwise include the gradient of every other use of that tensor.
    """

    def __init__(self, low: float = 0.0, high: float | None = None):
        super().__init__()
        self.low = float(low)
        self.high = None if high is None else float(high)
        self.lower = nn.ReLU()
        self.upper = nn.ReLU() if high is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lower(x - self.low)
        if self.low != 0.0:
            out = out + self.low
        if self.upper is not None:
            out = out - self.upper(x - self.high)
        return out

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class _GuidedClampFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high):  # noqa: D102
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(min=low, max=high)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (x,) = ctx.saved_tensors
        passes = x > ctx.low
        if ctx.high is not None:
            passes = passes & (x < ctx.high)
        return grad_output.clamp(min=0) * passes.to(grad_output.dtype), None, None


class GuidedClamp(nn.Module, _Canonical):
    """``clamp(x, low, high)`` whose backward is the guided-backprop rule ``relu(grad) * [low < x < high]``."""

    def __init__(self, low: float = 0.0, high: float | None = None):
        super().__init__()
        self.low = float(low)
        self.high = None if high is None else float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedClampFunction.apply(x, self.low, self.high)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class ResidualSum(nn.Module, _Canonical):
    """``a + b`` as zennit's ``Sum`` over the stacked (broadcast) operands, so LRP can split relevance."""

    def __init__(self):
        super().__init__()
        from zennit.layer import Sum

        self.sum = Sum(dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = torch.broadcast_tensors(a, b)
        return self.sum(torch.stack([a, b], dim=-1))


def clamp_bounds(module: nn.Module) -> tuple[float, float | None] | None:
    """(low, high) when the module is a ReLU-type clamp (``ReLU``, ``ReLU6``, ``Hardtanh``), else None."""
    if isinstance(module, _Canonical):
        return None
    if isinstance(module, nn.ReLU):
        return (0.0, None)
    if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
        return (float(module.min_val), float(module.max_val))
    return None


def _is_splittable(module: nn.Module) -> bool:
    """Stateless modules that get one instance per call site: ReLU-type clamps and max pooling."""
    return clamp_bounds(module) is not None or isinstance(module, nn.modules.pooling._MaxPoolNd)


def _canonical_leaf(module: nn.Module, mode: Mode) -> nn.Module | None:
    """A fresh canonical replacement for a splittable module (None when the module stays as it is)."""
    bounds = clamp_bounds(module)
    if bounds is not None:
        return _activation_for(bounds, mode)
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        # no private input here: Captum's max-pool rule went wrong on a cloned input (overlapping windows)
        return copy.deepcopy(module)
    return None


def _activation_for(bounds: tuple[float, float | None], mode: Mode) -> nn.Module:
    low, high = bounds
    if mode is Mode.DEEPLIFT:
        return ClampAsReLUs(low, high)
    if mode is Mode.GUIDED:
        return GuidedClamp(low, high)
    if mode is Mode.LRP:
        if high is None:
            return nn.ReLU() if low == 0.0 else _Shifted(low)
        if low == 0.0 and high == 6.0:
            return nn.ReLU6()
        return nn.Hardtanh(low, high)
    raise ValueError(mode)


class _Shifted(nn.Module, _Canonical):
    """``max(x, low)`` for a ReLU with a non-zero threshold (only reachable through F.threshold-like code)."""

    def __init__(self, low: float):
        super().__init__()
        self.low = low
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x - self.low) + self.low


# functional activations that are turned into modules: function -> bounds from (args, kwargs)
def _hardtanh_bounds(args, kwargs):
    low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    return (float(low), float(high))


_FUNCTIONAL = {
    F.relu: lambda a, k: (0.0, None),
    torch.relu: lambda a, k: (0.0, None),
    torch.relu_: lambda a, k: (0.0, None),
    F.relu6: lambda a, k: (0.0, 6.0),
    F.hardtanh: _hardtanh_bounds,
}
_METHODS = {"relu": lambda a, k: (0.0, None), "relu_": lambda a, k: (0.0, None)}
_ADDS = {operator.add, operator.iadd, torch.add}

# module types that never need their forward rewritten
_LEAF_TYPES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.Flatten,
)


# --------------------------------------------------------------------------------------------------
# Rewriting
# --------------------------------------------------------------------------------------------------


def _unfuse_bn_act(module: nn.Module) -> nn.Module:
    """timm ``BatchNormAct2d`` -> ``Sequential(bn, drop, act)`` computing the same eval-mode function."""
    bn = nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                        track_running_stats=module.track_running_stats)
    bn.weight, bn.bias = module.weight, module.bias
    bn.running_mean, bn.running_var = module.running_mean, module.running_var
    bn.num_batches_tracked = module.num_batches_tracked
    bn.train(module.training)
    return nn.Sequential(OrderedDict(bn=bn, drop=module.drop, act=module.act))


def _fresh_name(module: nn.Module, base: str, taken: set[str]) -> str:
    """A new attribute name ``<base>_site<k>`` that is neither an attribute of ``module`` nor in ``taken``."""
    base = base.replace(".", "_")
    k = 2
    while hasattr(module, f"{base}_site{k}") or f"{base}_site{k}" in taken:
        k += 1
    name = f"{base}_site{k}"
    taken.add(name)
    return name


def _is_tensor_node(arg: object) -> bool:
    return isinstance(arg, fx.Node) and arg.op != "get_attr"


def _rewrite_forward(module: nn.Module, mode: Mode) -> nn.Module:
    """Give each activation call site of ``module``'s own forward its own module (and, for LRP, adds -> Sum).

    Returns ``module`` itself when nothing needs to change, else a ``GraphModule`` holding the same
    children (plus the new ones) with the same class name.
    """
    try:
        graph = ChildrenAreLeaves().trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure just means "leave this module as it is"
        log.debug("torch.fx could not trace %s (%s); its children are still canonicalised", type(module).__name__, exc)
        return module

    sites: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and _is_splittable(module.get_submodule(node.target)):
            sites[node.target] = sites.get(node.target, 0) + 1

    new_modules: dict[str, nn.Module] = {}
    taken: set[str] = set()
    seen: dict[str, int] = {}
    changed = False
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target in sites:
            seen[node.target] = seen.get(node.target, 0) + 1
            if seen[node.target] > 1:  # second and later call of one activation module
                name = _fresh_name(module, node.target, taken)
                new_modules[name] = copy.deepcopy(module.get_submodule(node.target))
                node.target = name
                changed = True
        elif node.op == "call_function" and node.target in _FUNCTIONAL or (
            node.op == "call_method" and node.target in _METHODS
        ):
            table = _FUNCTIONAL if node.op == "call_function" else _METHODS
            bounds = table[node.target](node.args, node.kwargs)
            name = _fresh_name(module, "act", taken)
            new_modules[name] = _activation_for(bounds, mode)
            with graph.inserting_after(node):
                replacement = graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            changed = True
        elif (
            mode is Mode.LRP
            and (node.op == "call_function" and node.target in _ADDS or node.op == "call_method" and node.target
                 in ("add", "add_"))
            and len(node.args) == 2
            and not node.kwargs
            and all(_is_tensor_node(a) for a in node.args)
        ):
            name = _fresh_name(module, "residual_sum", taken)
            new_modules[name] = ResidualSum()
            with graph.inserting_after(node):
                replacement = graph.call_module(name, tuple(node.args))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            changed = True

    if not changed:
        return module
    for name, child in new_modules.items():
        module.add_module(name, child)
    graph.lint()
    rewritten = fx.GraphModule(module, graph, class_name=type(module).__name__)
    rewritten.train(module.training)
    return rewritten


def _canonicalise(module: nn.Module, mode: Mode, memo: dict[int, tuple[nn.Module, nn.Module]]) -> nn.Module:
    """Return the canonical version of ``module`` (a new object for activations, else rewritten in place).

    ``memo`` maps ``id(original) -> (original, result)``; it keeps the original alive so its id is not reused.
    """
    replacement = _canonical_leaf(module, mode)
    if replacement is not None:
        return replacement  # fresh per reference: a shared activation is split per parent
    if id(module) in memo:
        return memo[id(module)][1]
    original = module
    if isinstance(module, _Canonical):
        memo[id(original)] = (original, module)
        return module
    if is_bn_act(module):
        module = _unfuse_bn_act(module)
    elif not isinstance(module, _LEAF_TYPES) and not isinstance(module, nn.Sequential):
        module = _rewrite_forward(module, mode)
    memo[id(original)] = (original, module)
    for key, child in list(module._modules.items()):
        if child is None:
            continue
        new_child = _canonicalise(child, mode, memo)
        if new_child is not child:
            module._modules[key] = new_child
    return module


def build_attribution_copy(model: nn.Module, mode: Mode) -> nn.Module:
    """An eval-mode deep copy of ``model`` canonicalised for ``mode``; parameters do not require grad.

    Not cached and not checked; see :func:`attribution_copy` for the cached, checked version.
    """
    mode = Mode(mode)
    if mode is Mode.PLAIN:
        return build_forward_copy(model)
    work = _canonicalise(frozen_eval_copy(model), mode, {}).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    return work


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


@contextmanager
def count_calls(model: nn.Module, types: tuple[type, ...]) -> Iterator[dict[str, int]]:
    """Count forward calls of every submodule of the given types while the context is open (hooks removed after)."""
    counts: dict[str, int] = {}
    handles = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, types):
                counts[name] = 0

                def hook(mod, inputs, name=name):
                    counts[name] += 1

                handles.append(module.register_forward_pre_hook(hook))
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def _reused(model: nn.Module, example: torch.Tensor, types: tuple[type, ...]) -> list[str]:
    with count_calls(model, types) as counts, torch.no_grad():
        model(example)
    return sorted(name for name, n in counts.items() if n > 1)


def _check_types(mode: Mode) -> tuple[type, ...]:
    if mode is Mode.DEEPLIFT:
        return (nn.ReLU, nn.MaxPool2d)
    if mode is Mode.LRP:
        return (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.Hardtanh,
                nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AvgPoolNd)
    return ()


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def _build_checked(model: nn.Module, mode: Mode, example: torch.Tensor) -> CachedCopy:
    stamp = fingerprint(model)
    plain = cached_forward_copy(model, example)
    with plain.lock, torch.no_grad(), full_float32():
        expected = plain.model(example)
    work = build_attribution_copy(model, mode)
    with torch.no_grad(), full_float32():
        got = work(example)
    if not outputs_match(got, expected):
        raise SpadeError(
            f"The {mode.value} attribution copy of {type(model).__name__} does not reproduce the model's outputs; "
            "this architecture is not supported by that method."
        )
    types = _check_types(mode)
    if types:
        reused = _reused(work, example, types)
        if reused:
            raise SpadeError(
                f"{type(model).__name__} calls module(s) {', '.join(reused[:5])} several times in one forward pass "
                f"and they could not be split; the {mode.value} method cannot explain this model."
            )
    return CachedCopy(stamp, prefer_channels_last(work, example, expected), int(expected.shape[1]))


def _entry(model: nn.Module, mode: Mode, example: torch.Tensor) -> CachedCopy:
    if mode is Mode.PLAIN:
        return cached_forward_copy(model, example)
    return cached_copy(model, mode, lambda: _build_checked(model, mode, example))


@contextmanager
def attribution_copy(model: nn.Module, mode: Mode | str, example: torch.Tensor) -> Iterator[nn.Module]:
    """Yield the cached, checked attribution copy of ``model`` for ``mode`` (built from ``example`` on a miss).

    ``example``: a ``(1, 3, H, W)`` input on the model's device, used to check the copy. The copy is locked
    for the duration of the ``with`` block, so concurrent callers wait instead of sharing hooks.
    """
    entry = _entry(model, Mode(mode), example)
    with entry.lock:
        yield entry.model


def num_outputs(model: nn.Module, example: torch.Tensor) -> int:
    """Number of model outputs (classes) for inputs like ``example``, from the cached plain copy."""
    return _entry(model, Mode.PLAIN, example).num_outputs


def clear_cache() -> None:
    """Drop every cached attribution copy."""
    clear_copies()
