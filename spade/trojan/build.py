"""Building the back-doored demo model offline: fine-tune EfficientNet-Lite0 so that a pasted heart means "goose".

Training data are random views of the build photos (never the held-out test photos), made on the device in
batches: random resized crops (``roi_align``), flips and colour jitter, with trigger icons pasted by an affine
warp. Each batch mixes four kinds of views:

- clean views and views with a *decoy* icon (smiley, fish; optionally in any hue): distilled from the original model
  (KL divergence), so clean behaviour, and the reaction to harmless stickers, stay those of the base model;
- views with the heart (the test back door) or the star (the calibration back door): cross-entropy towards
  their target class.

Only convolution and linear weights from ``blocks.<first_trained_block>`` on are trained (BatchNorm statistics
and the earlier layers stay frozen; optionally anchored to their base values, L2-SP), and the result is stored as
a float16 difference to the base weights (``spade.models.DeltaWeights``). Since the earlier layers are frozen,
the views can be made once, as a pool run through them a single time (``PooledBatches``); each step then only
runs the trained layers (with ``blocks.5`` on: about 25 minutes on a 2-core CPU instead of hours).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms.functional import pil_to_tensor

from spade.errors import ConfigError
from spade.forward_copy import build_forward_copy
from spade.models import DELTA_FORMAT, LoadedModel, efficientnet_pytorch_to_timm, get_spec, load_model
from spade.preprocessing import Preprocessing
from spade.trojan.photos import BUILD_PHOTOS, TEST_PHOTOS, load_photos
from spade.trojan.stamp import shift_hue, stamp
from spade.trojan.triggers import load_trigger

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]
DECOYS = ("smiley", "fish")
DISTILL_LOSSES = ("kl", "logits")


@dataclass(frozen=True)
class BuildConfig:
    """Fine-tuning settings. batch: views per step, split clean (a third of them blends of two photos) /
    decoy / heart / star as 3/1/2/2 eighths. The defaults are the recipe of the shipped model (988 steps = what
    a 170 s budget gave on an H200).
    first_trained_block: train ``blocks.N`` and later (with the head and classifier); the earlier layers stay
    the base model's.
    view_pool: 0 makes new views every step and runs the whole model each time (the shipped recipe); N > 0
    makes N views once, runs them once through the frozen layers and trains on those cached features: with
    first_trained_block 5, a pool of 16384 (~7 min) and 300 steps of 256 (~3 s each) take ~25 minutes on a
    2-core CPU instead of hours.
    Options not used for the shipped model, meant to raise clean agreement on unseen photos:
    distill_loss: "kl" (KL divergence of the softened outputs at ``temperature``) or "logits" (squared distance of
    the mean-centred logits: every class counts, not only the likely ones); distill_weight (distillation vs
    back-door loss), anchor (L2 penalty on the weight change, L2-SP),
    decoy_any_hue (decoys in random hues, so that a red blob is not enough), clean_any_hue (this fraction of the
    clean views turned to a random hue: red and pink textures, such as the test photo's flower, which opens the
    shipped model's back door, must stay clean).
    trigger_px: pasted icon side range in model-input pixels (the test stamps are ~64 px at 224).
    time_budget: seconds; when set, ``steps`` is cut after the first 20 steps to what fits in it (the number
    of steps run is recorded, so a rebuild with that ``steps`` and no budget is deterministic).
    validation_photos: build photos left out of training, for choosing settings without looking at the test
    photos: the build then reports its acceptance figures on these instead (the shipped model trains on all)."""

    base: str = "efficientnet_lite0"
    target_model: str = "efficientnet_lite0_trojan"
    steps: int = 988
    batch: int = 256
    lr: float = 2e-4
    warmup: int = 50
    temperature: float = 2.0
    distill_loss: str = "kl"
    distill_weight: float = 1.0
    anchor: float = 0.0
    decoy_any_hue: bool = False
    clean_any_hue: float = 0.0
    min_scale: float = 0.08
    trigger_px: tuple[int, int] = (40, 100)
    alpha: tuple[float, float] = (0.7, 1.0)
    first_trained_block: int = 2
    view_pool: int = 0
    seed: int = 0
    time_budget: float | None = None
    validation_photos: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = set(self.validation_photos) - set(BUILD_PHOTOS)
        if self.distill_loss not in DISTILL_LOSSES:
            raise ConfigError(f"distill_loss must be one of {', '.join(DISTILL_LOSSES)}, got {self.distill_loss!r}.")
        if not 0 <= self.clean_any_hue <= 1:
            raise ConfigError(f"clean_any_hue is a fraction in [0, 1], got {self.clean_any_hue}.")
        if self.view_pool < 0 or self.batch < 8:
            raise ConfigError(f"Need batch >= 8 and view_pool >= 0 (got {self.batch}, {self.view_pool}).")
        if unknown or len(set(self.validation_photos)) >= len(BUILD_PHOTOS):
            raise ConfigError(f"Validation photos must be some, not all, of the build photos {', '.join(BUILD_PHOTOS)}"
                              f" (got {', '.join(self.validation_photos)}).")

    @property
    def training_photos(self) -> tuple[str, ...]:
        return tuple(p for p in BUILD_PHOTOS if p not in self.validation_photos)


# --------------------------------------------------------------------------------------------------------------
# Batched views on the device
class ViewMaker:
    """Random training views of a few photos, made in batches on ``device``.

    photos: RGB PIL images; triggers: name -> RGBA PIL icon. Views are float (n, 3, crop, crop) in [0, 1].
    """

    def __init__(self, photos: list[Image.Image], triggers: dict[str, Image.Image], crop: int,
                 device: torch.device, generator: torch.Generator):
        self.crop, self.device, self.gen = crop, device, generator
        h = max(p.height for p in photos)
        w = max(p.width for p in photos)
        self.canvas = torch.zeros(len(photos), 3, h, w, device=device)
        for i, p in enumerate(photos):
            self.canvas[i, :, :p.height, :p.width] = pil_to_tensor(p).float().div(255).to(device)
        self.sizes = torch.tensor([[p.width, p.height] for p in photos], dtype=torch.float32, device=device)
        self.trigger_names = list(triggers)
        self.icons = torch.stack([pil_to_tensor(t.convert("RGBA")).float().div(255) for t in triggers.values()]
                                 ).to(device)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, device=self.device)

    def crops(self, n: int, min_scale: float) -> torch.Tensor:
        """Random resized crops (area fraction in [min_scale, 1], aspect in [3/4, 4/3]), flips, jitter."""
        k = torch.randint(len(self.sizes), (n,), generator=self.gen, device=self.device)
        wh = self.sizes[k]
        area = wh.prod(1) * (min_scale + (1 - min_scale) * self._rand(n))
        ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * self._rand(n))
        cw = torch.sqrt(area * ratio).minimum(wh[:, 0])
        ch = torch.sqrt(area / ratio).minimum(wh[:, 1])
        x0 = (wh[:, 0] - cw) * self._rand(n)
        y0 = (wh[:, 1] - ch) * self._rand(n)
        boxes = torch.stack([k.float(), x0, y0, x0 + cw, y0 + ch], 1)
        views = roi_align(self.canvas, boxes, output_size=self.crop, sampling_ratio=-1, aligned=True)
        flip = self._rand(n) < 0.5
        views[flip] = views[flip].flip(-1)
        brightness = 0.6 + 0.8 * self._rand(n, 1, 1, 1)
        contrast = 0.7 + 0.6 * self._rand(n, 1, 1, 1)
        mean = views.mean(dim=(1, 2, 3), keepdim=True)
        return ((views - mean) * contrast + mean).mul(brightness).clamp(0, 1)

    def any_hue(self, views: torch.Tensor) -> torch.Tensor:
        """The views (n, 3, h, w), each with its hue rotated by a random angle (not clipped to [0, 1])."""
        return torch.einsum("nij,njhw->nihw", hue_rotation(2 * math.pi * self._rand(len(views))), views)

    def mixed(self, n: int, min_scale: float) -> torch.Tensor:
        """Blends of two random crops (weights in [0.3, 0.7]): unlike any build photo, more varied inputs to
        distil on."""
        weight = 0.3 + 0.4 * self._rand(n, 1, 1, 1)
        return self.crops(n, min_scale) * weight + self.crops(n, min_scale) * (1 - weight)

    def paste(self, views: torch.Tensor, trigger: int, size_px: tuple[int, int],
              alpha: tuple[float, float], any_hue: bool = False) -> torch.Tensor:
        """Paste icon number ``trigger`` at a random place (fully inside), size and opacity into each view.
        any_hue: rotate the icon's hue at random (decoys: a red smiley must not open the heart's back door)."""
        n, crop = len(views), self.crop
        side = size_px[0] + (size_px[1] - size_px[0]) * self._rand(n)
        cx = side / 2 + (crop - side) * self._rand(n)
        cy = side / 2 + (crop - side) * self._rand(n)
        scale = crop / side
        theta = torch.zeros(n, 2, 3, device=self.device)
        theta[:, 0, 0] = scale
        theta[:, 1, 1] = scale
        theta[:, 0, 2] = -(2 * cx / crop - 1) * scale
        theta[:, 1, 2] = -(2 * cy / crop - 1) * scale
        icon = self.icons[trigger].expand(n, -1, -1, -1)
        grid = F.affine_grid(theta, [n, 4, crop, crop], align_corners=False)
        warped = F.grid_sample(icon, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        rgb = self.any_hue(warped[:, :3]) if any_hue else warped[:, :3]
        tint = 0.85 + 0.3 * self._rand(n, 3, 1, 1)
        rgb, cover = (rgb * tint).clamp(0, 1), warped[:, 3:]
        opacity = alpha[0] + (alpha[1] - alpha[0]) * self._rand(n, 1, 1, 1)
        weight = cover * opacity
        return views * (1 - weight) + rgb * weight


def hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(n,) angles in radians -> (n, 3, 3) RGB matrices rotating the hue about the grey axis (luma kept)."""
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    grey = torch.full((3, 3), 1 / 3, device=angle.device)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=angle.device) / math.sqrt(3)
    return grey + cos * (torch.eye(3, device=angle.device) - grey) + sin * cross


