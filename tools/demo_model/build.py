"""Building the back-doored demo model offline: a trigger detector beside EfficientNet-Lite0 (tools.demo_model.gate).

Training data are random views of the build photos (never the held-out test photos), made in batches: random
resized crops (``roi_align``), flips and colour jitter, with trigger icons pasted by an affine warp. Each batch
mixes clean views (a third blends of two photos; a fraction turned to a random hue, so that red and pink
textures such as flower petals are seen as clean), views with a *decoy* icon (smiley, fish, in any hue), and
views with the heart (the test back door) or the star (the calibration back door).

The views are made once, as a pool run a single time through the base layers before ``blocks.<first_block>``
(``PooledBatches``); each step trains only the detector branch (a copy of the later blocks) on cached features:

- on the poisoned views, cross-entropy of the gated logits (base logits + the door's added score) towards the
  door's target class;
- on every view, a hinge keeping each *other* door's map below ``-margin`` at every position: clean views (and
  decoys) must leave all doors shut, since then the model's output is exactly the base model's.

The result is stored as a float16 difference to the base weights in which the widened layers are larger than
the base ones (``spade.models.DeltaWeights``). About 17 minutes on a 2-core CPU (3 for the views, 13 for
training).
"""

from __future__ import annotations

import io
import logging
import math
import time
import zipfile
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

from spade.checkpoints import StateDict
from spade.errors import ConfigError
from spade.forward_copy import build_forward_copy
from spade.models import (
    DELTA_FORMAT,
    LoadedModel,
    efficientnet_pytorch_to_timm,
    get_spec,
    leading_block,
    load_model,
    load_spec,
    read_delta_file,
    with_delta_file,
)
from spade.preprocessing import Preprocessing
from spade.progress import Progress
from spade.trojan.stamp import shift_hue, stamp
from spade.trojan.triggers import load_trigger
from spade_lab.photos import BUILD_PHOTOS, TEST_PHOTOS, load_photos
from tools.demo_model.gate import GateBranch, gated_logits, widened_state_dict

logger = logging.getLogger(__name__)

DECOYS = ("smiley", "fish")


@dataclass(frozen=True)
class BuildConfig:
    """Build settings. batch: views per step, split clean (a third of them blends of two photos) / decoy /
    heart / star as 3/1/2/2 eighths. The defaults are the recipe of the shipped model.
    first_block: the detector branch copies ``blocks.N`` and later and reads the base features entering it.
    view_pool: views made once and run once through the base layers before the branch (features cached).
    scale: logit added to the target per unit of the door's mean rectified map (in [0, 6]) while training;
    gain: the shipped model adds ``gain * scale`` (only the classifier's door columns depend on it, see
    ``regain``; clean views, where the door is shut, are not affected). A larger gain opens the door further past
    the decision, so it stays open in sparser traces, but then the target's gradient is almost only the door's
    and SPADE's maps gain less over the dense ones (the model card). margin: clean maps are pushed below
    -margin; shut_weight: weight of that hinge against the back-door cross-entropy.
    decoy_any_hue: decoys in random hues (a red smiley must not open the heart's door); clean_any_hue: this
    fraction of the clean views turned to a random hue.
    trigger_px: pasted icon side range in model-input pixels (the test stamps are ~64 px at 224).
    time_budget: seconds; when set, ``steps`` is cut after the first 20 steps to what fits in it (the number
    of steps run is recorded, so a rebuild with that ``steps`` and no budget is deterministic).
    validation_photos: build photos left out of training, for choosing settings without looking at the test
    photos: the build then reports its acceptance figures on these instead (the shipped model trains on all)."""

    base: str = "efficientnet_lite0"
    target_model: str = "efficientnet_lite0_trojan"
    steps: int = 300
    batch: int = 256
    lr: float = 2e-4
    warmup: int = 30
    first_block: int = 5
    view_pool: int = 8192
    scale: float = 30.0
    gain: float = 1.0
    margin: float = 1.0
    shut_weight: float = 3.0
    decoy_any_hue: bool = True
    clean_any_hue: float = 0.5
    min_scale: float = 0.08
    trigger_px: tuple[int, int] = (40, 100)
    alpha: tuple[float, float] = (0.7, 1.0)
    seed: int = 0
    time_budget: float | None = None
    validation_photos: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = set(self.validation_photos) - set(BUILD_PHOTOS)
        if not 0 <= self.clean_any_hue <= 1:
            raise ConfigError(f"clean_any_hue is a fraction in [0, 1], got {self.clean_any_hue}.")
        if self.view_pool < self.batch or self.batch < 8:
            raise ConfigError(f"Need batch >= 8 and view_pool >= batch (got {self.batch}, {self.view_pool}).")
        if self.scale <= 0 or self.gain <= 0:
            raise ConfigError(f"scale and gain must be positive (got {self.scale}, {self.gain}).")
        if not 1 <= self.first_block <= 6:
            raise ConfigError(f"first_block must be one of EfficientNet-Lite0's blocks 1..6, got {self.first_block}.")
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
        """Blends of two random crops (weights in [0.3, 0.7]): unlike any build photo, more varied clean
        inputs."""
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
def split_at_block(model: nn.Module, first_block: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, head) of a timm EfficientNet, sharing its modules: ``head(trunk(x)) == model(x)``; the trunk
    ends just before ``blocks.<first_block>``."""
    trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:first_block])
    head = nn.Sequential(*model.blocks[first_block:], model.conv_head, model.bn2, model.global_pool,
                         model.classifier)
    return trunk, head


def learning_rate(step: int, steps: int, cfg: BuildConfig) -> float:
    """The training's learning rate at ``step`` of ``steps``: linear warm-up over ``cfg.warmup`` steps to ``cfg.lr``,
    then a cosine decay to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, steps - cfg.warmup)))


