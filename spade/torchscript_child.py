"""The child process of `spade.torchscript`: loads one TorchScript file and runs its forward once.

Run as a script (``python -I torchscript_child.py MODEL EXAMPLE OUT_DIR STATUS_FD``), never imported by the app:
it imports only torch, so it starts as fast as torch does. It writes ``started`` to the status pipe (file
descriptor STATUS_FD) once torch is imported, ``loaded`` once the module and its state dict are read, and ``done``
once the forward has returned;
what it found goes to files in OUT_DIR (``state.pt``: the state dict; ``output.pt``: the forward's output when it
is one tensor; ``result.json``: what the forward returned, in words, or the error it raised). The script's own
``print`` output goes to the child's stdout, which the parent discards, so it cannot fake a status line.
EXAMPLE is a ``torch.save``d input tensor, or ``-`` for no forward pass.
"""

from __future__ import annotations

import json
import os
import sys


def _describe(value: object) -> str:
    """What a forward returned, in words (for anything that is not a single tensor)."""
    import torch

    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} values"
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:5])
        return f"a dict with the keys {keys}"
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:200] if lines else "") or type(exc).__name__


def main(argv: list[str]) -> int:
    model_path, example_path, out_dir, status_fd = argv[0], argv[1], argv[2], int(argv[3])
    status = os.fdopen(status_fd, "w", buffering=1)
    result: dict[str, str] = {}

    def finish(stage: str) -> None:
        with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
        status.write(stage + "\n")
        status.flush()

    import torch

    torch.set_num_threads(1)
    status.write("started\n")
    status.flush()
    try:
        module = torch.jit.load(model_path, map_location="cpu")
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save(state, os.path.join(out_dir, "state.pt"))
    except Exception as exc:  # any failure to read the archive
        result["load_error"] = _first_line(exc)
        finish("done")
        return 0
    finish("loaded")
    if example_path == "-":
        finish("done")
        return 0
    example = torch.load(example_path, map_location="cpu", weights_only=True)
    module.eval()
    try:
        with torch.no_grad():
            output = module(example)
    except Exception as exc:
        result["forward_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
        finish("done")
        return 0
    if isinstance(output, torch.Tensor):
        torch.save(output.detach().clone(), os.path.join(out_dir, "output.pt"))
    result["returned"] = _describe(output)
    finish("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
