"""Exact greedy OBS per output row (Optimal Brain Compression): the paper's "SPADE" solver, slower than the sweep.

Each row w of W (rows x d) loses its weights one at a time. With Hinv the inverse of the damped Gram matrix
restricted to the row's remaining weights, the next weight to go is the q with the least ``w_q^2 / Hinv_qq``
(the exact rise of ``||w_s X - w X||^2`` when w_q is zeroed and the others compensate optimally); then
``w -= w_q / Hinv_qq * Hinv[:, q]`` and ``Hinv -= Hinv[:, q] Hinv[q, :] / Hinv_qq``. Unlike the sweep
(`spade.solver`, SparseGPT), the choice looks at every remaining weight of the row, as updated by all earlier
removals. Cost: a d x d rank-one update per removed weight and row, so about ``sparsity * d^3`` per row
(the sweep: d^3 / 3 per layer).

The order of removals does not depend on how many a row loses, so one pass to the highest of several sparsities
yields the lower ones as snapshots on the way, for the cost of the highest alone (`prune_rows_obc` with several
sparsities; the tuning of a profile asks for a whole grid of them).

Weights that are zero without a choice (the dense zeros under ``sparsity_of="nonzero"``, dead inputs, a given
mask) are removed first, in closed form: rows are grouped by that set P, and each group starts from the inverse
of H's block on the other columns S, with ``w_S += w_P H_PS H_SS^-1`` (the optimum with w_P = 0; nothing changes
for weights that are zero already).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from spade.damping import damped_cholesky

CACHE_ELEMENTS = 2**22
"""On a CPU, rows are solved in batches whose inverse Hessians hold about this many numbers (16 MB in float32):
the rank-one updates are memory-bound, and a batch that stays in the cache runs several times faster."""
GPU_MEMORY_SHARE = 0.1
"""On a GPU, a batch's inverse Hessians may fill this share of the free memory (the compaction briefly holds
three copies, and other processes may share the GPU)."""
COMPACT_EVERY = 32
"""Removed columns are dropped from the batch's matrices after this many removals (the rest of the work shrinks
with them; all rows of a batch have removed the same number, so the matrices stay rectangular)."""


def greedy_rows(W: torch.Tensor, hinv: torch.Tensor, ks: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Remove weights from each row of W one at a time, greedily, with exact OBS updates, and take a snapshot after
    each count in ks.

    W: (B, m) rows that share the inverse damped Hessian hinv (m, m) of their m columns. ks: non-decreasing
    removal counts. Returns, per count k, the weights after k removals (B, m; the removed ones exactly 0) and the
    (B, m) boolean mask of removed weights.
    """
    B, m = W.shape
    W = W.clone()
    removed = torch.zeros(B, m, dtype=torch.bool, device=W.device)
    columns = torch.arange(m, device=W.device).expand(B, m).clone()  # original index of each current column
    snapshots, wanted = [], list(ks)

    def take(step: int) -> None:
        """Snapshot the weights in their original columns for every count up to ``step``."""
        while wanted and wanted[0] <= step:
            out = torch.zeros(B, m, dtype=W.dtype, device=W.device).scatter_(1, columns, W)
            out[removed] = 0.0
            snapshots.append((out, removed.clone()))
            wanted.pop(0)

    take(0)
    if not wanted:
        return snapshots
    last = wanted[-1]
    H = hinv.expand(B, m, m).clone()
    alive = torch.ones(B, m, dtype=torch.bool, device=W.device)
    rows = torch.arange(B, device=W.device)
    for step in range(1, last + 1):
        scores = W.square().div_(torch.diagonal(H, dim1=1, dim2=2)).masked_fill_(~alive, math.inf)
        q = scores.argmin(1)
        h = H[rows, :, q]  # (B, m): column q of each row's inverse
        hqq = h[rows, q]
        W.sub_(h * (W[rows, q] / hqq).unsqueeze(1))
        H.baddbmm_(h.unsqueeze(2), (h / hqq.unsqueeze(1)).unsqueeze(1), alpha=-1)
        W[rows, q] = 0.0
        H[rows, q, q] = 1.0  # its row and column are now zero; a finite diagonal keeps the scores finite
        alive[rows, q] = False
        removed[rows, columns[rows, q]] = True
        take(step)
        if step % COMPACT_EVERY == 0 and step < last:
            keep = alive.nonzero()[:, 1].view(B, -1)
            W, columns = W.gather(1, keep), columns.gather(1, keep)
            H = H.gather(1, keep.unsqueeze(2).expand(-1, -1, H.shape[2]))
            H = H.gather(2, keep.unsqueeze(1).expand(-1, H.shape[1], -1))
            alive = torch.ones_like(keep, dtype=torch.bool)
    return snapshots