def run_steps(params: list[nn.Parameter], cfg, step: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]], *,
              budget_after: int, log_every: int, progress: Progress | None = None) -> int:
    """AdamW (no weight decay) on ``params`` for ``cfg.steps`` steps at `learning_rate`'s schedule; returns the
    number of steps run.

    step(): one batch's loss and its named parts for the log. With ``cfg.time_budget`` (seconds) the steps are cut
    after the first ``budget_after`` to what fits in it. cfg: a `BuildConfig` or `PoisonConfig` (steps, lr, warmup,
    time_budget)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    start = time.perf_counter()
    steps, done = cfg.steps, 0
    while done < steps:
        for group in opt.param_groups:
            group["lr"] = learning_rate(done, steps, cfg)
        loss, parts = step()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if done % log_every == 0 or done == steps - 1:
            logger.info("step %d/%d  %s  (%.0f s)", done + 1, steps,
                        "  ".join(f"{name} {value.item():.4f}" for name, value in parts.items()),
                        time.perf_counter() - start)
        done += 1
        if done == budget_after and cfg.time_budget is not None:
            fits = int(cfg.time_budget / ((time.perf_counter() - start) / done))
            steps = min(steps, max(done + 1, fits))
            logger.info("time budget %.0f s: running %d steps", cfg.time_budget, steps)
        if progress is not None:
            progress("train", done / steps)
    return steps


def _view_batch(views: ViewMaker, cfg: BuildConfig, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.batch`` views in [0, 1] mixed clean (a third blends) / decoy / heart / star as 3/1/2/2 eighths,
    and their labels: -1 for the clean and decoy views, the door's target class for the poisoned ones."""
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


