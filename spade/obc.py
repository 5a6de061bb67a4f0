"""Exact greedy OBS per output row (Optimal Brain Compression): the paper's "SPADE" solver, slower than the sweep.

Each row w of W (rows x d) loses its weights one at a time. With Hinv the inverse of the damped Gram matrix
restricted to the row's remaining weights, the next weight to go is the q with the least ``w_q^2 / Hinv_qq``
(the exact rise of ``||w_s X - w X||^2`` when w_q is zeroed and the others compensate optimally); then
``w -= w_q / Hinv_qq * Hinv[:, q]`` and ``Hinv -= Hinv[:, q] Hinv[q, :] / Hinv_qq``. Unlike the sweep
(`spade.solver`, SparseGPT), the choice looks at every remaining weight of the row, as updated by all earlier
removals. Cost: a rank-one downdate of the row's remaining inverse per removed weight, about ``d^3 / 3``
multiply-adds per row at any sparsity (the sweep: d^3 / 3 per layer). `greedy_rows` applies the downdates in
blocks (few passes over memory, most of the work in batched matrix products) and drops removed columns after each
block; a Gram matrix of low rank (a linear layer fed fewer samples than it has inputs, such as a classifier after
global pooling) goes through `greedy_rows_low_rank`, which never forms a (d, d) matrix per row. The plain pass,
`greedy_rows_reference`, is kept as the simple version the tests compare with. `spade.obc_cost` counts the work.

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
from functools import partial

import torch

from spade.damping import damped_cholesky
from spade.scripted import scripted

CACHE_ELEMENTS = 2**22
"""On a CPU, rows are solved in batches whose inverse Hessians hold about this many numbers (16 MB in float32), or
`MIN_BATCH_ROWS` rows where those fit in `BATCH_ELEMENTS`: small batches stay closer to the cache, larger ones share
the fixed cost of each removal step's tensor operations (measured on the development machine: 2**22 best for
192-wide layers, 12 to 16 rows for 1152-wide ones)."""
MIN_BATCH_ROWS = 16
BATCH_ELEMENTS = 2**25
GPU_MEMORY_SHARE = 0.1
"""On a GPU, a batch's inverse Hessians may fill this share of the free memory (the compaction briefly holds
three copies, and other processes may share the GPU)."""
COMPACT_EVERY = 256
"""At most this many removals per block of `greedy_rows`, and at least `MIN_BLOCK` (a quarter of the remaining
width in between): the block's rank-one updates are applied together at its end, and the removed columns are then
dropped from the batch's matrices (the rest of the work shrinks with them; all rows of a batch have removed the same
number, so the matrices stay rectangular). Larger blocks pass over the matrices less often but make each removal's
column cost more (O(m * pending)); a quarter of the width was best on the development machine."""
MIN_BLOCK = 16
LOW_RANK_TOLERANCE = 1e-2
"""Eigenvalues of a layer's Gram matrix below this fraction of the dampening count as zero when testing for low
rank (`low_rank_factor`): dropping them changes the damped matrix by less than this fraction of its smallest
eigenvalue (float32 statistics carry rounding noise of about that size in those directions)."""
LOW_RANK_SHARE = 0.25
"""The low-rank path (`greedy_rows_low_rank`) is taken where the Gram matrix's rank is at most this share of its
width (a linear layer fed fewer samples than inputs, such as the classifier with one pooled vector per view)."""


def low_rank_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor | None:
    """F (m, r) with ``hessian ~ F F^T``, or None where the rank is not low enough to pay.

    hessian: (m, m) symmetric positive semi-definite (undamped) Gram matrix, float64. The eigenvalues below
    ``LOW_RANK_TOLERANCE * damping`` are dropped; F is returned only where r <= ``LOW_RANK_SHARE * m`` and
    damping > 0 (the low-rank path inverts through the dampening).
    """
    m = hessian.shape[0]
    if damping <= 0 or m < 64:
        return None
    values, vectors = torch.linalg.eigh(hessian)
    keep = values > LOW_RANK_TOLERANCE * damping
    if int(keep.sum()) > LOW_RANK_SHARE * m:
        return None
    return vectors[:, keep] * values[keep].sqrt()


def greedy_rows_low_rank(W: torch.Tensor, F: torch.Tensor, damping: float,
                         ks: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`greedy_rows` for a damped matrix ``damping * I + F F^T`` of low rank r, without any (m, m) matrix.

    W: (B, m) rows; F: (m, r) in W's dtype; damping > 0. By Woodbury the inverse restricted to a row's remaining
    columns S is ``(I - F_S G_S^-1 F_S^T) / damping`` with the small ``G_S = damping * I + F_S^T F_S`` (r, r);
    removing column q takes ``f_q f_q^T`` from G_S, a Sherman-Morrison update of G_S^-1. Each removal then costs
    O(m * r + r^2) per row, and the (m, r) by (r, B) product that gives every row's column of the inverse is shared
    by all rows of the batch. Same returns as `greedy_rows` (the same choices up to rounding). Runs compiled
    (`spade.scripted`).
    """
    return _greedy_rows_low_rank(W, F, float(damping), list(ks))