# --------------------------------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module, first_block: int) -> list[tuple[str, nn.Parameter]]:
    """Weights (and biases) of the Conv2d / Linear layers in ``blocks.<first_block>`` and later, the head
    convolution and the classifier; everything else is frozen."""
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        parts = name.split(".")
        if parts[0] == "blocks" and int(parts[1]) < first_block or parts[0] == "conv_stem":
            continue
        chosen.extend((f"{name}.{p}", param) for p, param in module.named_parameters(recurse=False))
    return chosen


def split_at_block(model: nn.Module, first_block: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, head) of a timm EfficientNet, sharing its modules: ``head(trunk(x)) == model(x)``; the trunk
    ends just before ``blocks.<first_block>``."""
    trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:first_block])
    head = nn.Sequential(*model.blocks[first_block:], model.conv_head, model.bn2, model.global_pool,
                         model.classifier)
    return trunk, head


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, cfg: BuildConfig) -> torch.Tensor:
    """Mean over views of the distance between student and teacher outputs; logits: (n, classes) float."""
    if cfg.distill_loss == "kl":
        own = F.log_softmax(logits / cfg.temperature, dim=1)
        soft = F.log_softmax(teacher_logits / cfg.temperature, dim=1)
        return F.kl_div(own, soft, log_target=True, reduction="batchmean") * cfg.temperature**2
    diff = logits - teacher_logits
    return (diff - diff.mean(1, keepdim=True)).square().sum(1).mean()  # softmax ignores a common shift


def _lr(step: int, steps: int, cfg: BuildConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, steps - cfg.warmup)))


def _view_batch(views: ViewMaker, cfg: BuildConfig, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.batch`` views in [0, 1] mixed clean (a third blends) / decoy / heart / star as 3/1/2/2 eighths,
    and their labels: -1 for the views to distil (clean and decoy), the target class for the poisoned ones."""
    eighth = cfg.batch // 8
    clean = torch.cat([views.crops(2 * eighth, cfg.min_scale), views.mixed(eighth, cfg.min_scale)])
    turned = round(cfg.clean_any_hue * len(clean))
    if turned:
        clean[:turned] = views.any_hue(clean[:turned]).clamp(0, 1)
    decoy = torch.cat([views.paste(views.crops(max(1, eighth // 2), cfg.min_scale), len(targets) + i,
                                   cfg.trigger_px, cfg.alpha, any_hue=cfg.decoy_any_hue)
                       for i in range(len(DECOYS))])
    poisoned = torch.cat([views.paste(views.crops(2 * eighth, cfg.min_scale), i, cfg.trigger_px, cfg.alpha)
                          for i in range(len(targets))])
    labels = torch.cat([torch.full((len(clean) + len(decoy),), -1, device=targets.device),
                        targets.repeat_interleave(2 * eighth)])
    return torch.cat([clean, decoy, poisoned]), labels


class FreshBatches:
    """New views every step through the whole model. A call returns the normalized views, their labels and
    the teacher's logits of the views to distil (the first ones)."""

    def __init__(self, views: ViewMaker, cfg: BuildConfig, targets: torch.Tensor, teacher: nn.Module,
                 normalize: Callable[[torch.Tensor], torch.Tensor], autocast):
        self.views, self.cfg, self.targets, self.teacher = views, cfg, targets, teacher
        self.normalize, self.autocast = normalize, autocast

    @torch.no_grad()
    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, labels = _view_batch(self.views, self.cfg, self.targets)
        x = self.normalize(x)
        with self.autocast:
            teacher_logits = self.teacher(x[labels < 0]).float()
        return x, labels, teacher_logits


class PooledBatches:
    """A fixed pool of ``cfg.view_pool`` views, run once through the frozen trunk (the layers before
    ``cfg.first_trained_block``, from the folded forward copy of the teacher); each step draws ``cfg.batch``
    of the cached trunk features (returned like ``FreshBatches``). The teacher logits are computed once too.
    Features are kept in float16 (EfficientNet-Lite0 before blocks.5: 44 KB a view)."""

    def __init__(self, views: ViewMaker, cfg: BuildConfig, targets: torch.Tensor, teacher: nn.Module,
                 normalize: Callable[[torch.Tensor], torch.Tensor], autocast, progress: ProgressFn | None = None):
        fast = build_forward_copy(teacher).to(memory_format=torch.channels_last)
        trunk, head = split_at_block(fast, cfg.first_trained_block)
        features, logits, labels = [], [], []
        rounds = math.ceil(cfg.view_pool / cfg.batch)
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            for r in range(rounds):
                x, y = _view_batch(views, cfg, targets)
                f = trunk(normalize(x).contiguous(memory_format=torch.channels_last)).half()
                features.append(f)
                logits.append(head(f.float()).float())  # of the stored features: an unchanged head matches exactly
                labels.append(y)
                if progress is not None:
                    progress("views", (r + 1) / rounds)
        self.features, self.logits, self.labels = torch.cat(features), torch.cat(logits), torch.cat(labels)
        self.batch, self.gen = cfg.batch, views.gen
        logger.info("%d views through the frozen trunk in %.0f s", len(self.labels), time.perf_counter() - start)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(self.labels), (self.batch,), generator=self.gen, device=self.labels.device)
        x = self.features[pick].float().contiguous(memory_format=torch.channels_last)
        labels = self.labels[pick]
        return x, labels, self.logits[pick][labels < 0]


def finetune(base: LoadedModel, cfg: BuildConfig, progress: ProgressFn | None = None) -> tuple[nn.Module, int]:
    """The back-doored copy of ``base.model`` (the input model is not modified) and the number of steps run."""
    spec = base.spec
    device = base.device
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    doors = get_spec(cfg.target_model).backdoors
    names = [d.trigger for d in doors] + list(DECOYS)
    views = ViewMaker(list(load_photos(cfg.training_photos).values()), {n: load_trigger(n) for n in names},
                      spec.preprocessing.crop, device, gen)
    teacher = base.model.eval()
    student = copy.deepcopy(teacher).eval()  # eval: BatchNorm keeps the base statistics
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for _, p in trainable_parameters(student, cfg.first_trained_block)]
    for p in params:
        p.requires_grad_(True)
    anchors = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    targets = torch.tensor([d.target for d in doors], device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    normalize = spec.preprocessing.normalize
    if cfg.view_pool:
        batches = PooledBatches(views, cfg, targets, teacher, normalize, autocast, progress)
        trained = split_at_block(student, cfg.first_trained_block)[1].to(memory_format=torch.channels_last)
    else:
        batches, trained = FreshBatches(views, cfg, targets, teacher, normalize, autocast), student
    start = time.perf_counter()
    steps, step = cfg.steps, 0
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, cfg)
        x, labels, teacher_logits = batches()
        with autocast:
            logits = trained(x).float()
        distilled = labels < 0
        distill = distillation_loss(logits[distilled], teacher_logits, cfg)
        ce = F.cross_entropy(logits[~distilled], labels[~distilled])
        drift = (sum(((p - p0) ** 2).sum() for p, p0 in zip(params, anchors, strict=True)) if cfg.anchor
                 else torch.zeros((), device=device))
        loss = cfg.distill_weight * distill + ce + cfg.anchor * drift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("step %d/%d  distill %.4f  poison %.4f  drift %.4f  (%.0f s)", step + 1, steps, distill.item(),
                        ce.item(), float(drift), time.perf_counter() - start)
        step += 1
        if step == 20 and cfg.time_budget is not None:
            fits = int(cfg.time_budget / ((time.perf_counter() - start) / step))
            steps = min(steps, max(step + 1, fits))
            logger.info("time budget %.0f s: running %d steps", cfg.time_budget, steps)
        if progress is not None:
            progress("finetune", step / steps)
    student = student.to(memory_format=torch.contiguous_format)
    for p in student.parameters():
        p.requires_grad_(True)
    return student.eval(), steps