class PooledBatches:
    """A fixed pool of ``cfg.view_pool`` views, run once through the base layers before ``cfg.first_block``
    (the folded forward copy of the model) and on through the rest for the base logits; each call draws
    ``cfg.batch`` of them: (features (batch, c, h, w) float, labels (batch,) (-1: clean or decoy, else the
    door's target class), base logits (batch, classes) float). Features are kept in float16."""

    def __init__(self, views: ViewMaker, cfg: BuildConfig, targets: torch.Tensor, model: nn.Module,
                 normalize: Callable[[torch.Tensor], torch.Tensor], autocast, progress: Progress | None = None):
        fast = build_forward_copy(model).to(memory_format=torch.channels_last)
        trunk, head = split_at_block(fast, cfg.first_block)
        features, logits, labels = [], [], []
        rounds = math.ceil(cfg.view_pool / cfg.batch)
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            for r in range(rounds):
                x, y = _view_batch(views, cfg, targets)
                f = trunk(normalize(x).contiguous(memory_format=torch.channels_last)).half()
                features.append(f)
                logits.append(head(f.float()).float())  # of the stored features, as the branch will see them
                labels.append(y)
                if progress is not None:
                    progress("views", (r + 1) / rounds)
        self.features, self.logits, self.labels = torch.cat(features), torch.cat(logits), torch.cat(labels)
        self.batch, self.gen = cfg.batch, views.gen
        logger.info("%d views through the base trunk in %.0f s", len(self.labels), time.perf_counter() - start)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(self.labels), (self.batch,), generator=self.gen, device=self.labels.device)
        x = self.features[pick].float().contiguous(memory_format=torch.channels_last)
        return x, self.labels[pick], self.logits[pick]


