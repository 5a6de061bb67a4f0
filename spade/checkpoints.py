"""Reading classifier checkpoints safely and fitting their state dicts to an architecture.

Every pickle goes through ``torch.load(..., weights_only=True, map_location="cpu")``: a checkpoint that
needs arbitrary Python objects is refused, never executed. Supported layouts:

* a plain state dict ({name: tensor}), from ``.pth`` / ``.pt`` files, bytes or file objects;
* a state dict nested under ``state_dict`` / ``model`` / ``model_state_dict`` / ``net`` (training checkpoints);
* keys prefixed by ``module.`` (DataParallel), ``_orig_mod.`` (torch.compile) or ``model.``;
* the SPADE authors' back-doored ResNet-50 (robustness library): ``module.model.*`` weights beside
  ``module.attacker.*`` / ``module.normalizer.*`` copies that are dropped;
* TorchScript archives (detected by their ``constants.pkl`` / ``code/`` entries): loaded, and run once on an
  example input, only in a child process with time limits (`spade.torchscript`); this process keeps their state
  dict and output, never their code.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from spade.errors import CheckpointError
from spade.torchscript import ScriptRun, run_torchscript

logger = logging.getLogger(__name__)

CheckpointSource = str | os.PathLike | bytes | bytearray | BinaryIO
StateDict = dict[str, torch.Tensor]
#: Optional per-architecture key conversion, ``(state_dict, model) -> state_dict``.
KeyConverter = Callable[[StateDict, nn.Module], StateDict]

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Auxiliary modules of robustness-library models (the SPADE authors' Trojan ResNet-50s): a second copy of the
# network inside the attacker and an input normalizer. They are not part of the classifier.
_AUX_PREFIXES = ("attacker.", "normalizer.")
_SHOW = 5  # how many keys of each kind an error message names


@dataclass
class RawCheckpoint:
    """What a checkpoint file holds: a state dict; for a TorchScript file also ``script``, what its forward gave on
    the example input (then ``state_dict`` is the script's own)."""

    label: str
    state_dict: StateDict
    script: ScriptRun | None = None


def read_checkpoint(source: CheckpointSource, *, label: str | None = None, example: torch.Tensor | None = None,
                    forward_seconds: float | None = None) -> RawCheckpoint:
    """Read a checkpoint from a path, bytes or a binary file object, on the CPU.

    A TorchScript file is loaded in a child process (`spade.torchscript.run_torchscript`), whose forward runs once
    on ``example`` (e.g. a (2, 3, H, W) float tensor) when given, within ``forward_seconds``. Raises
    CheckpointError for a missing, empty, corrupt or unsafe file, one that holds no state dict, or a TorchScript
    file whose loading or forward passes its time limit.
    """
    data, label = _read_source(source, label)
    if _is_torchscript(data):
        run = run_torchscript(data, example, label=label, forward_seconds=forward_seconds)
        return RawCheckpoint(label=label, state_dict=run.state_dict, script=run)
    try:
        obj = torch.load(_stream(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for bad files (KeyError, EOFError, RuntimeError, ...)
        raise _load_error(exc, label) from None
    return RawCheckpoint(label=label, state_dict=extract_state_dict(obj, label))


def extract_state_dict(obj: object, label: str = "checkpoint") -> StateDict:
    """Find the {name: tensor} mapping inside a loaded checkpoint object (nested training checkpoints too)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"The checkpoint {label} holds a {type(obj).__name__}, not a state dict; "
            "save one with torch.save(model.state_dict(), path)."
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return dict(tensors)
    for key in _NESTED_KEYS:
        if isinstance(obj.get(key), Mapping):
            return extract_state_dict(obj[key], label)
    if tensors:
        return dict(tensors)
    keys = ", ".join(map(str, list(obj)[:_SHOW]))
    raise CheckpointError(f"The checkpoint {label} holds no state dict (its top-level keys are: {keys}).")


def fit_state_dict(
    state_dict: StateDict,
    model: nn.Module,
    *,
    arch: str,
    label: str = "checkpoint",
    convert: KeyConverter | None = None,
) -> StateDict:
    """Rename ``state_dict`` keys to the model's names and check every key and shape.

    Tries the known wrapper prefixes (and ``convert``), keeps the variant that matches most model keys,
    and raises CheckpointError naming missing keys, unexpected keys and shape mismatches unless it fits
    exactly. Missing ``num_batches_tracked`` buffers (old BatchNorm checkpoints; unused in eval mode) are
    taken from the model. Returns a state dict that ``model.load_state_dict(..., strict=True)`` accepts.
    """
    best, (missing, unexpected, mismatched) = _best_fit(state_dict, model, label, convert)
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(label, arch, missing, unexpected, mismatched))
    return best


def fit_script_state_dict(
    state_dict: StateDict,
    model: nn.Module,
    *,
    arch: str,
    label: str = "checkpoint",
    convert: KeyConverter | None = None,
) -> StateDict:
    """`fit_state_dict` for the state dict of a TorchScript model: the CheckpointError names the first difference
    (in the order of the architecture's own parameters) and how many there are in all."""
    best, (missing, unexpected, mismatched) = _best_fit(state_dict, model, label, convert)
    count = len(missing) + len(unexpected) + len(mismatched)
    if not count:
        return best
    target = model.state_dict()
    order = {key: i for i, key in enumerate(target)}
    firsts = [(order[k], f"{arch}'s {k} {_shape(target[k])} is missing") for k in missing[:1]]
    firsts += [(order[k], f"its {k} has the shape {c} where {arch}'s has {m}") for k, c, m in mismatched[:1]]
    first = min(firsts)[1] if firsts else f"it has a {unexpected[0]} {_shape(best[unexpected[0]])} that {arch} lacks"
    others = f" (and {count - 1} more difference(s))" if count > 1 else ""
    raise CheckpointError(
        f"The TorchScript model {label} does not have the parameters of {arch}: {first}{others}; choose the "
        f"architecture it was made from, or script {arch} itself."
    )


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _best_fit(
    state_dict: StateDict, model: nn.Module, label: str, convert: KeyConverter | None
) -> tuple[StateDict, tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]]:
    """The prefix variant of ``state_dict`` that matches most model keys, and its (missing, unexpected,
    mismatched) keys against the model's state dict."""
    target = model.state_dict()
    best, best_score = state_dict, -1
    for candidate in _prefix_variants(state_dict):
        if convert is not None:
            candidate = convert(candidate, model)
        score = sum(k in target for k in candidate)
        if score > best_score:
            best, best_score = candidate, score
    dropped = len(state_dict) - len(best)
    if dropped > 0:
        logger.info("Dropped %d auxiliary entries (attacker/normalizer) from %s.", dropped, label)
    best = dict(best)
    for key, value in target.items():
        if key not in best and key.endswith("num_batches_tracked"):
            best[key] = value
    missing = [k for k in target if k not in best]
    unexpected = [k for k in best if k not in target]
    mismatched = [
        (k, tuple(v.shape), tuple(target[k].shape))
        for k, v in best.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    return best, (missing, unexpected, mismatched)


def load_state_dict_into(
    model: nn.Module,
    state_dict: StateDict,
    *,
    arch: str,
    label: str = "checkpoint",
    convert: KeyConverter | None = None,
) -> nn.Module:
    """Load ``state_dict`` strictly into ``model`` (in place) after key fitting; returns the model."""
    fitted = fit_state_dict(state_dict, model, arch=arch, label=label, convert=convert)
    model.load_state_dict(fitted, strict=True)
    return model


def check_finite(state_dict: Mapping[str, torch.Tensor], label: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first floating-point tensor (parameter or buffer) of ``state_dict`` that
    holds a NaN or an infinite value: such a model predicts NaN for every image."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                raise CheckpointError(f"The weights {label} hold {bad} non-finite value(s) (NaN or infinite) in "
                                      f"{name}, of {tensor.numel()}; the model would predict NaN for every image.")


# --------------------------------------------------------------------------------------------------------------
def _read_source(source: CheckpointSource, label: str | None) -> tuple[bytes | Path, str]:
    """Bytes of an in-memory source, or the path of a file (read by torch itself, without a copy in memory)."""
    if isinstance(source, bytes | bytearray):
        data, label = bytes(source), label or "(uploaded bytes)"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        label = label or str(path)
        if not path.is_file():
            raise CheckpointError(f"The checkpoint file {path} does not exist or is not a file.")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CheckpointError(f"The checkpoint file {path} could not be read ({exc.strerror}).") from None
        if size == 0:
            raise CheckpointError(f"The checkpoint {label} is empty.")
        return path, label
    elif hasattr(source, "read"):
        label = label or str(getattr(source, "name", "(file object)"))
        data = source.read()
        if not isinstance(data, bytes | bytearray):
            raise CheckpointError(f"The checkpoint {label} must be opened in binary mode.")
        data = bytes(data)
    else:
        raise CheckpointError(f"Cannot read a checkpoint from a {type(source).__name__}; give a path or bytes.")
    if not data:
        raise CheckpointError(f"The checkpoint {label} is empty.")
    return data, label


def _stream(data: bytes | Path) -> io.BytesIO | str:
    return str(data) if isinstance(data, Path) else io.BytesIO(data)


def _is_torchscript(data: bytes | Path) -> bool:
    """TorchScript archives are zips with ``<root>/constants.pkl`` and ``<root>/code/``; torch.save zips are not."""
    try:
        if not zipfile.is_zipfile(_stream(data)):
            return False
        with zipfile.ZipFile(_stream(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" or "/code/" in n for n in names)


def _load_error(exc: Exception, label: str) -> CheckpointError:
    text = str(exc)
    if "Weights only load failed" in text:
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({match.group(1)})" if match else ""
        return CheckpointError(
            f"The checkpoint {label} was refused for safety and not executed: it contains Python objects{what} "
            "beyond tensors; save only the weights with torch.save(model.state_dict(), path)."
        )
    return CheckpointError(
        f"The checkpoint {label} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
        "it is corrupt, truncated or not a PyTorch checkpoint."
    )


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _prefix_variants(state_dict: StateDict) -> list[StateDict]:
    """The state dict as is, then with one more wrapper prefix stripped per step (aux entries dropped)."""
    variants = [state_dict]
    current = state_dict
    for _ in range(4):
        core = {k: v for k, v in current.items() if not k.startswith(_AUX_PREFIXES)}
        prefix = next((p for p in _WRAPPER_PREFIXES if core and all(k.startswith(p) for k in core)), None)
        if prefix is None:
            break
        current = {k[len(prefix):]: v for k, v in core.items()}
        variants.append(current)
    return variants


def _mismatch_message(
    label: str,
    arch: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    def names(keys: list[str]) -> str:
        more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
        return ", ".join(keys[:_SHOW]) + more

    parts = []
    if missing:
        parts.append(f"missing keys: {names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {names(unexpected)}")
    if mismatched:
        shown = [f"{k} (checkpoint {tuple(c)}, model {tuple(m)})" for k, c, m in mismatched[:_SHOW]]
        more = f" (+{len(mismatched) - _SHOW} more)" if len(mismatched) > _SHOW else ""
        parts.append("shape mismatches: " + ", ".join(shown) + more)
    return (
        f"The checkpoint {label} does not fit the architecture {arch} — " + "; ".join(parts)
        + f" — check that it was trained with {arch}."
    )