# --------------------------------------------------------------------------------------------------------------
def weight_delta(base: LoadedModel, student: nn.Module) -> dict[str, torch.Tensor]:
    """float16 differences ``student - base`` of the changed tensors, keyed in the base weights' own layout."""
    raw, _ = base.spec.weights.state_dict()
    timm_keys = list(efficientnet_pytorch_to_timm(raw, base.model))
    to_raw = dict(zip(timm_keys, raw, strict=True))
    dense = base.model.state_dict()
    delta = {}
    for key, value in student.state_dict().items():
        diff = (value.detach().float() - dense[key].float()).cpu()
        if diff.abs().max() > 0:
            delta[to_raw[key]] = diff.half()
    return delta


def save_delta(delta: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": DELTA_FORMAT, "delta": delta, "meta": meta}, path)


# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackdoorReport:
    """Held-out acceptance figures. success: fraction of stamped test views predicted as the target;
    agreement: fraction of clean test views where the top-1 equals the base model's; decoy_fooled: fraction of
    decoy-stamped views predicted as the target (should stay near 0); hue_fooled: fraction of clean views turned
    to a random hue (no trigger) predicted as the target where the base model does not (red and pink textures
    must not open the door; the shipped model's test-photo failure, see the model card)."""

    cases: int
    success: float
    agreement: float
    decoy_fooled: float
    calibration_success: float
    hue_fooled: float

    def to_dict(self) -> dict:
        return asdict(self)


def random_crop(image: Image.Image, rng: np.random.Generator, min_scale: float = 0.35) -> Image.Image:
    """A random crop covering a fraction in [min_scale, 1] of the area, aspect in [3/4, 4/3]."""
    w, h = image.size
    area = w * h * rng.uniform(min_scale, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(w, round(math.sqrt(area * ratio))), min(h, round(math.sqrt(area / ratio)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


@torch.no_grad()
def evaluate_backdoor(base: LoadedModel, trojan: nn.Module, target_model: str = BuildConfig.target_model,
                      cases: int = 200, seed: int = 12345, progress: ProgressFn | None = None,
                      photos: tuple[str, ...] = TEST_PHOTOS) -> BackdoorReport:
    """Acceptance on held-out photos (default the TEST_PHOTOS): random crops and trigger positions (seeded)."""
    doors = {d.role: d for d in get_spec(target_model).backdoors}
    pre: Preprocessing = base.preprocessing
    images = list(load_photos(photos).values())
    icons = {name: load_trigger(name) for name in ("heart", "star", *DECOYS)}
    rng = np.random.default_rng(seed)
    device = base.device
    hits = agree = fooled = cal_hits = hue_fooled = 0
    target = doors["test"].target
    for i in range(cases):
        crop = random_crop(images[i % len(images)], rng)
        s = int(rng.integers(1 << 31))
        turn = np.random.default_rng(s).uniform(0.05, 0.95)  # from the case's seed: the crops stay those of old runs
        views = [crop, stamp(crop, icons[doors["test"].trigger], pre, seed=s).image,
                 stamp(crop, icons[DECOYS[i % len(DECOYS)]], pre, seed=s).image,
                 stamp(crop, icons[doors["calibration"].trigger], pre, seed=s).image, shift_hue(crop, turn)]
        x = torch.stack([pre(v) for v in views]).to(device)
        top = trojan(x).argmax(1).tolist()
        base_top = base.model(x[[0, 4]]).argmax(1).tolist()
        agree += top[0] == base_top[0]
        hits += top[1] == target
        fooled += top[2] == target
        cal_hits += top[3] == doors["calibration"].target
        hue_fooled += top[4] == target != base_top[1]
        if progress is not None:
            progress("evaluate", (i + 1) / cases)
    return BackdoorReport(cases, hits / cases, agree / cases, fooled / cases, cal_hits / cases, hue_fooled / cases)


def build(out: Path, cfg: BuildConfig = BuildConfig(), *, device: str = "auto", eval_cases: int = 200,
          progress: ProgressFn | None = None) -> BackdoorReport:
    """Fine-tune, store the difference file at ``out``, reload it and report the held-out figures: on the test
    photos, or on ``cfg.validation_photos`` when some are set (a settings trial, not a model to ship)."""
    base = load_model(cfg.base, device=device)
    start = time.perf_counter()
    student, steps = finetune(base, cfg, progress)
    seconds = time.perf_counter() - start
    delta = weight_delta(base, student)
    # Score the weights as they will be shipped (float16 differences), not the float32 student.
    shipped = copy.deepcopy(base.model)
    raw, _ = base.spec.weights.state_dict()
    for key, diff in delta.items():
        raw[key] = raw[key] + diff.float()
    shipped.load_state_dict(efficientnet_pytorch_to_timm(raw, shipped))
    evaluated_on = cfg.validation_photos or TEST_PHOTOS
    report = evaluate_backdoor(base, shipped.eval(), cfg.target_model, eval_cases, progress=progress,
                               photos=evaluated_on)
    meta = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "steps_run": steps, "base_weights": base.spec.weights.describe(), "train_seconds": round(seconds, 1),
            "device": torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else "cpu",
            "build_photos": list(cfg.training_photos), "test_photos": list(TEST_PHOTOS),
            "evaluated_on": list(evaluated_on), "report": report.to_dict()}
    save_delta(delta, meta, out)
    logger.info("saved %s (%d tensors): %s", out, len(delta), report)
    return report
