"""Layer statistics: each target layer's input Gram matrix, recorded on the dense model.

For a layer with weight W (rows = output units, columns = input features) SPADE needs
``H = (2/n) * sum_x x x^T`` over the layer's input columns x: unfolded patches for a
convolution, feature vectors for a linear layer. Inputs come from the *dense* network, so H does
not depend on the sparsity chosen later (that is what makes re-solving instant).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from spade.devices import full_float32, model_device
from spade.errors import ConfigError
from spade.forward_copy import forward_copy
from spade.layers import LayerSelection, layer_kind, prunable_layers
from spade.progress import Progress

log = logging.getLogger(__name__)

# Bound on the number of float elements of one unfolded patch matrix held at once.
_UNFOLD_ELEMENTS = 2**25


@dataclass(frozen=True, eq=False)
class LayerStat:
    """Statistics of one target layer, immutable once collected: the fields cannot be set and the hessian tensor
    is never written after `collect_statistics` returns (solvers keep what they derive from it in their own
    caches, `spade.solver.LayerCache`), so one LayerStat may be shared by threads and app sessions. Compared and
    hashed by identity.

    weight_shape: the layer's weight shape, (out, in/groups, kh, kw) or (out, in).
    hessian: (groups, d, d) Gram matrices, d = in_features for Linear, (in_channels/groups)*kh*kw
    for Conv2d, scaled by 2/rows, in the accumulation dtype. rows: number of input columns accumulated.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    hessian: torch.Tensor
    rows: int = 0


def output_layer(model: nn.Module, targets: list[str]) -> str | None:
    """The layer an output refit applies to: the last target layer (in ``model``'s registration order) when it is
    an ``nn.Linear`` (a classifier head), else None."""
    if not targets:
        return None
    last = max(targets, key=list(dict(model.named_modules())).index)
    return last if isinstance(model.get_submodule(last), nn.Linear) else None


@dataclass(frozen=True, eq=False)
class OutputFit:
    """What an output refit needs, recorded with the statistics; immutable like them.

    layer: the output layer's name (`output_layer`). dense: (N, d) float32, the dense layer's inputs on the N
    images of the fit. weights: (N,) float64, how much each image counts (all positive). make_inputs: returns those
    N images, (N, 3, H, W) normalized (`inputs`); `spade.trace.prepare_statistics` makes them again from the image
    when asked (the augmentations are seeded), so that cached statistics do not hold every view.
    """

    layer: str
    dense: torch.Tensor
    weights: torch.Tensor
    make_inputs: Callable[[], torch.Tensor]

    def __post_init__(self):
        n = self.dense.shape[0]
        if self.weights.shape != (n,) or not bool((self.weights > 0).all()):
            raise ConfigError("An output fit needs one positive weight per dense feature row.")

    def inputs(self) -> torch.Tensor:
        """The (N, 3, H, W) images of the fit, in the order of ``dense``."""
        images = self.make_inputs()
        if images.shape[0] != self.dense.shape[0]:
            raise ConfigError(f"An output fit's inputs gave {images.shape[0]} images for {self.dense.shape[0]} "
                              "feature rows.")
        return images


@dataclass(frozen=True, eq=False)
class LayerStatistics:
    """Everything `solve` needs: the dense model (never modified) and the per-layer statistics. Immutable like its
    `LayerStat` values: layers and seconds are read-only mappings (copies of the ones given) and no tensor is
    written after construction; `dataclasses.replace` makes a changed copy.

    layers: {layer name: LayerStat} in the model's registration order.
    reference: optional (1, 3, H, W) un-augmented input whose predictions the trace report compares,
    and reference_logits: the dense model's (1, classes) logits on it (CPU).
    output_fit: what an output refit of the trace's last layer needs (`spade.refit`), or None when the last target
    layer is no classifier head.
    seconds: wall time per stage that produced these statistics.
    """

    model: nn.Module
    layers: Mapping[str, LayerStat]
    reference: torch.Tensor | None = None
    reference_logits: torch.Tensor | None = None
    output_fit: OutputFit | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "seconds", MappingProxyType(dict(self.seconds)))


