"""What a feature visualization maximises: small composable objectives, and the hooks that feed them.

An objective reads *activations*: a mapping ``{key: tensor}`` where a key is ``(layer, channel)``.
``layer`` is a module name of the model (``(B, h, w)`` map of that channel, or ``(B,)`` for a
Linear layer) or ``None`` for the model output (``(B,)`` logit of class ``channel``). Every objective
returns one value per batch row, a ``(B,)`` tensor. Objectives add and scale like numbers::

    2 * ChannelMean("blocks.5.0.conv_pwl", 7) + ClassLogit(281)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from spade.errors import ConfigError

Key = tuple[str | None, int]


class Objective:
    """Base of all objectives (the subclasses are frozen dataclasses)."""

    def keys(self) -> frozenset[Key]:
        """The activations this objective reads."""
        raise NotImplementedError

    def evaluate(self, acts: Mapping[Key, torch.Tensor]) -> torch.Tensor:
        """(B,) objective value per batch row."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short human-readable name, e.g. ``class 281`` or ``layer4.2:17 mean``."""
        raise NotImplementedError

    def terms(self) -> tuple[tuple[float, Objective], ...]:
        return ((1.0, self),)

    def __add__(self, other: Objective) -> WeightedSum:
        if not isinstance(other, Objective):
            return NotImplemented
        return WeightedSum(self.terms() + other.terms())

    def __mul__(self, weight: float) -> WeightedSum:
        if not isinstance(weight, (int, float)):
            return NotImplemented
        return WeightedSum(tuple((float(weight) * w, o) for w, o in self.terms()))

    __rmul__ = __mul__

    def __neg__(self) -> WeightedSum:
        return self * -1.0

    def __sub__(self, other: Objective) -> WeightedSum:
        return self + (-other)


@dataclass(frozen=True)
class ClassLogit(Objective):
    """The logit (pre-softmax output) of class ``index``."""

    index: int

    def keys(self) -> frozenset[Key]:
        return frozenset({(None, self.index)})

    def evaluate(self, acts):
        return acts[(None, self.index)]

    def describe(self) -> str:
        return f"class {self.index}"


@dataclass(frozen=True)
class ChannelMean(Objective):
    """The mean of channel ``channel`` of module ``layer``'s output over all spatial positions."""

    layer: str
    channel: int

    def keys(self) -> frozenset[Key]:
        return frozenset({(self.layer, self.channel)})

    def evaluate(self, acts):
        a = acts[(self.layer, self.channel)]
        return a.flatten(1).mean(1) if a.dim() > 1 else a

    def describe(self) -> str:
        return f"{self.layer}:{self.channel} mean"


