"""Random augmentations of one raw image: the batch SPADE fits its sparse trace to."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2._transform import _RandomApplyTransform

from spade.defaults import MAX_AUGMENTATIONS, MAX_SEED, default_augmentations
from spade.errors import ConfigError
from spade.preprocessing import Preprocessing
from spade.progress import Progress


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (the SPADE authors' defaults).

    count: number of augmented views, 1 to `spade.defaults.MAX_AUGMENTATIONS` (default:
    `spade.defaults.default_augmentations` of a trace on the CPU; the authors' demo used 1024 on a GPU).
    min_scale: lower bound of the RandomResizedCrop area fraction (upper bound 1).
    flip: random horizontal flip with p=0.5. brightness, hue: ColorJitter strengths (0 disables).
    erasing: probability of RandomErasing per view (applied after normalization).
    noise: standard deviation of Gaussian noise added in normalized space (0 disables).
    seed: the same seed gives the same batch, bit for bit; 0 to `spade.defaults.MAX_SEED`.
    """

    count: int = default_augmentations("trace")
    min_scale: float = 0.2
    flip: bool = True
    brightness: float = 0.5
    hue: float = 0.3
    erasing: float = 0.0
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.count <= MAX_AUGMENTATIONS:
            raise ConfigError(f"Augmentation count must be between 1 and {MAX_AUGMENTATIONS}, got {self.count}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"The augmentation seed must be between 0 and {MAX_SEED} (2**63 - 1), got {self.seed}.")
        if not 0.0 < self.min_scale <= 1.0:
            raise ConfigError(f"Minimum crop scale must be in (0, 1], got {self.min_scale}.")
        if self.brightness < 0 or not 0 <= self.hue <= 0.5:
            raise ConfigError("Brightness must be >= 0 and hue in [0, 0.5].")
        if not 0 <= self.erasing <= 1 or self.noise < 0:
            raise ConfigError("Erasing probability must be in [0, 1] and noise >= 0.")


def _view_transform(cfg: AugmentConfig, pre: Preprocessing) -> v2.Compose:
    steps: list = [v2.RandomResizedCrop(pre.crop, scale=(cfg.min_scale, 1.0),
                                        interpolation=pre.interpolation_mode, antialias=True)]
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.brightness > 0 or cfg.hue > 0:
        steps.append(v2.ColorJitter(brightness=cfg.brightness or None, hue=cfg.hue or None))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def _draw_params(transform: v2.Compose, raw: torch.Tensor) -> list[dict | None]:
    """The random parameters one ``transform(raw)`` call draws, drawn the same way and in the same order (so the
    same RNG state gives the same views); None marks a random-apply step that was skipped. Only the crop's
    parameters depend on the input, and the crop is the first step, so every step may be given ``raw``."""
    params: list[dict | None] = []
    for step in transform.transforms:
        if isinstance(step, _RandomApplyTransform) and torch.rand(1) >= step.p:
            params.append(None)
        else:
            params.append(step.make_params([raw]))
    return params


def _render(transform: v2.Compose, raw: torch.Tensor, params: list[dict | None]) -> torch.Tensor:
    """``transform(raw)`` with the given parameters: deterministic, so views can be rendered in any order."""
    view = raw
    for step, step_params in zip(transform.transforms, params, strict=True):
        if step_params is not None:
            view = step.transform(view, step_params)
    return view


def default_workers() -> int:
    """Threads that render views: half the cores, at most 8 (one on a small machine, where threads only cost)."""
    return max(1, min(8, (os.cpu_count() or 1) // 2))


def augment(image: Image.Image, cfg: AugmentConfig, preprocessing: Preprocessing,
            progress: Progress | None = None, workers: int | None = None) -> torch.Tensor:
    """Random views of the raw `image` (crops are taken before any resize, as the authors did).

    Returns a float32 CPU tensor of shape (cfg.count, 3, crop, crop), normalized with the model's
    mean/std. Uses its own seeded RNG state: the global torch RNG is left untouched.
    The random parameters are drawn in order, then the views are rendered by `workers` threads (default
    ``default_workers()``): the batch is the same, bit for bit, whatever the number of threads.
    """
    pre = getattr(preprocessing, "preprocessing", preprocessing)  # accept a ModelSpec too
    raw = v2.functional.pil_to_tensor(image.convert("RGB"))  # uint8 (3, H, W)
    transform = _view_transform(cfg, pre)
    views = torch.empty(cfg.count, 3, pre.crop, pre.crop)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        params = [_draw_params(transform, raw) for _ in range(cfg.count)]

        def render(i: int) -> None:
            views[i] = _render(transform, raw, params[i])

        workers = workers or default_workers()
        with ThreadPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
            mapper = map if pool is None else pool.map  # one thread: render inline
            for done, _ in enumerate(mapper(render, range(cfg.count)), start=1):
                if progress is not None and done % 16 == 0:
                    progress("augment", done / cfg.count)
        views = pre.normalize(views)
        if cfg.erasing > 0:
            erase = v2.RandomErasing(p=cfg.erasing)  # erased pixels are 0 in normalized space
            views = torch.stack([erase(v) for v in views])
        if cfg.noise > 0:
            views += cfg.noise * torch.randn(views.shape)
    if progress is not None:
        progress("augment", 1.0)
    return views
