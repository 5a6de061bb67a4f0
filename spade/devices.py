"""Device selection. The library never hard-codes CUDA: callers pass a device or "auto"."""

from __future__ import annotations

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