@dataclass(frozen=True)
class Neuron(Objective):
    """One spatial neuron: channel ``channel`` of ``layer`` at grid position (y, x) of that layer's
    output for the input size in use; None means the centre (``h // 2``, ``w // 2``)."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def keys(self) -> frozenset[Key]:
        return frozenset({(self.layer, self.channel)})

    def evaluate(self, acts):
        a = acts[(self.layer, self.channel)]
        if a.dim() != 3:
            raise ConfigError(f"Layer {self.layer} has no spatial output; use its channel mean instead.")
        h, w = a.shape[1:]
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if not (0 <= y < h and 0 <= x < w):
            raise ConfigError(f"Position ({y}, {x}) is outside the {h}x{w} output of {self.layer}.")
        return a[:, y, x]

    def describe(self) -> str:
        where = "centre" if self.y is None and self.x is None else f"({self.y}, {self.x})"
        return f"{self.layer}:{self.channel} at {where}"


@dataclass(frozen=True)
class WeightedSum(Objective):
    """``sum_i weight_i * objective_i``; terms: ((weight, objective), ...)."""

    parts: tuple[tuple[float, Objective], ...]

    def __post_init__(self):
        if not self.parts:
            raise ConfigError("A weighted sum needs at least one objective.")

    def terms(self) -> tuple[tuple[float, Objective], ...]:
        return self.parts

    def keys(self) -> frozenset[Key]:
        return frozenset().union(*(o.keys() for _, o in self.parts))

    def evaluate(self, acts):
        return sum(w * o.evaluate(acts) for w, o in self.parts)

    def describe(self) -> str:
        return " + ".join(f"{w:g}*({o.describe()})" for w, o in self.parts)


# --------------------------------------------------------------------------------------------------------------
def objective_keys(objectives: Sequence[Objective]) -> frozenset[Key]:
    return frozenset().union(*(o.keys() for o in objectives))


def check_layers(modules: Mapping[str, nn.Module], layers: set[str]) -> None:
    missing = sorted(name for name in layers if name not in modules or name == "")
    if missing:
        hint = ", ".join(n for n in list(modules)[1:6])
        raise ConfigError(f"This model has no layer named {', '.join(missing[:3])}; "
                          f"module names look like: {hint}, ...")


@contextmanager
def capture(model: nn.Module, keys: frozenset[Key]) -> Iterator[dict[Key, torch.Tensor]]:
    """Record the channels named in ``keys`` during every forward pass inside the block.

    Yields a dict that each forward fills with ``{(layer, channel): output[:, channel]}`` (a copy, so that
    later in-place operations of the model do not change it; autograd flows through it). A module called
    several times in one forward (a reused activation) keeps its last output. Model-output keys
    (``layer is None``) are not filled here (see ``evaluate``). Hooks are always removed on exit, also
    when the forward pass raises; unknown layer names raise ConfigError before any hook is added.
    """
    modules = dict(model.named_modules())
    channels: dict[str, list[int]] = {}
    for layer, channel in keys:
        if layer is not None:
            channels.setdefault(layer, []).append(channel)
    check_layers(modules, set(channels))
    store: dict[Key, torch.Tensor] = {}

    def make_hook(name: str, wanted: list[int]):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                raise ConfigError(f"Layer {name} does not output a (batch, channels, ...) tensor.")
            for c in wanted:
                if not 0 <= c < output.shape[1]:
                    raise ConfigError(f"Layer {name} has {output.shape[1]} channels; channel {c} does not exist.")
                store[(name, c)] = output[:, c].clone()
        return hook

    handles = []
    try:
        for name, wanted in channels.items():
            handles.append(modules[name].register_forward_hook(make_hook(name, wanted)))
        yield store
    finally:
        for h in handles:
            h.remove()


def evaluate(objectives: Sequence[Objective], output: torch.Tensor, store: Mapping[Key, torch.Tensor]
             ) -> torch.Tensor:
    """(B, len(objectives)) values of every objective on every row, from the model ``output`` (B, classes)
    and the activations ``capture`` recorded in the same forward pass."""
    acts = dict(store)
    for layer, index in objective_keys(objectives):
        if layer is None:
            if output.dim() != 2 or not 0 <= index < output.shape[1]:
                raise ConfigError(f"Class {index} does not exist; the model has {output.shape[-1]} outputs.")
            acts[(None, index)] = output[:, index]
    return torch.stack([o.evaluate(acts) for o in objectives], dim=1)


def objective_values(model: nn.Module, x: torch.Tensor, objectives: Sequence[Objective]) -> torch.Tensor:
    """One forward pass of ``x`` (B, 3, H, W), normalized) -> (B, len(objectives)) values (grad follows
    the caller's mode)."""
    with capture(model, objective_keys(objectives)) as store:
        output = model(x)
    return evaluate(objectives, output, store)


def check_objective(model: nn.Module, objective: Objective, x: torch.Tensor) -> None:
    """Raise ConfigError now (before any long computation) when ``objective`` names a layer, channel, class or
    position this model does not have for input ``x`` (1, 3, H, W); one forward pass without gradients."""
    with torch.no_grad():
        objective_values(model, x, [objective])


def parse_neuron(text: str, predicted: int | None = None) -> Objective:
    """Parse a neuron given on the command line or in the app.

    ``class:PRED`` (the class ``predicted`` for the image), ``class:IDX``, ``LAYER:CHANNEL`` (channel mean)
    or ``LAYER:CHANNEL:Y:X`` (one spatial neuron). Raises ConfigError with the accepted forms otherwise.
    """
    forms = "class:PRED, class:INDEX, LAYER:CHANNEL or LAYER:CHANNEL:Y:X"
    parts = text.strip().split(":")
    try:
        if parts[0] == "class" and len(parts) == 2:
            if parts[1].upper() == "PRED":
                if predicted is None:
                    raise ConfigError("class:PRED needs the image's predicted class.")
                return ClassLogit(int(predicted))
            return ClassLogit(int(parts[1]))
        if len(parts) == 2 and parts[0]:
            return ChannelMean(parts[0], int(parts[1]))
        if len(parts) == 4 and parts[0]:
            return Neuron(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        pass
    raise ConfigError(f"Cannot read neuron {text!r}; use {forms}.")
