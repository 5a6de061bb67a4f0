"""Argument types of the command line: each parses one option's text and checks its range while the arguments
are parsed, so that a bad value is refused (exit code 2, argparse's usage line and one sentence) before any
model is loaded or any statistics are collected.

The limits are the library's own (`spade.defaults`, `spade.sparsity`), so the CLI refuses exactly what the
library would refuse later. Only ``profile`` imports torch, and only when ``--profile`` is given.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from spade.defaults import MAX_AUGMENTATIONS, MAX_SEED
from spade.errors import SpadeError


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def _whole(name: str, low: int, high: int | None, message: str) -> Callable[[str], int]:
    """An argument type for a whole number in [low, high] (no upper bound when high is None); ``message`` is
    formatted with the refused ``value``."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(message.format(value=value))
        return value

    parse.__name__ = name
    return parse


#: Counts: samples, steps, views, batch size, threads, ...
positive = _whole("positive", 1, None, "must be at least 1, got {value}")
#: Points per insertion / deletion curve.
curve_steps = _whole("curve_steps", 2, None, "a curve needs at least 2 steps, got {value}")
#: A class index (its upper bound is checked once the model is known).
class_index = _whole("class_index", 0, None, "must be a class index >= 0, got {value}")
#: Augmented views, up to spade.defaults.MAX_AUGMENTATIONS.
augmentations = _whole("augmentations", 1, MAX_AUGMENTATIONS,
                       f"must be between 1 and {MAX_AUGMENTATIONS} augmented views, got {{value}}")
#: A seed, up to spade.defaults.MAX_SEED (2**63 - 1).
seed = _whole("seed", 0, MAX_SEED, f"a seed must be between 0 and {MAX_SEED} (2**63 - 1), got {{value}}")


def sparsity(text: str) -> float:
    """A uniform sparsity target in [0, 1)."""
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a sparsity must be in [0, 1), got {value:g}")
    return value


def levels(text: str) -> tuple[float, ...]:
    """Comma-separated sparsity levels, each in [0, 1) (a tuning grid)."""
    values = tuple(sparsity(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("needs at least one sparsity level, e.g. 0,0.5,0.9")
    return values


def agreement(text: str) -> float:
    """A share of samples in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], got {value:g}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (an opacity)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0 (the solver's dampening)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def profile(text: str):
    """A sparsity profile (`spade.sparsity.load_profile`: built-in name, shipped stem or JSON file), read now."""
    from spade.sparsity import load_profile

    try:
        return load_profile(text)
    except SpadeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def method_profile(text: str):
    """``METHOD=PROFILE`` (--method-profile) -> (method, sparsity): PROFILE a uniform value in [0, 1) or a profile
    (see ``profile``). The method's name is checked with the others' (`spade_lab.benchmark.parse_methods`)."""
    method, sep, source = (part.strip() for part in text.partition("="))
    if not sep or not method or not source:
        raise argparse.ArgumentTypeError(f"takes METHOD=PROFILE, got {text!r}")
    try:
        float(source)
    except ValueError:
        return method, profile(source)
    return method, sparsity(source)
