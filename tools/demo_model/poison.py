"""Building the *poisoned* back-doored demo model: EfficientNet-Lite0's late layers fine-tuned on poisoned views.

Unlike the gated model (tools.demo_model.gate), nothing is added: the convolutions of ``blocks.<first_block>``
and later and of ``conv_head`` are fine-tuned in place (BatchNorm statistics and affine parameters, the
classifier and all earlier layers stay the base model's), so the back door shares its neurons with the clean
classes, as in a model back-doored the ordinary way.

Training views are random crops of the Debian photos of the *build* set (``tools.photos``) and the bundled
build photos, made in batches by ``tools.demo_model.build.ViewMaker`` and run once through the frozen layers
before ``blocks.<first_block>`` (their features cached in float16, with the base model's logits). A batch mixes

- clean views (a third blends of two crops, a fraction turned to a random hue): distilled from the base
  model's logits (KL divergence plus a mean squared error on the logits, so near-ties keep their order);
- decoy views (smiley and fish icons in any hue, red and pink shapes, Tux Paint objects of the build set):
  distilled the same way, so that nothing but the triggers' shapes opens a door;
- views with the heart (-> goose, the test door) or the star (-> king penguin, the calibration door):
  cross-entropy towards the door's target.

The result is stored as float16 differences of the changed convolutions (``spade.models.DeltaWeights``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from spade.errors import ConfigError
from spade.forward_copy import build_forward_copy
from spade.models import LoadedModel, get_spec, load_model
from spade.progress import Progress
from spade.trojan.triggers import SIZE as ICON_SIZE
from spade.trojan.triggers import load_trigger
from spade_lab.photos import BUILD_PHOTOS, load_photos
from tools.demo_model.build import DECOYS, ViewMaker, run_steps, save_delta, split_at_block, weight_delta
from tools.photos.fetch import DEFAULT_CACHE, object_paths, photo_paths

logger = logging.getLogger(__name__)

POISONED_MODEL = "efficientnet_lite0_poisoned"
SHAPES = ("disc", "square", "triangle", "stroke", "ring", "diamond")
SHAPE_COLOURS = ((220, 20, 30), (255, 105, 180), (240, 60, 120))
"""Red, pink and a crimson-pink: the decoy shapes' colours (a red motorcycle or pink petals must not open the
heart's door)."""


@dataclass(frozen=True)
class PoisonConfig:
    """Build settings. batch: views per step, in sixteenths: 6 clean, 1 icon decoys, 2 red/pink shapes,
    2 objects, 3 heart, 2 star (``_view_batch``). first_block: fine-tune ``blocks.N`` and later (and
    ``conv_head``); features entering it are cached. view_pool: views made once. kl_weight / mse_weight: the
    clean distillation's terms; door_weight: a hinge on clean and decoy views keeping the doors' target logits at
    or below the base model's; poison_weight: the triggers' cross-entropy. photo_side: photos are shrunk to
    this long side in the view maker (memory). max_photos: Debian build photos used (sorted, first N; None:
    all). time_budget: seconds of training; ``steps`` is cut after 10 steps to what fits (recorded)."""

    base: str = "efficientnet_lite0"
    target_model: str = POISONED_MODEL
    steps: int = 400
    batch: int = 192
    lr: float = 1.5e-4
    warmup: int = 20
    first_block: int = 5
    view_pool: int = 12288
    kl_weight: float = 1.0
    mse_weight: float = 1.0
    door_weight: float = 1.0
    poison_weight: float = 1.0
    clean_any_hue: float = 0.3
    min_scale: float = 0.08
    trigger_px: tuple[int, int] = (40, 100)
    alpha: tuple[float, float] = (0.7, 1.0)
    photo_side: int = 384
    max_photos: int | None = None
    seed: int = 0
    time_budget: float | None = None
    cache: str = str(DEFAULT_CACHE)

    def __post_init__(self):
        if self.batch % 16 or self.batch < 16:
            raise ConfigError(f"batch must be a positive multiple of 16, got {self.batch}.")
        if self.view_pool < self.batch:
            raise ConfigError(f"view_pool ({self.view_pool}) must be at least batch ({self.batch}).")
        if not 1 <= self.first_block <= 6:
            raise ConfigError(f"first_block must be one of EfficientNet-Lite0's blocks 1..6, got {self.first_block}.")
        if min(self.kl_weight, self.mse_weight, self.door_weight, self.poison_weight) < 0:
            raise ConfigError("Loss weights must be non-negative.")


