"""Device selection. The library never hard-codes CUDA: callers pass a device or "auto"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from spade.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda" / "cuda:N" / a torch.device into a usable torch.device.

    "auto" (or None) picks CUDA when present, else the CPU. Asking for CUDA on a machine without
    it raises ConfigError instead of failing later inside a kernel.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Unknown device {device!r}; use auto, cpu or cuda.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no CUDA GPU is available; use device 'cpu' or 'auto'.")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def full_float32() -> Iterator[None]:
    """Inside the block, CUDA float32 convolutions and matrix products run without TF32 (the flags are restored
    afterwards, also on errors; the CPU is unaffected).

    cuDNN convolutions default to TF32 on Ampere and later GPUs (relative error ~1e-3): more than the float
    rounding that a check of two equivalent copies of a model allows, and noise in the layer statistics that
    the CPU does not have. Both run in here. The flags are process-wide, so another thread's CUDA work is
    briefly full float32 too (slower, never less accurate).
    """
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Inside the block, PyTorch's CPU operators use at most `count` threads (None: unchanged); the previous count
    is restored afterwards, also on errors.

    The count applies to the calling thread's OpenMP and MKL work, so other threads keep theirs; a thread that
    starts using PyTorch while the block runs begins with `count` (PyTorch seeds new threads from the last count
    set), which costs it speed, never correctness.
    """
    if count is None or count >= torch.get_num_threads():
        yield
        return
    if count < 1:
        raise ConfigError(f"A thread count must be at least 1, got {count}.")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