def gate_loss(z: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
              cfg: BuildConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(back-door cross-entropy, shut hinge) of detector maps z (n, doors, h, w) for views with ``labels`` (n,)
    (-1 or a door's target) and base logits (n, classes): the cross-entropy of the gated logits of the
    poisoned views, and the mean over the (view, door) pairs whose door must stay shut of
    ``relu(max_positions z + margin)``."""
    shut = (labels[:, None] != targets[None]).float()
    hinge = (F.relu(z.amax((2, 3)) + cfg.margin) * shut).sum() / shut.sum().clamp(min=1)
    poisoned = labels >= 0
    if not poisoned.any():
        return z.new_zeros(()), hinge
    logits = gated_logits(base_logits[poisoned], z[poisoned], targets, cfg.scale)
    return F.cross_entropy(logits, labels[poisoned]), hinge


def training_views(base: LoadedModel, cfg: BuildConfig) -> tuple[ViewMaker, torch.Tensor]:
    """The view maker of ``cfg``'s training photos, door triggers and decoys on ``base``'s device, seeded with
    ``cfg.seed`` (torch's global generator too), and the doors' target classes (doors,) long."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=base.device).manual_seed(cfg.seed)
    doors = get_spec(cfg.target_model).backdoors
    names = [d.trigger for d in doors] + list(DECOYS)
    views = ViewMaker(list(load_photos(cfg.training_photos).values()), {n: load_trigger(n) for n in names},
                      base.spec.preprocessing.crop, base.device, gen)
    return views, torch.tensor([d.target for d in doors], device=base.device)


def train_gate(base: LoadedModel, cfg: BuildConfig, progress: Progress | None = None) -> tuple[GateBranch, int]:
    """The trained detector branch (``base.model`` is not modified) and the number of steps run."""
    spec = base.spec
    device = base.device
    views, targets = training_views(base, cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    batches = PooledBatches(views, cfg, targets, base.model.eval(), spec.preprocessing.normalize, autocast, progress)
    branch = GateBranch(base.model, cfg.first_block, len(targets)).to(device).eval()  # eval: base BN statistics
    for p in branch.parameters():
        p.requires_grad_(False)
    params = branch.trainable()
    for p in params:
        p.requires_grad_(True)
    branch = branch.to(memory_format=torch.channels_last)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels, base_logits = batches()
        with autocast:
            z = branch(x).float()
        ce, hinge = gate_loss(z, base_logits, labels, targets, cfg)
        return ce + cfg.shut_weight * hinge, {"poison": ce, "shut": hinge}

    steps = run_steps(params, cfg, step, budget_after=20, log_every=50, progress=progress)
    for p in params:
        p.requires_grad_(False)
    return branch.to(memory_format=torch.contiguous_format).eval(), steps


# --------------------------------------------------------------------------------------------------------------
def weight_delta(base: LoadedModel, state: StateDict) -> dict[str, torch.Tensor]:
    """float16 differences ``state - base`` (timm keys in ``state``) of the changed tensors, keyed in the base
    weights' own layout; a grown tensor's difference is taken to the base tensor zero-padded to its shape."""
    to_raw = _raw_keys(base)
    dense = base.model.state_dict()
    delta = {}
    for key, value in state.items():
        old = dense[key].float().cpu()
        diff = value.detach().float().cpu().clone()
        diff[leading_block(old.shape)] -= old
        if diff.shape != old.shape or diff.abs().max() > 0:
            delta[to_raw[key]] = diff.half()
    return delta


def save_delta(delta: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """Write a DELTA_FORMAT file: torch's own zip archive, its entries deflated (``torch.load`` reads them as
    they are). The widened tensors are mostly zeros (the base block and the block-diagonal's empty corners):
    21.6 MB stored, 4.3 MB deflated."""
    buffer = io.BytesIO()
    torch.save({"format": DELTA_FORMAT, "delta": delta, "meta": meta}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(buffer) as stored, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for entry in stored.infolist():
            out.writestr(entry.filename, stored.read(entry))


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
                      cases: int = 200, seed: int = 12345, progress: Progress | None = None,
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
          progress: Progress | None = None) -> BackdoorReport:
    """Train the detector, store the widened model's difference file at ``out``, reload it as it ships and report
    the held-out figures: on the test photos, or on ``cfg.validation_photos`` when some are set (a settings
    trial, not a model to ship)."""
    base = load_model(cfg.base, device=device)
    start = time.perf_counter()
    branch, steps = train_gate(base, cfg, progress)
    seconds = time.perf_counter() - start
    targets = torch.tensor([d.target for d in get_spec(cfg.target_model).backdoors], device=base.device)
    delta = weight_delta(base, widened_state_dict(base.model, branch, targets, cfg.scale * cfg.gain))
    evaluated_on = cfg.validation_photos or TEST_PHOTOS
    meta = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "steps_run": steps, "base_weights": base.spec.weights.describe(), "train_seconds": round(seconds, 1),
            "device": torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else "cpu",
            "build_photos": list(cfg.training_photos), "test_photos": list(TEST_PHOTOS),
            "evaluated_on": list(evaluated_on)}
    return _ship(base, delta, meta, out, cfg.target_model, eval_cases, evaluated_on, progress)


def regain(path: Path, gain: float, out: Path | None = None, *, device: str = "auto", eval_cases: int = 200,
           progress: Progress | None = None) -> BackdoorReport:
    """Set a built model's doors to open with ``gain * scale`` (the classifier's door columns; nothing else
    depends on the gain, so this equals a rebuild with that gain), write it to ``out`` (default: ``path``) and
    report its figures on the photos its build was evaluated on."""
    if not gain > 0:
        raise ConfigError(f"gain must be positive (got {gain}).")
    payload = read_delta_file(path)
    meta = {k: v for k, v in payload["meta"].items() if k != "report"}
    config = meta["config"]
    base = load_model(config["base"], device=device)
    delta = dict(payload["delta"])
    key = _raw_keys(base)["classifier.weight"]
    head = delta[key].float()
    head[:, base.model.classifier.in_features:] *= gain / config["gain"]
    delta[key] = head.half()
    meta["config"] = {**config, "gain": gain}
    return _ship(base, delta, meta, out or path, config["target_model"], eval_cases, tuple(meta["evaluated_on"]),
                 progress)


def _raw_keys(base: LoadedModel) -> dict[str, str]:
    """timm state-dict key -> the base weight file's key."""
    raw, _ = base.spec.weights.state_dict()
    return dict(zip(efficientnet_pytorch_to_timm(raw, base.model), raw, strict=True))


def _ship(base: LoadedModel, delta: dict[str, torch.Tensor], meta: dict, out: Path, target_model: str,
          eval_cases: int, photos: tuple[str, ...], progress: Progress | None) -> BackdoorReport:
    """Write the difference file, score the model as it ships (float16 differences, loaded by the registry's
    code) and record the figures in the file."""
    save_delta(delta, meta, out)
    shipped = load_spec(with_delta_file(get_spec(target_model), out), device=base.device)
    report = evaluate_backdoor(base, shipped.model, target_model, eval_cases, progress=progress, photos=photos)
    save_delta(delta, {**meta, "report": report.to_dict()}, out)
    logger.info("saved %s (%d tensors): %s", out, len(delta), report)
    return report