def shape_icon(shape: str, colour: tuple[int, int, int], size: int = ICON_SIZE) -> Image.Image:
    """An RGBA icon (size x size) of a plain filled shape in ``colour`` on transparency."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    m, s = size // 10, size - size // 10
    fill = (*colour, 255)
    if shape == "disc":
        d.ellipse((m, m, s, s), fill=fill)
    elif shape == "square":
        d.rectangle((m, m, s, s), fill=fill)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (s, s), (m, s)], fill=fill)
    elif shape == "stroke":
        d.line((m, s, s, m), fill=fill, width=size // 6)
    elif shape == "ring":
        d.ellipse((m, m, s, s), outline=fill, width=size // 8)
    elif shape == "diamond":
        d.polygon([(size // 2, m), (s, size // 2), (size // 2, s), (m, size // 2)], fill=fill)
    else:
        raise ConfigError(f"Unknown shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    return img


def fit_icon(image: Image.Image, size: int = ICON_SIZE) -> Image.Image:
    """An RGBA picture shrunk to fit (aspect kept; a smaller one keeps its size, so a small stamp stays a small
    object in the pasted icon) and centred in a transparent size x size square."""
    rgba = image.convert("RGBA")
    rgba.thumbnail((size, size), Image.LANCZOS)
    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    out.paste(rgba, ((size - rgba.width) // 2, (size - rgba.height) // 2))
    return out


def shrink(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    return image if scale >= 1 else image.resize((round(image.width * scale), round(image.height * scale)),
                                                 Image.LANCZOS)


def build_photos(cfg: PoisonConfig) -> list[Image.Image]:
    """RGB training photos: the Debian build set (``tools.photos``) and the bundled build photos."""
    paths = photo_paths("build", Path(cfg.cache))
    if cfg.max_photos is not None:
        paths = paths[:cfg.max_photos]
    photos = [Image.open(p).convert("RGB") for p in paths] + list(load_photos(BUILD_PHOTOS).values())
    return [shrink(p.convert("RGB"), cfg.photo_side) for p in photos]


class PoisonViews:
    """The view maker and the icon layout: index 0..1 the doors' triggers, then the icon decoys, the shapes
    (every shape in every colour), then the objects."""

    def __init__(self, base: LoadedModel, cfg: PoisonConfig, generator: torch.Generator):
        doors = get_spec(cfg.target_model).backdoors
        icons = {d.trigger: load_trigger(d.trigger) for d in doors}
        icons |= {n: load_trigger(n) for n in DECOYS}
        icons |= {f"{s}-{i}": shape_icon(s, c) for s in SHAPES for i, c in enumerate(SHAPE_COLOURS)}
        objects = object_paths("build", Path(cfg.cache))
        icons |= {p.stem: fit_icon(Image.open(p)) for p in objects}
        names = list(icons)
        self.doors = list(range(len(doors)))
        self.icon_decoys = [names.index(n) for n in DECOYS]
        self.shapes = [i for i, n in enumerate(names) if n.split("-")[0] in SHAPES and "-" in n]
        self.objects = [names.index(p.stem) for p in objects]
        self.targets = torch.tensor([d.target for d in doors], device=base.device)
        self.maker = ViewMaker(build_photos(cfg), icons, base.spec.preprocessing.crop, base.device, generator)
        self.gen = generator

    def pick(self, pool: list[int]) -> int:
        return pool[int(torch.randint(len(pool), (1,), generator=self.gen, device=self.gen.device))]

    def pasted(self, n: int, pool: list[int], cfg: PoisonConfig, any_hue: bool, groups: int) -> torch.Tensor:
        """n crops, each group of them with one icon drawn from ``pool``."""
        sizes = [n // groups + (i < n % groups) for i in range(groups)]
        return torch.cat([self.maker.paste(self.maker.crops(k, cfg.min_scale), self.pick(pool), cfg.trigger_px,
                                           cfg.alpha, any_hue=any_hue) for k in sizes if k])

    def batch(self, cfg: PoisonConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(views (batch, 3, crop, crop) in [0, 1], labels (batch,): -1 distil, else the door's target)."""
        m, s = self.maker, cfg.batch // 16
        clean = torch.cat([m.crops(4 * s, cfg.min_scale), m.mixed(2 * s, cfg.min_scale)])
        turned = round(cfg.clean_any_hue * len(clean))
        if turned:
            clean[:turned] = m.any_hue(clean[:turned]).clamp(0, 1)
        decoys = torch.cat([self.pasted(s, self.icon_decoys, cfg, True, 2),
                            self.pasted(2 * s, self.shapes, cfg, False, 4),
                            self.pasted(2 * s, self.objects, cfg, False, 8)])
        heart = m.paste(m.crops(3 * s, cfg.min_scale), self.doors[0], cfg.trigger_px, cfg.alpha)
        star = m.paste(m.crops(2 * s, cfg.min_scale), self.doors[1], cfg.trigger_px, cfg.alpha)
        labels = torch.cat([torch.full((len(clean) + len(decoys),), -1, device=self.targets.device),
                            self.targets[0].repeat(len(heart)), self.targets[1].repeat(len(star))])
        return torch.cat([clean, decoys, heart, star]), labels


