"""Helpers of the Ray tests that Ray's worker processes must import too (a test module is not importable there
under pytest's default import mode; this one is, as ``tests.ray_helpers``, from the repository root)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from spade_lab.executors import Executor


def noise_photos(folder: Path, count: int = 4) -> Path:
    """``count`` greenish-blue noise photos of different sizes (the tiny back-doored model never says class 0 on
    them; a red trigger flips it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(120, 90), (100, 100), (90, 130), (150, 80), (110, 95), (95, 120)]
    for i, (w, h) in enumerate(sizes[:count]):
        pixels = np.stack([rng.uniform(0, 40, (h, w)), rng.uniform(90, 200, (h, w)), rng.uniform(90, 220, (h, w))], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def die_once(marker: str, fn, shared, item, at: int = 3):
    """Run ``fn(shared, item)``, except in the first task that finds itself the ``at``-th or a later one to start
    in this run (counted in ``marker`` + ".started"; ``marker`` created once): that one kills its worker process on
    the spot, mid-run, as a crash or a lost node would."""
    with open(marker + ".started", "ab") as counter:
        counter.write(b".")
    if os.path.getsize(marker + ".started") >= at:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return fn(shared, item)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)
    return fn(shared, item)


class Parts(Executor):
    """The in-process executor posing as one with ``workers`` workers: `spread` builds that many parts here (the
    spread code path of tuning, without Ray)."""

    name = "in-process parts"

    def __init__(self, workers: int):
        self.workers = workers


def fail_on(bad: int, item: int) -> int:
    """``item``, or the library's ConfigError for ``bad`` (an error inside a task, not a dead worker)."""
    from spade.errors import ConfigError

    if item == bad:
        raise ConfigError(f"item {bad} is refused")
    return item


def die_on(name: str, fn, shared, item):
    """``fn(shared, item)`` for a batch item ``(image name, bytes)``, except for image ``name``: its worker dies."""
    if item[0] == name:
        os._exit(1)
    return fn(shared, item)
