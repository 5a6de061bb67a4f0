"""A fast forward-only copy of a model: same function, fewer and faster operations.

The copy is an eval-mode deep copy with BatchNorm folded into the preceding convolutions (``fold.py``) and,
when that still gives the same outputs, the channels_last memory format (oneDNN runs depthwise
convolutions faster that way on the CPU). On EfficientNet-Lite0 a forward pass over a batch of 64
views took 0.41 of the original model's time, on ResNet-50 0.49 (``benchmarks/bench_forward_copy.py``, output in
``benchmarks/results/forward-copy-2026-12-06/``; 2-core CPU, busy). Module names of convolutions and linear
layers are kept, so hooks can be placed by name.

Users: statistics collection (one pass over all augmentations) and the forward-only saliency methods
(Occlusion, LIME, CAMs, the metrics' curves). The given model is never modified. Each copy is checked on
the first input it sees against an eval-mode copy of the model (``rtol=1e-4``, TF32 off on a GPU; a folded
copy that does not match is replaced by the plain eval copy), cached per model object in a weak-keyed cache
and rebuilt when a parameter or buffer of the model was replaced or changed in place (``data_ptr`` and
version counter). A lock per copy serialises concurrent users, who may add hooks.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from spade.devices import full_float32
from spade.fold import fold_batchnorm

log = logging.getLogger(__name__)


@dataclass
class CachedCopy:
    """A checked copy of a model. fingerprint: the model's parameters and buffers when it was built;
    num_outputs: size of the model's output's last dimension (classes)."""

    fingerprint: tuple
    model: nn.Module
    num_outputs: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def fingerprint(model: nn.Module) -> tuple:
    """Identity and version of every parameter and buffer: changes when any is replaced or changed in place."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


def outputs_match(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Same shape and values up to float rounding (rtol 1e-4, atol 1e-5 of the largest magnitude)."""
    scale = float(expected.abs().max()) + 1e-6
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


def frozen_eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy whose parameters do not require grad."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    return work


def build_forward_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` with BatchNorm folded (not checked, not cached)."""
    work = frozen_eval_copy(model)
    fold_batchnorm(work)
    return work


def prefer_channels_last(work: nn.Module, example: torch.Tensor, expected: torch.Tensor) -> nn.Module:
    """``work`` with its 4-D weights in channels_last when that still gives ``expected`` on ``example``.

    Models whose forward needs contiguous NCHW tensors (``.view`` after a conv, ...) keep the default layout.
    """
    if not any(p.dim() == 4 for p in work.parameters()):
        return work
    candidate = copy.deepcopy(work).to(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), full_float32():
            ok = outputs_match(candidate(example), expected)
    except RuntimeError:
        ok = False
    return candidate if ok else work


def _build_checked(model: nn.Module, example: torch.Tensor) -> CachedCopy:
    stamp = fingerprint(model)
    reference = frozen_eval_copy(model)
    with torch.no_grad(), full_float32():
        expected = reference(example)
        work = build_forward_copy(model)
        if not outputs_match(work(example), expected):
            log.warning("Folding BatchNorm changed %s's outputs; using the unfolded copy.", type(model).__name__)
            work = reference
    return CachedCopy(stamp, prefer_channels_last(work, example, expected), int(expected.shape[-1]))


def checked_forward_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A forward copy of ``model`` checked on ``example`` as the cached ones are, but not cached: for a model that
    is about to change (a trace whose last layer is refitted right after)."""
    return _build_checked(model, example).model


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, CachedCopy]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def cached_copy(model: nn.Module, kind: Hashable, build: Callable[[], CachedCopy]) -> CachedCopy:
    """The cached copy of ``model`` of this ``kind``, from ``build()`` when missing or stale (the model's
    parameters or buffers changed since). Copies die with their model (weak keys)."""
    stamp = fingerprint(model)
    with _CACHE_LOCK:
        entry = _CACHE.get(model, {}).get(kind)
    if entry is not None and entry.fingerprint == stamp:
        return entry
    entry = build()
    with _CACHE_LOCK:
        _CACHE.setdefault(model, {})[kind] = entry
    return entry


def cached_forward_copy(model: nn.Module, example: torch.Tensor) -> CachedCopy:
    """The cached, checked forward copy of ``model``, built from ``example`` ((1, ...) input on the model's
    device) when missing or stale."""
    return cached_copy(model, "forward", lambda: _build_checked(model, example))


@contextmanager
def forward_copy(model: nn.Module, example: torch.Tensor) -> Iterator[nn.Module]:
    """Yield the forward copy of ``model`` (see the module docstring), locked for the ``with`` block."""
    entry = cached_forward_copy(model, example)
    with entry.lock:
        yield entry.model


def clear_copies() -> None:
    """Drop every cached copy (forward and attribution copies)."""
    with _CACHE_LOCK:
        _CACHE.clear()
