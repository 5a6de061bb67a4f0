"""Argument types of the command line: each parses one option's text and checks its range while the arguments
are parsed, so that a bad value is refused (exit code 2, argparse's usage line and one sentence) before any
model is loaded or any statistics are collected.

The limits are the library's own (`spade.defaults`, `spade.sparsity`), so the CLI refuses exactly what the
library would refuse later. Only ``profile`` imports torch, and only when ``--profile`` is given.
"""

from __future__ import annotations

import argparse
import math

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


def positive(text: str) -> int:
    """A whole number >= 1 (counts: samples, steps, views, batch size, threads, ...)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def curve_steps(text: str) -> int:
    """Points per insertion / deletion curve: at least 2."""
    value = _integer(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a curve needs at least 2 steps, got {value}")
    return value


def class_index(text: str) -> int:
    """A class index >= 0 (its upper bound is checked once the model is known)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a class index >= 0, got {value}")
    return value


def augmentations(text: str) -> int:
    """A number of augmented views in [1, spade.defaults.MAX_AUGMENTATIONS]."""
    value = _integer(text)
    if not 1 <= value <= MAX_AUGMENTATIONS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_AUGMENTATIONS} augmented views, got {value}")
    return value


def seed(text: str) -> int:
    """A seed in [0, spade.defaults.MAX_SEED] (2**63 - 1)."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be between 0 and {MAX_SEED} (2**63 - 1), got {value}")
    return value


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
