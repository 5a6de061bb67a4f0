"""Keeping clean behaviour after planting a back door: merge the fine-tuned model into its base, layer by layer.

Fine-tuning on a few build photos moves the clean top-1 of unseen photos (near-ties of the base model flip).
The merge keeps, for every trained layer, the base weights wherever the build views' clean inputs reach and the
fine-tuned weights only where the trigger's inputs need them. In forward order (each layer sees the inputs that
the already merged layers give it), with the Gram matrices of the layer's input patches

- ``H_clean`` over clean and decoy views, and over trigger views away from the trigger, and
- ``H_trigger`` over the output positions on or next to the pasted trigger (``dilate`` cells around it at the
  layer's resolution; the whole view for the classifier),

the merged weight W minimises

    ||(W - W_base) X_clean||^2 + lam ||(W - W_trojan) X_trigger||^2 + delta ||W - W_base||^2,

    W = (W_base (H_clean + delta I) + lam W_trojan H_trigger) (H_clean + lam H_trigger + delta I)^-1

(RegMean, Jin et al., ICLR 2023, with position masks; ``delta`` = ``damp`` x the mean diagonal). Depthwise
convolutions solve one small system per channel. On a 2-core CPU a merge of 576 views takes ~3.5 minutes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spade.errors import ConfigError
from spade.models import LoadedModel, get_spec, load_model
from spade.statistics import _padded_input, _padding
from spade.trojan.build import (
    DECOYS,
    BackdoorReport,
    ViewMaker,
    hue_rotation,
    load_delta_model,
    save_and_evaluate,
)
from spade.trojan.photos import BUILD_PHOTOS, load_photos
from spade.trojan.triggers import load_trigger

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class MergeConfig:
    """Merge settings.

    clean_views: clean views (a third of them blends of two photos) and clean_views / 8 views per decoy icon
    (in random hues); trigger_views: views per back door, its icon pasted 40-100 px wide. trigger_weight: lam
    above; damp: ridge towards the base weights, relative to the mean diagonal of the Gram matrix; dilate:
    cells around the trigger counted as trigger positions at every layer's resolution. hue_views: fraction of
    the clean views turned to a random hue (so that red textures, as on a pink flower, stay clean).
    first_block: the layers from ``blocks.N`` on, ``conv_head`` and the classifier are merged (earlier ones
    keep the base weights).
    validation_photos: build photos left out, as in ``BuildConfig``."""

    base: str = "efficientnet_lite0"
    target_model: str = "efficientnet_lite0_trojan"
    clean_views: int = 256
    trigger_views: int = 128
    trigger_weight: float = 2.0
    damp: float = 0.01
    dilate: int = 2
    hue_views: float = 0.0
    first_block: int = 2
    chunk: int = 64
    seed: int = 0
    validation_photos: tuple[str, ...] = ()

    def __post_init__(self):
        if self.clean_views < 8 or self.trigger_views < 1 or self.chunk < 1:
            raise ConfigError(f"Need clean_views >= 8, trigger_views >= 1 and chunk >= 1 (got {self.clean_views}, "
                              f"{self.trigger_views}, {self.chunk}).")
        if self.trigger_weight <= 0 or self.damp < 0 or self.dilate < 0 or not 0 <= self.hue_views <= 1:
            raise ConfigError(f"Need trigger_weight > 0, damp >= 0, dilate >= 0 and hue_views in [0, 1] (got "
                              f"{self.trigger_weight}, {self.damp}, {self.dilate}, {self.hue_views}).")
        unknown = set(self.validation_photos) - set(BUILD_PHOTOS)
        if unknown or len(set(self.validation_photos)) >= len(BUILD_PHOTOS):
            raise ConfigError(f"Validation photos must be some, not all, of the build photos {', '.join(BUILD_PHOTOS)}"
                              f" (got {', '.join(self.validation_photos)}).")

    @property
    def training_photos(self) -> tuple[str, ...]:
        return tuple(p for p in BUILD_PHOTOS if p not in self.validation_photos)


def merged_weight(w_base: torch.Tensor, w_trojan: torch.Tensor, h_clean: torch.Tensor, h_trigger: torch.Tensor,
                  trigger_weight: float, damp: float) -> torch.Tensor:
    """The minimiser W of ``||(W - w_base) X_c||^2 + lam ||(W - w_trojan) X_t||^2 + delta ||W - w_base||^2``.

    w_base, w_trojan: (..., out, d); h_clean = X_c X_c^T, h_trigger: (..., d, d) symmetric PSD; leading dims are
    a batch (depthwise channels). delta = damp x the mean diagonal of h_clean + lam h_trigger (plus 1e-9, so
    that an input never seen keeps its base weight). Computed in float64; returns w_base's dtype.
    """
    hc, ht = h_clean.double(), h_trigger.double()
    a = hc + trigger_weight * ht
    delta = damp * torch.diagonal(a, dim1=-2, dim2=-1).mean(-1)[..., None, None] + 1e-9
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    rhs = w_base.double() @ (hc + delta * eye) + trigger_weight * w_trojan.double() @ ht
    return torch.linalg.solve(a + delta * eye, rhs.mT).mT.to(w_base.dtype)  # a is symmetric


def patch_grams(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrices of a conv's input patches: (all positions, positions weighted by ``weight``).

    x: the input the conv receives (n, groups * c, H, W); weight: (n, 1, out_h, out_w) per output position, or
    None for zeros. Returns two float64 (groups, c * kh * kw, c * kh * kw); patch entries ordered like the
    conv's weight (input channel, then tap), so ``conv.weight.view(groups, out / groups, -1)`` fits.
    """
    g = conv.groups
    cols = F.unfold(_padded_input(conv, x.float()), conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    n, d, positions = cols.shape
    cols = cols.view(n, g, d // g, positions).permute(1, 2, 0, 3)  # (g, d/g, n, L)
    flat = cols.reshape(g, d // g, n * positions)
    full = torch.bmm(flat, flat.mT).double()
    if weight is None or not weight.any():
        return full, torch.zeros_like(full)
    weighted = (cols * weight.reshape(1, 1, n, positions)).reshape(g, d // g, n * positions)
    return full, torch.bmm(weighted, flat.mT).double()


def _output_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    top, bottom, left, right = _padding(conv, x)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    return ((x.shape[-2] + top + bottom - dh * (kh - 1) - 1) // sh + 1,
            (x.shape[-1] + left + right - dw * (kw - 1) - 1) // sw + 1)


class _Captured(Exception):
    """Stops a forward pass once the wanted layer's input is captured."""


def layer_input(module: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` receives when ``module`` runs on x (the rest of the forward pass is skipped)."""
    captured = []

    def hook(_, inputs):
        captured.append(inputs[0])
        raise _Captured

    handle = layer.register_forward_pre_hook(hook)
    try:
        with contextlib.suppress(_Captured):
            module(x)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError("The layer is not used by the module's forward pass.")
    return captured[0]


def _stages(model: nn.Module, first_block: int) -> Iterator[nn.Module]:
    """The merged part of a timm EfficientNet in forward order: its blocks, then conv_head with its BatchNorm."""
    for stage in model.blocks[first_block:]:
        yield from stage
    yield nn.Sequential(model.conv_head, model.bn2)


class _Views:
    """The merge's views: normalised inputs and their trigger masks (n, 1, crop, crop) bool, False for clean and
    decoy views."""

    def __init__(self, maker: ViewMaker, cfg: MergeConfig, backdoors: int, normalize):
        clean, n, device = cfg.clean_views, cfg.clean_views // 8, maker.device
        views = torch.cat([maker.crops(clean - clean // 3, 0.08), maker.mixed(clean // 3, 0.08)])
        turned = round(cfg.hue_views * clean)
        if turned:
            angle = 2 * math.pi * torch.rand(turned, generator=maker.gen, device=device)
            views[:turned] = torch.einsum("nij,njhw->nihw", hue_rotation(angle), views[:turned]).clamp(0, 1)
        parts, masks = [views], [torch.zeros(clean, 1, maker.crop, maker.crop, dtype=torch.bool, device=device)]
        for i in range(len(DECOYS)):
            decoy, _ = maker.paste_with_cover(maker.crops(n, 0.08), backdoors + i, (40, 100), (0.7, 1.0), any_hue=True)
            parts.append(decoy)
            masks.append(torch.zeros(n, 1, maker.crop, maker.crop, dtype=torch.bool, device=device))
        for i in range(backdoors):
            poisoned, cover = maker.paste_with_cover(maker.crops(cfg.trigger_views, 0.08), i, (40, 100), (0.7, 1.0))
            parts.append(poisoned)
            masks.append(cover > 0.05)
        self.x = normalize(torch.cat(parts))
        self.masks = torch.cat(masks)

    def at(self, rows: slice, size: tuple[int, int], dilate: int) -> torch.Tensor:
        """Float masks of views ``rows`` at a layer's output resolution, grown by ``dilate`` cells."""
        m = F.adaptive_max_pool2d(self.masks[rows].float(), size)
        return F.max_pool2d(m, 2 * dilate + 1, 1, dilate) if dilate else m


@torch.inference_mode()
def merge_backdoor(base: LoadedModel, trojan: nn.Module, cfg: MergeConfig = MergeConfig(),
                   progress: ProgressFn | None = None) -> nn.Module:
    """A copy of ``base.model`` whose layers from ``blocks.<first_block>`` on are merged with ``trojan``'s (same
    architecture, a timm EfficientNet). Neither input model is modified."""
    device, spec = base.device, base.spec
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    doors = get_spec(cfg.target_model).backdoors
    names = [d.trigger for d in doors] + list(DECOYS)
    maker = ViewMaker(list(load_photos(cfg.training_photos).values()), {n: load_trigger(n) for n in names},
                      spec.preprocessing.crop, device, gen)
    views = _Views(maker, cfg, len(doors), spec.preprocessing.normalize)
    student = copy.deepcopy(base.model).eval()
    trojan_layers = dict(trojan.named_modules())
    names_of = {id(m): name for name, m in student.named_modules()}
    chunks = [slice(i, i + cfg.chunk) for i in range(0, len(views.x), cfg.chunk)]
    trunk = nn.Sequential(student.conv_stem, student.bn1, *student.blocks[:cfg.first_block])
    feats = torch.cat([trunk(views.x[c]) for c in chunks])
    stages = list(_stages(student, cfg.first_block))
    for k, stage in enumerate(stages):
        for layer in (m for m in stage.modules() if isinstance(m, nn.Conv2d)):
            h_all = h_trigger = None
            for c in chunks:
                x = layer_input(stage, layer, feats[c])
                full, near = patch_grams(layer, x, views.at(c, _output_size(layer, x), cfg.dilate))
                h_all = full if h_all is None else h_all + full
                h_trigger = near if h_trigger is None else h_trigger + near
            w = layer.weight.view(layer.groups, layer.out_channels // layer.groups, -1)
            w_trojan = trojan_layers[names_of[id(layer)]].weight.view_as(w)
            layer.weight.copy_(merged_weight(w, w_trojan, h_all - h_trigger, h_trigger, cfg.trigger_weight,
                                             cfg.damp).view_as(layer.weight))
        feats = torch.cat([stage(feats[c]) for c in chunks])
        logger.info("merged %s (%.0f s)", type(stage).__name__, time.perf_counter() - start)
        if progress is not None:
            progress("merge", (k + 1) / (len(stages) + 1))
    pooled = student.global_pool(feats).double()
    z = torch.cat([pooled, torch.ones(len(pooled), 1, dtype=pooled.dtype, device=pooled.device)], 1)
    poisoned = views.masks.flatten(1).any(1).to(z)[:, None]
    head, trojan_head = student.classifier, trojan_layers[names_of[id(student.classifier)]]
    w = torch.cat([head.weight, head.bias[:, None]], 1)
    w_trojan = torch.cat([trojan_head.weight, trojan_head.bias[:, None]], 1)
    merged = merged_weight(w, w_trojan, (z * (1 - poisoned)).T @ z, (z * poisoned).T @ z, cfg.trigger_weight,
                           cfg.damp)
    head.weight.copy_(merged[:, :-1])
    head.bias.copy_(merged[:, -1])
    if progress is not None:
        progress("merge", 1.0)
    logger.info("merged %d views in %.0f s", len(views.x), time.perf_counter() - start)
    return student


def merge(out: Path, source: Path, cfg: MergeConfig = MergeConfig(), *, device: str = "auto",
          eval_cases: int = 200, progress: ProgressFn | None = None) -> BackdoorReport:
    """Merge the fine-tuned difference file ``source`` into the base model, store the result at ``out`` and
    report the held-out figures (on ``cfg.validation_photos`` when some are set, else the test photos)."""
    base = load_model(cfg.base, device=device)
    finetuned = load_delta_model(base, source)
    start = time.perf_counter()
    student = merge_backdoor(base, finetuned, cfg, progress)
    meta = {"config": asdict(cfg), "merged_from": source.name, "merge_seconds": round(time.perf_counter() - start, 1)}
    return save_and_evaluate(base, student, out, meta, cfg.target_model, cfg.training_photos, cfg.validation_photos,
                             eval_cases, progress)
