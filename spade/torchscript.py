"""Reading a TorchScript file without running its code in this process, and with time limits.

A TorchScript archive holds code: its ``forward``, and possibly ``__setstate__`` methods that run while it is
loaded. That code runs inside torch's C++ interpreter and never returns to Python until it is done, so a Python
thread with a timeout cannot stop it: the caller could only stop *waiting*, while an endless loop keeps a core
(and its memory) busy until the server exits. The only limit that can really be enforced is a process that is
killed. So the file is loaded, and its forward run once on an example input, in a child process
(``spade/torchscript_child.py``, which imports only torch); this process reads back the state dict and the output
from files (``torch.load(weights_only=True)``) and kills the child when a time limit passes.

The library never runs the scripted forward itself afterwards: `spade.models` loads the weights into the
architecture built in code and compares its output with the script's (see ``spade.models``), so prediction, hooks
and traces always run known code.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spade.errors import CheckpointError, CheckpointTimeoutError

logger = logging.getLogger(__name__)

#: Seconds the child may take to start (import torch).
START_SECONDS = 120.0
#: Seconds the child may take to load the archive (its ``__setstate__`` code included) and save its state dict.
LOAD_SECONDS = 120.0
#: Seconds one forward pass of the example input may take in the child.
FORWARD_SECONDS = 30.0
CHILD_SCRIPT = Path(__file__).resolve().with_name("torchscript_child.py")


@dataclass(frozen=True)
class ScriptRun:
    """What the child found in a TorchScript file.

    state_dict: its parameters and buffers ({name: CPU tensor}). output: the forward's output on the example input
    when it was a single tensor (CPU), else None. returned: what the forward returned, in words (e.g. "a tensor of
    shape (2, 1000)", "a tuple of 2 values"); "" when no forward was run. forward_error: the forward's exception as
    "Type: first line", or None.
    """

    state_dict: dict[str, torch.Tensor]
    output: torch.Tensor | None = None
    returned: str = ""
    forward_error: str | None = None


def run_torchscript(
    source: bytes | Path,
    example: torch.Tensor | None,
    *,
    label: str,
    load_seconds: float | None = None,
    forward_seconds: float | None = None,
) -> ScriptRun:
    """Load the TorchScript file ``source`` (bytes or a path) in a child process and, when ``example`` is given
    (a float tensor, e.g. (N, 3, H, W)), run its forward once on it.

    Time limits: START_SECONDS for the child to import torch, ``load_seconds`` (default LOAD_SECONDS) for loading,
    ``forward_seconds`` (default FORWARD_SECONDS) for the forward; the child is killed when one passes. Raises
    CheckpointError (one sentence) for a file that cannot be loaded or a child that died, CheckpointTimeoutError
    when a time limit passed.
    """
    load_seconds = LOAD_SECONDS if load_seconds is None else load_seconds
    forward_seconds = FORWARD_SECONDS if forward_seconds is None else forward_seconds
    with tempfile.TemporaryDirectory(prefix="spade-torchscript-") as folder:
        tmp = Path(folder)
        try:
            if isinstance(source, bytes):
                path = tmp / "model.pt"
                path.write_bytes(source)
            else:
                path = Path(source)
            example_arg = "-"
            if example is not None:
                torch.save(example.detach().cpu().contiguous(), tmp / "example.pt")
                example_arg = str(tmp / "example.pt")
        except OSError as exc:
            raise CheckpointError(f"The TorchScript file {label} could not be copied for its check into the "
                                  f"temporary folder {folder} ({exc.strerror}).") from None
        _run_child(path, example_arg, tmp, label, example, load_seconds, forward_seconds)
        return _read_results(tmp, label)


def _run_child(path: Path, example_arg: str, tmp: Path, label: str, example: torch.Tensor | None,
               load_seconds: float, forward_seconds: float) -> None:
    read_fd, write_fd = os.pipe()
    with open(tmp / "stderr.txt", "wb") as stderr:
        try:
            child = subprocess.Popen(
                [sys.executable, "-I", str(CHILD_SCRIPT), str(path), example_arg, str(tmp), str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(write_fd,),
            )
        except OSError as exc:
            os.close(read_fd)
            raise CheckpointError(f"The TorchScript file {label} could not be checked: no Python process could "
                                  f"be started for it ({exc.strerror}).") from None
        finally:
            os.close(write_fd)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(read_fd, lines), daemon=True).start()
    try:
        stage = _next_line(lines, START_SECONDS)
        if stage is None:
            raise CheckpointTimeoutError(
                f"Checking the TorchScript file {label} needs a Python process with torch, which did not start "
                f"within {START_SECONDS:g} s; the machine is too busy, try again later."
            )
        started = time.monotonic()
        if stage == "started":
            stage = _next_line(lines, load_seconds)
        if stage is None:
            raise CheckpointTimeoutError(
                f"The TorchScript file {label} was not loaded within {load_seconds:g} s (its loading code may "
                "loop endlessly); it was stopped and not used."
            )
        if stage == "loaded":
            logger.debug("TorchScript %s loaded in the child in %.1f s", label, time.monotonic() - started)
            stage = _next_line(lines, forward_seconds)
            if stage is None:
                shape = tuple(example.shape) if example is not None else ()
                raise CheckpointTimeoutError(
                    f"The TorchScript model {label} did not finish one forward pass on a {shape} input within "
                    f"{forward_seconds:g} s (an endless loop, or far too slow); it was stopped and not used."
                )
        if stage != "done":
            child.wait(timeout=10)
            raise CheckpointError(
                f"The TorchScript file {label} could not be run: the process reading it stopped with exit code "
                f"{child.returncode} ({_last_line(tmp / 'stderr.txt')})."
            )
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def _read_lines(fd: int, lines: queue.Queue[str]) -> None:
    """Put each line the child writes into ``lines``, then "" at the end (the child exited or was killed)."""
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as pipe:
        for line in pipe:
            lines.put(line.strip())
    lines.put("")


def _next_line(lines: queue.Queue[str], seconds: float) -> str | None:
    """The next status line, "" when the child ended without one, None when ``seconds`` passed."""
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        return None


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "no message"
    return text.splitlines()[-1][:200] if text else "no message"


def _read_results(tmp: Path, label: str) -> ScriptRun:
    result = json.loads((tmp / "result.json").read_text(encoding="utf-8"))
    if "load_error" in result:
        raise CheckpointError(
            f"The TorchScript file {label} could not be loaded ({result['load_error']}); it may be corrupt."
        )
    state = torch.load(tmp / "state.pt", map_location="cpu", weights_only=True)
    output_path = tmp / "output.pt"
    output = torch.load(output_path, map_location="cpu", weights_only=True) if output_path.is_file() else None
    return ScriptRun(state_dict=state, output=output, returned=result.get("returned", ""),
                     forward_error=result.get("forward_error"))
