"""The keep-the-decision policy: the ladder of sparsities a trace tries, in order, until it predicts the dense
model's top-1 class (`spade.trace.solve_keeping_decision` walks it)."""

from __future__ import annotations

from dataclasses import dataclass

from spade.errors import ConfigError
from spade.sparsity import Sparsity, scaled_sparsity

#: The default ladder: each rung removes a fifth of the requested sparsity.
BACKOFF_FACTORS = (0.8, 0.6, 0.4, 0.2)


@dataclass(frozen=True)
class KeepDecision:
    """A ladder of lower sparsities to fall back to when a trace changes the dense model's top-1 class.

    factors: the rungs after the requested sparsity, in the order tried, each a factor in (0, 1] that multiplies
    every target of the requested sparsity (uniform value, mapping or profile; `spade.sparsity.scaled_sparsity`).
    No factors: the paper's protocol, the requested sparsity only.
    """

    factors: tuple[float, ...] = BACKOFF_FACTORS

    def __post_init__(self):
        if any(not 0.0 < f <= 1.0 for f in self.factors):
            raise ConfigError(f"Keep-decision factors must be in (0, 1], got {self.factors}.")

    @classmethod
    def toward(cls, level: float, levels: tuple[float, ...]) -> KeepDecision:
        """The ladder that takes a sparsity whose highest target is ``level`` (in (0, 1)) to the highest targets
        ``levels`` in turn (each in (0, level]): e.g. a late-blocks profile at 0.95 to 0.9, 0.8, ..."""
        if not 0.0 < level < 1.0:
            raise ConfigError(f"A ladder's starting level must be in (0, 1), got {level}.")
        return cls(tuple(v / level for v in levels))

    @property
    def enabled(self) -> bool:
        """Whether the policy backs off at all (False: the paper's protocol)."""
        return bool(self.factors)

    @property
    def scales(self) -> tuple[float, ...]:
        """The factor of the requested sparsity at each step: 1.0, then ``factors``."""
        return (1.0, *self.factors)

    def when(self, keep: bool) -> KeepDecision:
        """This ladder when ``keep``, else the paper's protocol (no back-off)."""
        return self if keep else KeepDecision(())

    def candidates(self, requested: Sparsity) -> tuple[Sparsity, ...]:
        """The sparsities tried in turn: ``requested``, then ``requested`` scaled by each factor."""
        return (requested, *(scaled_sparsity(requested, f) for f in self.factors))

    def levels(self, level: float) -> tuple[float, ...]:
        """The uniform levels the rungs give a requested uniform ``level`` (for messages)."""
        return tuple(level * f for f in self.factors)

    def to_json(self) -> list[float]:
        return list(self.factors)
