"""The exact solver against its plain form on the first 16 rows of Lite0's largest layers (cat, 64 views, 0.9,
float32, one thread): the plain form is `spade.obc.greedy_rows_reference` on the dense path with the previous
batch size, as `spade/obc.py` was before the blocked and low-rank passes. Prints errors, mask differences, CPU s.

Usage: python benchmarks/results/obc-2026-12-06/old_vs_new.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import spade.obc as obc  # noqa: E402
from spade.augment import AugmentConfig, augment  # noqa: E402
from spade.images import bundled_examples, load_image  # noqa: E402
from spade.models import load_model  # noqa: E402
from spade.statistics import collect_statistics  # noqa: E402

LAYERS = ["blocks.5.0.conv_pwl", "blocks.5.1.conv_pwl", "blocks.5.3.conv_pwl", "blocks.6.0.conv_pwl", "conv_head",
          "classifier"]


def solve(W: torch.Tensor, H: torch.Tensor, plain: bool) -> tuple[float, torch.Tensor, float]:
    saved = obc.greedy_rows, obc.LOW_RANK_SHARE, obc.CACHE_ELEMENTS, obc.MIN_BATCH_ROWS
    if plain:
        obc.greedy_rows, obc.LOW_RANK_SHARE, obc.CACHE_ELEMENTS, obc.MIN_BATCH_ROWS = (
            obc.greedy_rows_reference, 0.0, 2**22, 1)
    try:
        start = time.process_time()
        ((sparse, mask),) = obc.prune_rows_obc(W, H, [0.9], 0.01)
        seconds = time.process_time() - start
    finally:
        obc.greedy_rows, obc.LOW_RANK_SHARE, obc.CACHE_ELEMENTS, obc.MIN_BATCH_ROWS = saved
    delta, dense = sparse.double() - W.double(), W.double()
    return float(((delta @ H.double()) * delta).sum() / ((dense @ H.double()) * dense).sum()), mask, seconds


def main() -> None:
    torch.set_num_threads(1)
    loaded = load_model("efficientnet_lite0", device="cpu")
    views = augment(load_image(bundled_examples()["cat"]), AugmentConfig(count=64), loaded.spec.preprocessing)
    stats = collect_statistics(loaded.model, views, batch_size=64)
    modules = dict(loaded.model.named_modules())
    print(f"{'layer':<22}{'plain err':>11}{'new err':>11}{'ratio':>8}{'mask diff':>10}{'plain s':>9}{'new s':>7}")
    for name in LAYERS:
        weight = modules[name].weight.detach()
        W, H = weight.reshape(weight.shape[0], -1)[:16].float(), stats.layers[name].hessian[0]
        (e_plain, m_plain, t_plain), (e_new, m_new, t_new) = solve(W, H, True), solve(W, H, False)
        print(f"{name:<22}{e_plain:>11.6f}{e_new:>11.6f}{e_new / max(e_plain, 1e-30):>8.4f}"
              f"{(m_plain != m_new).float().mean().item():>10.4f}{t_plain:>9.2f}{t_new:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