def rows_per_batch(m: int, device: torch.device, dtype: torch.dtype) -> int:
    """How many rows with m free columns `greedy_rows` solves at once: (B, m, m) inverse Hessians that stay in
    the CPU's cache (`CACHE_ELEMENTS`) or fill `GPU_MEMORY_SHARE` of a GPU's free memory."""
    elements = CACHE_ELEMENTS
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        elements = max(elements, int(free * GPU_MEMORY_SHARE) // dtype.itemsize)
    return max(1, elements // m**2)


def prune_rows_obc(weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[float], damp: float,
                   sparsity_of: str = "nonzero", mask: torch.Tensor | None = None,
                   progress: Callable[[float], None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row of `weight` pruned greedily to its own floor(sparsity * n) zeros, for each of the sparsities, in
    one pass (the result at each equals a pass to it alone).

    weight: (rows, d) float; hessian: (d, d) Gram matrix of the layer's inputs, float32 or float64 (the work runs
    in its dtype, the closed-form start in float64). n counts the row's nonzero weights with
    ``sparsity_of="nonzero"`` (its zeros stay zero) or all d with "all" (zeros then fill the target first, as they
    cost nothing). Weights of dead inputs (diag H == 0) are zeroed and count as zeros. mask: optional (rows, d)
    prune mask (True = zero) instead of choosing: the result is then each row's least-squares optimum on it (the
    same for every sparsity). progress(fraction of the rows solved) is called after each batch of rows.
    Returns, per sparsity in the given order, the sparse weight (in the hessian's working dtype) and the prune mask.
    """
    dtype = torch.float64 if hessian.dtype == torch.float64 else torch.float32
    W = weight.to(dtype).clone()
    H = hessian.to(torch.float64)
    rows, d = W.shape
    dead = torch.diagonal(H) == 0
    if dead.any():
        H = H.clone()
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
    _, damping = damped_cholesky(H, damp)
    Hd = H + damping * torch.eye(d, dtype=H.dtype, device=H.device)
    # forced: zero without a choice; extra: (rows, levels) how many more each row must lose at each sparsity, a
    # fraction of its candidates ("nonzero") or of d with the forced ones counted ("all")
    forced = dead.expand(rows, d).clone()
    levels = torch.tensor([float(s) for s in sparsities], dtype=torch.float64)
    if mask is not None:
        forced |= mask
        extra = torch.zeros(rows, len(levels), dtype=torch.long)
    elif sparsity_of == "nonzero":
        forced |= W == 0
        extra = torch.floor(levels * (~forced).sum(1, keepdim=True).double().cpu() + 1e-9).long()
    else:
        extra = (torch.floor(levels * d + 1e-9).long() - forced.sum(1, keepdim=True).cpu()).clamp_min(0)
    solved = [torch.zeros_like(W) for _ in levels]
    pruned = [forced.clone() for _ in levels]
    done = 0
    patterns, group_of = torch.unique(forced, dim=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        S, P = (~pattern).nonzero().flatten(), pattern.nonzero().flatten()
        members = (group_of == p).nonzero().flatten()
        if S.numel() == 0:  # every weight forced: nothing to solve
            done += members.numel()
            continue
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd[S][:, S]))
        start = W[members][:, S].double()
        if mask is not None and P.numel():  # otherwise every forced weight is zero already
            start += W[members][:, P].double() @ Hd[P][:, S] @ hinv
        counts = extra[members.cpu()]
        batch = rows_per_batch(S.numel(), W.device, dtype)
        for ks in counts.unique(dim=0).tolist():  # rows of one batch remove the same numbers
            select = (counts == torch.tensor(ks)).all(1)
            same = members[select.to(members.device)]
            local = select.nonzero().flatten().to(members.device)
            order = sorted(range(len(ks)), key=ks.__getitem__)
            for b in range(0, same.numel(), batch):
                idx = same[b:b + batch]
                snapshots = greedy_rows(start[local[b:b + batch]].to(dtype), hinv.to(dtype), [ks[i] for i in order])
                for i, (w, gone) in zip(order, snapshots):
                    solved[i][idx.unsqueeze(1), S.unsqueeze(0)] = w
                    pruned[i][idx.unsqueeze(1), S.unsqueeze(0)] = gone
                done += idx.numel()
                if progress is not None:
                    progress(done / rows)
    return list(zip(solved, pruned))