@scripted
def _greedy_rows_low_rank(W: torch.Tensor, F: torch.Tensor, damping: float,
                          ks: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    W, removed, columns, snapshots, wanted = _start(W, ks)
    if len(wanted) == 0:
        return snapshots
    B, m, last = W.shape[0], W.shape[1], wanted[-1]
    rows = torch.arange(B, device=W.device)
    r = F.shape[1]
    G = torch.linalg.inv(damping * torch.eye(r, dtype=F.dtype, device=F.device) + F.t() @ F)
    diag = (1.0 - ((F @ G) * F).sum(1)) / damping  # (m,) diagonal of the inverse
    G = G.expand(B, r, r).contiguous()  # a copy per row
    diag = diag.expand(B, m).contiguous()
    kept = torch.ones(B, m, dtype=W.dtype, device=W.device)  # 0 where removed: a product, cheaper than masked_fill_
    # removed weights are kept at +inf in W (their snapshots say 0): that keeps them out of the choice unmasked
    for step in range(1, last + 1):
        q = W.square().div_(diag).min(1)[1]  # the first minimum, as argmin gives it, in less time on a CPU
        a = torch.bmm(F[q].unsqueeze(1), G).squeeze(1)  # (B, r): f_q^T G_S^-1 = G_S^-1 f_q (symmetric), half the time
        u = torch.mm(a * (-1.0 / damping), F.t())  # (B, m): column q of the inverse, less e_q / damping
        u[rows, q] += 1.0 / damping
        scale = u[rows, q].rsqrt()  # 1 / sqrt(Hinv_qq)
        v = u.mul_(kept).mul_(scale.unsqueeze(1))  # v v^T is the downdate of the inverse
        W.addcmul_(v, (W[rows, q] * scale).unsqueeze(1), value=-1.0)
        diag.addcmul_(v, v, value=-1.0)
        G.baddbmm_(a.unsqueeze(2), (a * (scale.square() / damping).unsqueeze(1)).unsqueeze(1))
        W[rows, q] = math.inf
        diag[rows, q] = 1.0
        kept[rows, q] = 0.0
        removed[rows, q] = True
        _snapshot(snapshots, wanted, step, W, columns, removed)
    return snapshots


def _start(W: torch.Tensor, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                    list[tuple[torch.Tensor, torch.Tensor]], list[int]]:
    """A greedy pass's starting state for rows W (B, m) and removal counts ks: a working copy of W, the (B, m)
    removed mask, each current column's original index (B, m), the snapshots with those wanted after no removal
    taken, and the counts still wanted."""
    B, m = W.shape[0], W.shape[1]
    W = W.clone()
    removed = torch.zeros(B, m, dtype=torch.bool, device=W.device)
    columns = torch.arange(m, device=W.device).expand(B, m).clone()
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []
    wanted = list(ks)
    _snapshot(snapshots, wanted, 0, W, columns, removed)
    return W, removed, columns, snapshots, wanted


def _snapshot(snapshots: list[tuple[torch.Tensor, torch.Tensor]], wanted: list[int], step: int, W: torch.Tensor,
              columns: torch.Tensor, removed: torch.Tensor) -> None:
    """Append (weights in their original columns, removed mask), both (B, m), for every wanted removal count up to
    ``step`` (popped from ``wanted``). W: (B, current m) weights; columns: their original column indices."""
    while len(wanted) > 0 and wanted[0] <= step:
        out = torch.zeros(removed.shape, dtype=W.dtype, device=W.device).scatter_(1, columns, W)
        out[removed] = 0.0
        snapshots.append((out, removed.clone()))
        wanted.pop(0)


def greedy_rows(W: torch.Tensor, hinv: torch.Tensor, ks: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Remove weights from each row of W one at a time, greedily, with exact OBS updates, and take a snapshot after
    each count in ks.

    W: (B, m) rows that share the inverse damped Hessian hinv (m, m) of their m columns. ks: non-decreasing
    removal counts. Returns, per count k, the weights after k removals (B, m; the removed ones exactly 0) and the
    (B, m) boolean mask of removed weights. The same choices and weights as `greedy_rows_reference` up to rounding.

    Blocked (lazy) downdates: within a block of `COMPACT_EVERY` removals each row's inverse is left as it was at the
    block's start, Hinv0, and the pending rank-one updates are kept as columns v_t (Hinv = Hinv0 - sum_t v_t v_t^T).
    A removal needs only the row's weights, the diagonal of its inverse (both updated in O(m)) and one column of
    the inverse, Hinv0[:, q] - V (V[q, :])^T, O(m * pending). At the block's end the removed columns are dropped
    from Hinv0 and V and the block's updates are applied at once, ``Hinv0 -= V V^T`` (a batched matrix product,
    bound by arithmetic rather than memory traffic as the one-at-a-time rank-one updates are). Runs compiled
    (`spade.scripted`).
    """
    return _greedy_rows(W, hinv, list(ks), COMPACT_EVERY, MIN_BLOCK)


@scripted
def _greedy_rows(W: torch.Tensor, hinv: torch.Tensor, ks: list[int], compact_every: int,
                 min_block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    W, removed, columns, snapshots, wanted = _start(W, ks)
    if len(wanted) == 0:
        return snapshots
    B, m, last = W.shape[0], W.shape[1], wanted[-1]
    rows = torch.arange(B, device=W.device)
    H = hinv.expand(B, m, m).contiguous()  # a copy per row
    diag = torch.diagonal(H, dim1=1, dim2=2).clone()
    alive = torch.ones(B, m, dtype=torch.bool, device=W.device)
    step = 0
    while step < last:
        width = H.shape[1]
        size = min(compact_every, max(min_block, width // 4), last - step)
        V = torch.empty(B, size, width, dtype=W.dtype, device=W.device)  # pending updates, v_t = u_t / sqrt(u_qq)
        for b in range(size):
            q = W.square().div_(diag).masked_fill_(~alive, math.inf).min(1)[1]  # the first minimum, as argmin
            u = H[rows, q]  # (B, m): row (= column) q of the symmetric inverse at the block's start ...
            if b > 0:  # ... less the pending updates
                u = u.unsqueeze(1).baddbmm_(V[rows, :b, q].unsqueeze(1), V[:, :b], alpha=-1).squeeze(1)
            uqq = u[rows, q]
            W.sub_(u * (W[rows, q] / uqq).unsqueeze(1))
            diag.sub_(u.square().div_(uqq.unsqueeze(1)))
            V[:, b] = u.div_(uqq.sqrt().unsqueeze(1))
            W[rows, q] = 0.0
            diag[rows, q] = 1.0  # a finite diagonal keeps the scores finite
            alive[rows, q] = False
            removed[rows, columns[rows, q]] = True
            step += 1
            _snapshot(snapshots, wanted, step, W, columns, removed)
        if step < last:  # drop the removed columns, then apply the block's updates to what is left
            keep = alive.nonzero()[:, 1].view(B, -1)
            kept = keep.shape[1]
            W, columns = W.gather(1, keep), columns.gather(1, keep)
            V = V.gather(2, keep.unsqueeze(1).expand(-1, size, -1))
            H = H.view(B, -1).gather(1, (keep.unsqueeze(2) * width + keep.unsqueeze(1)).view(B, -1)).view(B, kept, kept)
            H.baddbmm_(V.transpose(1, 2), V, alpha=-1)
            diag = torch.diagonal(H, dim1=1, dim2=2).clone()
            alive = torch.ones_like(keep, dtype=torch.bool)
    return snapshots


def greedy_rows_reference(W: torch.Tensor, hinv: torch.Tensor,
                          ks: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The plain version of `greedy_rows`, kept as the slow, simple reference the tests compare it with: every
    removal updates each row's whole remaining inverse (about m^2 numbers read and written per removal and row).

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
        _snapshot(snapshots, wanted, step, W, columns, removed)

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
    the CPU's cache (`CACHE_ELEMENTS`), or at least `MIN_BATCH_ROWS` where they fit in `BATCH_ELEMENTS`, or fill
    `GPU_MEMORY_SHARE` of a GPU's free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, max(CACHE_ELEMENTS, int(free * GPU_MEMORY_SHARE) // dtype.itemsize) // m**2)
    return max(1, CACHE_ELEMENTS // m**2, min(MIN_BATCH_ROWS, BATCH_ELEMENTS // m**2))


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
    lower, damping = damped_cholesky(H, damp)
    Hd = H + damping * torch.eye(d, dtype=H.dtype, device=H.device)
    # a cheap hint before any eigendecomposition: the Cholesky pivots of a damped low-rank matrix fall to about
    # the dampening after r of them
    may_be_low_rank = damping > 0 and int((torch.diagonal(lower).square() > 10 * damping).sum()) <= LOW_RANK_SHARE * d
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
        start = W[members][:, S].double()
        if mask is not None and P.numel():  # otherwise every forced weight is zero already
            start += W[members][:, P].double() @ Hd[P][:, S] @ torch.cholesky_inverse(
                torch.linalg.cholesky(Hd[S][:, S]))
        counts = extra[members.cpu()]
        factor = low_rank_factor(H[S][:, S], damping) if may_be_low_rank and counts.any() else None
        if factor is not None:
            batch = max(1, CACHE_ELEMENTS // (factor.shape[1] ** 2 + 4 * S.numel()))
            solve = partial(greedy_rows_low_rank, F=factor.to(dtype), damping=damping)
        else:
            batch = rows_per_batch(S.numel(), W.device, dtype)
            solve = partial(greedy_rows, hinv=torch.cholesky_inverse(torch.linalg.cholesky(Hd[S][:, S])).to(dtype))
        for ks in counts.unique(dim=0).tolist():  # rows of one batch remove the same numbers
            select = (counts == torch.tensor(ks)).all(1)
            same = members[select.to(members.device)]
            local = select.nonzero().flatten().to(members.device)
            order = sorted(range(len(ks)), key=ks.__getitem__)
            for b in range(0, same.numel(), batch):
                idx = same[b:b + batch]
                snapshots = solve(start[local[b:b + batch]].to(dtype), ks=[ks[i] for i in order])
                for i, (w, gone) in zip(order, snapshots):
                    solved[i][idx.unsqueeze(1), S.unsqueeze(0)] = w
                    pruned[i][idx.unsqueeze(1), S.unsqueeze(0)] = gone
                done += idx.numel()
                if progress is not None:
                    progress(done / rows)
    return list(zip(solved, pruned))