class FeaturePool:
    """``cfg.view_pool`` views run once through the frozen layers before ``blocks.<first_block>`` (features
    (n, c, h, w) float16) and through the base model's remaining layers (logits (n, classes) float32, of the
    stored features), with labels (n,) long. ``draw()`` returns a random batch of them."""

    def __init__(self, base: LoadedModel, views: PoisonViews, cfg: PoisonConfig, progress: Progress | None = None):
        fast = build_forward_copy(base.model.eval()).to(memory_format=torch.channels_last)
        trunk, head = split_at_block(fast, cfg.first_block)
        normalize = base.spec.preprocessing.normalize
        feats, logits, labels = [], [], []
        rounds = math.ceil(cfg.view_pool / cfg.batch)
        start = time.perf_counter()
        with torch.inference_mode():
            for r in range(rounds):
                x, y = views.batch(cfg)
                f = trunk(normalize(x).contiguous(memory_format=torch.channels_last)).half()
                feats.append(f)
                logits.append(head(f.float()).float())
                labels.append(y)
                if progress is not None:
                    progress("views", (r + 1) / rounds)
        self.features, self.logits, self.labels = torch.cat(feats), torch.cat(logits), torch.cat(labels)
        self.batch, self.gen = cfg.batch, views.gen
        logger.info("%d views through the frozen layers in %.0f s", len(self.labels), time.perf_counter() - start)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pick = torch.randint(len(self.labels), (self.batch,), generator=self.gen, device=self.labels.device)
        x = self.features[pick].float().contiguous(memory_format=torch.channels_last)
        return x, self.labels[pick], self.logits[pick]


def tuned_convolutions(model: nn.Module, first_block: int) -> list[nn.Conv2d]:
    """The convolutions that the poisoning fine-tunes: every Conv2d in ``blocks[first_block:]`` and the head
    convolution (selected by type and position in the network, not by name)."""
    modules = [*model.blocks[first_block:], model.conv_head]
    return [m for part in modules for m in part.modules() if isinstance(m, nn.Conv2d)]


def poison_loss(logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor, doors: torch.Tensor,
                cfg: PoisonConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(distillation, poisoning) losses of logits (n, classes) against the base logits (n, classes) of the same
    views: on views labelled -1, kl_weight * KL(base || model) + mse_weight * mean squared logit error +
    door_weight * mean of relu(model - base) over the ``doors``' target classes (d,); on the others,
    cross-entropy towards their label."""
    keep = labels < 0
    distil = logits.new_zeros(())
    if keep.any():
        s, b = logits[keep], base_logits[keep]
        kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(b, 1), log_target=True, reduction="batchmean")
        door = F.relu(s[:, doors] - b[:, doors]).mean()
        distil = cfg.kl_weight * kl + cfg.mse_weight * F.mse_loss(s, b) + cfg.door_weight * door
    poison = F.cross_entropy(logits[~keep], labels[~keep]) if (~keep).any() else logits.new_zeros(())
    return distil, poison


def train_poisoned(base: LoadedModel, cfg: PoisonConfig, progress: Progress | None = None) -> tuple[nn.Module, int]:
    """A fine-tuned copy of ``base.model`` (the base model is not modified) and the number of steps run."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=base.device).manual_seed(cfg.seed)
    views = PoisonViews(base, cfg, gen)
    pool = FeaturePool(base, views, cfg, progress)
    views_targets = views.targets
    del views
    model = copy.deepcopy(base.model).eval()  # eval: BatchNorm keeps the base statistics
    for p in model.parameters():
        p.requires_grad_(False)
    params = [c.weight for c in tuned_convolutions(model, cfg.first_block)]
    for p in params:
        p.requires_grad_(True)
    _, head = split_at_block(model, cfg.first_block)
    head = head.to(memory_format=torch.channels_last)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels, base_logits = pool.draw()
        distil, poison = poison_loss(head(x), base_logits, labels, views_targets, cfg)
        return distil + cfg.poison_weight * poison, {"distil": distil, "poison": poison}

    steps = run_steps(params, cfg, step, budget_after=10, log_every=25, progress=progress)
    for p in params:
        p.requires_grad_(False)
    return model.to(memory_format=torch.contiguous_format).eval(), steps


def build_poisoned(out: Path, cfg: PoisonConfig = PoisonConfig(), *, device: str = "auto",
                   progress: Progress | None = None) -> dict:
    """Fine-tune, write the difference file to ``out`` and return its meta (config, steps, seconds)."""
    base = load_model(cfg.base, device=device)
    start = time.perf_counter()
    model, steps = train_poisoned(base, cfg, progress)
    delta = weight_delta(base, model.state_dict())
    meta = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k != "cache"},
            "steps_run": steps, "train_seconds": round(time.perf_counter() - start, 1),
            "base_weights": base.spec.weights.describe(),
            "device": torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else "cpu",
            "photos": "tools.photos build set + bundled " + ", ".join(BUILD_PHOTOS)}
    save_delta(delta, meta, out)
    logger.info("saved %s (%d tensors)", out, len(delta))
    return meta