def _same_padding_adapter() -> dict[type, Callable]:
    """Conv types that pad inside forward: a hook must see the padding the kernel sees."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # timm is optional for the engine
        return {}

    def pads(module: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int]:
        # as timm's pad_same: the odd pixel goes to the bottom / right
        ph, pw = (get_same_padding(size, k, s, d) for size, k, s, d in
                  zip(x.shape[-2:], module.kernel_size, module.stride, module.dilation))
        return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2

    return {Conv2dSame: pads}


_PADDING_ADAPTERS = _same_padding_adapter()


def pointwise_columns(module: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield chunks of a Linear or 1x1 conv layer's input columns, shape (groups, rows_chunk, d).

    x is the input the module's forward received. Never materialises more than about ``_UNFOLD_ELEMENTS``
    values at once. (k x k convolutions go through ``add_conv_gram_by_shifts``, which never unfolds.)
    """
    if isinstance(module, nn.Linear):
        cols = x.reshape(-1, x.shape[-1])
        step = max(1, _UNFOLD_ELEMENTS // cols.shape[1])
        for i in range(0, cols.shape[0], step):
            yield cols[i:i + step].unsqueeze(0)
        return
    x = _padded_input(module, x)
    g = module.groups
    cin = x.shape[1]
    d = cin // g
    sh, sw = module.stride
    x = x[:, :, ::sh, ::sw]
    per_image = x.shape[2] * x.shape[3]
    step = max(1, _UNFOLD_ELEMENTS // (per_image * cin))
    for i in range(0, x.shape[0], step):
        part = x[i:i + step]  # (b, cin, h, w) -> (g, b*h*w, cin/g)
        yield part.reshape(part.shape[0], g, d, -1).permute(1, 0, 3, 2).reshape(g, -1, d)


def add_conv_gram_by_shifts(hessian: torch.Tensor, module: nn.Conv2d, x: torch.Tensor) -> int:
    """hessian += the Gram matrix of a k x k conv's unfolded input patches, without unfolding them.

    With stride s, tap i of the kernel reads input row y*s + i*dh - top for output row y, that is row
    y + o_i of the phase image x[p_i::s] (p_i, o_i: remainder and quotient of i*dh - top by s); columns alike.
    The Gram block of taps t = (i, j) and t' = (i', j') is the sum of phase(p_i, q_j)[u, v]^T
    phase(p_i', q_j')[u + o_i' - o_i, v + r_j' - r_j] over the pixels (u, v) that tap t reads: a rectangle
    that moves with t. Tap pairs with the same phases and relative shift share everything but a few edge rows
    and columns. So per such key: one batched product per phase row over the columns all its pairs read
    (the core), single-column products for the edge columns, then per pair a sum over its rows and edges.
    For a 3 x 3 kernel about 13 c^2 multiply-adds per output pixel at stride 1 and 34 at stride 2 (the phases
    share fewer pairs), instead of 81 for the unfolded product; zero padding is never multiplied.
    hessian: (groups, d, d); x: the conv's input (n, groups * c, H, W). Returns the number of patches added.
    """
    kh, kw = module.kernel_size
    sh, sw = module.stride
    g = module.groups
    n, cin, H, W = x.shape
    c = cin // g
    top, bottom, left, right = _padding(module, x)
    out_h = (H + top + bottom - module.dilation[0] * (kh - 1) - 1) // sh + 1
    out_w = (W + left + right - module.dilation[1] * (kw - 1) - 1) // sw + 1
    # per tap row i: (phase, offset) with i*dh - top = offset*s + phase; columns alike
    row_taps = [divmod(i * module.dilation[0] - top, sh)[::-1] for i in range(kh)]
    col_taps = [divmod(j * module.dilation[1] - left, sw)[::-1] for j in range(kw)]
    pairs: dict[tuple, list[tuple[int, int, int, int]]] = {}
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    for t, (i, j) in enumerate(taps):
        for i2, j2 in taps[t:]:
            (p, o), (p2, o2) = row_taps[i], row_taps[i2]
            (q, r), (q2, r2) = col_taps[j], col_taps[j2]
            pairs.setdefault((p, p2, o2 - o, q, q2, r2 - r), []).append((i, j, i2, j2))
    blocks = torch.zeros(g, kh, kw, kh, kw, c, c, dtype=hessian.dtype, device=hessian.device)
    step = max(1, _UNFOLD_ELEMENTS // (cin * H * W))
    for i0 in range(0, n, step):
        part = x[i0:i0 + step].to(hessian.dtype).reshape(-1, g, c, H, W)
        # phase images as (rows, groups, columns, images, channels): every slice below is a view
        phases = {(p, q): part[:, :, :, p::sh, q::sw].permute(3, 1, 4, 0, 2).contiguous()
                  for p in range(sh) for q in range(sw)}
        for (p, p2, du, q, q2, dv), members in pairs.items():
            first, second = phases[p, q], phases[p2, q2]
            u0, u1 = max(0, -du), min(first.shape[0], second.shape[0] - du)  # rows with a partner
            v0, v1 = max(0, -dv), min(first.shape[2], second.shape[2] - dv)
            rows = {i: (max(u0, row_taps[i][1]), min(u1, row_taps[i][1] + out_h)) for i, _, _, _ in members}
            cols = {j: (max(v0, col_taps[j][1]), min(v1, col_taps[j][1] + out_w)) for _, j, _, _ in members}
            cols = {j: r for j, r in cols.items() if r[1] > r[0]}
            if u1 <= u0 or not cols:
                continue
            lo = max(r[0] for r in cols.values())
            hi = max(lo, min(r[1] for r in cols.values()))
            a, b = first[u0:u1], second[u0 + du:u1 + du]
            core = _row_products(a[:, :, lo:hi], b[:, :, lo + dv:hi + dv])
            edges = {v: _row_products(a[:, :, v:v + 1], b[:, :, v + dv:v + dv + 1])
                     for r in cols.values() for v in range(*r) if not lo <= v < hi}
            # row sums of the core and of each edge column, once per (source, row range): members of a key
            # share them (a 3 x 3 kernel's taps span at most 3 row ranges)
            sums: dict[tuple[int | None, int, int], torch.Tensor] = {}
            for i, j, i2, j2 in members:
                (r0, r1), (c0, c1) = rows[i], cols.get(j, (0, 0))
                if r1 <= r0 or c1 <= c0:
                    continue
                target = blocks[:, i, j, i2, j2]
                for v in [None, *(v for v in edges if c0 <= v < c1)]:
                    if (v, r0, r1) not in sums:
                        sums[v, r0, r1] = (core if v is None else edges[v])[r0 - u0:r1 - u0].sum(0)
                    target += sums[v, r0, r1]
    k = kh * kw
    full = blocks.view(g, k, k, c, c)
    for t in range(k):
        for u in range(t):
            full[:, t, u] = full[:, u, t].transpose(1, 2)
    # (g, tap, tap', c, c') -> (g, c * k + tap, c' * k + tap'), channel-major like the weight
    hessian += full.permute(0, 3, 1, 4, 2).reshape(g, c * k, c * k)
    return n * out_h * out_w


def _row_products(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(rows, g, columns, images, c) x 2 -> (rows, g, c, c): per row and group, the sum over columns and images
    of first^T second."""
    rows, g, _, _, c = first.shape
    product = torch.bmm(first.reshape(rows * g, -1, c).transpose(1, 2), second.reshape(rows * g, -1, c))
    return product.view(rows, g, c, c)


def _padding(module: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of the convolution's input."""
    adapter = next((fn for t, fn in _PADDING_ADAPTERS.items() if isinstance(module, t)), None)
    if adapter is not None:
        return adapter(module, x)
    if isinstance(module.padding, str):
        raise ConfigError(f"Layer uses string padding {module.padding!r}, which is not supported.")
    ph, pw = module.padding
    return ph, ph, pw, pw


def _padded_input(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input as the convolution's kernel sees it, zero padding included."""
    top, bottom, left, right = _padding(module, x)
    return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


def symmetric_blocks(d: int) -> list[int]:
    """Edges of the blocks a product with a symmetric d x d matrix is split into, so that only its upper block
    triangle is computed: up to 8 blocks of at least 256 rows ([0, d] for one block)."""
    blocks = max(1, min(8, d // 256))
    return [round(i * d / blocks) for i in range(blocks + 1)]


def add_gram(hessian: torch.Tensor, cols: torch.Tensor) -> None:
    """hessian += cols^T cols per group, computing only the upper block triangle of this symmetric
    product (cols: (groups, rows, d); hessian: (groups, d, d); `symmetric_blocks`). Wide layers save up to ~45% of
    the work."""
    edges = symmetric_blocks(cols.shape[2])
    blocks = len(edges) - 1
    if blocks == 1:
        hessian.baddbmm_(cols.transpose(1, 2), cols)
        return
    for i in range(blocks):
        rows_i = slice(edges[i], edges[i + 1])
        left = cols[:, :, rows_i].transpose(1, 2)
        for j in range(i, blocks):
            cols_j = slice(edges[j], edges[j + 1])
            product = torch.bmm(left, cols[:, :, cols_j])
            hessian[:, rows_i, cols_j] += product
            if j != i:
                hessian[:, cols_j, rows_i] += product.transpose(1, 2)


def _empty_gram(module: nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(groups, d, d) zeros to accumulate a target layer's Gram matrices in."""
    d = module.weight[0].numel()
    return torch.zeros(getattr(module, "groups", 1), d, d, dtype=dtype, device=device)


@contextmanager
def record_inputs(layers: dict[str, nn.Module], on_input: Callable[[str, nn.Module, torch.Tensor], None]):
    """Call ``on_input(name, module, input)`` before each target layer runs; hooks always removed."""
    handles = []
    try:
        for name, module in layers.items():
            def hook(mod, args, _name=name):
                on_input(_name, mod, args[0])
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def collect_statistics(model: nn.Module, batch: torch.Tensor, layers: list[str] | None = None, *,
                       selection: LayerSelection = LayerSelection(), batch_size: int = 64,
                       dtype: torch.dtype = torch.float32, progress: Progress | None = None
                       ) -> LayerStatistics:
    """One pass of the dense `model` over `batch` accumulating every target layer's Gram matrix.

    batch: (N, 3, H, W) normalized float tensor (any device; moved to the model's device in chunks
    of `batch_size`). layers: names of target layers (default: `prunable_layers(model, selection)`).
    dtype: accumulation dtype, float32 by default, torch.float64 on request.
    The dense inputs of the last target layer, when it is a linear layer, are kept for an output refit
    (`LayerStatistics.output_fit`, which also keeps a reference to the batch). The pass runs on the model's cached
    forward copy (``spade.forward_copy``: BatchNorm folded, channels_last; the same function, about twice as fast
    on the CPU), whose target layers see the same inputs up to float rounding. On a GPU the pass runs without TF32
    (`spade.devices.full_float32`), so the statistics match the CPU's up to summation order. The model is only
    read; the hooks are removed even if the pass raises.
    """
    device = model_device(model)
    candidates = dict(model.named_modules())
    if layers is None:
        targets = prunable_layers(model, selection)
    else:
        missing = [n for n in layers if not isinstance(candidates.get(n), (nn.Conv2d, nn.Linear))]
        if missing:
            raise ConfigError(f"Not a Conv2d/Linear layer of this model: {', '.join(missing[:5])}.")
        targets = {n: candidates[n] for n in layers}
    grams = {name: _empty_gram(m, dtype, device) for name, m in targets.items()}
    counts = dict.fromkeys(targets, 0)
    output_name = output_layer(model, list(targets))
    output_rows: list[torch.Tensor] = []

    def on_input(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if name == output_name:
            output_rows.append(x.detach().reshape(-1, x.shape[-1]).float())
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            counts[name] += add_conv_gram_by_shifts(grams[name], module, x.detach())
            return
        for cols in pointwise_columns(module, x.detach()):
            cols = cols.to(dtype)
            add_gram(grams[name], cols)
            counts[name] += cols.shape[1]

    start = time.perf_counter()
    n = batch.shape[0]
    with forward_copy(model, batch[:1].to(device)) as work:
        hooked = {name: work.get_submodule(name) for name in targets}
        with record_inputs(hooked, on_input), torch.inference_mode(), full_float32():
            if progress is not None:
                progress("statistics", 0.0)  # started: a display does not stand still during the first batch
            for i in range(0, n, batch_size):
                work(batch[i:i + batch_size].to(device))
                if progress is not None:
                    progress("statistics", min(n, i + batch_size) / n)
    stats = {}
    for name, module in targets.items():
        if counts[name]:
            grams[name].mul_(2.0 / counts[name])
        stats[name] = LayerStat(name=name, kind=layer_kind(module), weight_shape=tuple(module.weight.shape),
                                hessian=grams[name], rows=counts[name])
    fit = None
    if output_name is not None and sum(r.shape[0] for r in output_rows) == n:  # one row per image: a classifier head
        fit = OutputFit(output_name, torch.cat(output_rows), torch.ones(n, dtype=torch.float64), lambda: batch)
    seconds = time.perf_counter() - start
    log.info("collected statistics of %d layers over %d inputs in %.2fs", len(stats), batch.shape[0], seconds)
    return LayerStatistics(model=model, layers=stats, output_fit=fit, seconds={"statistics": seconds})
