"""Benchmark samples: photo x random crop x random trigger position, kept only where the trigger flips the model.

A sample is described by a small record (photo name, crop box, stamp seed); the pixels are re-rendered from
it on demand (``SampleSet.render``), so hundreds of samples cost no memory and a sample id means the same
pixels in every process. Candidate ``k`` depends only on ``(seed, k)``: the kept samples of a larger
``count`` extend those of a smaller one, and every shard of a run sees the same list.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from spade.devices import model_device
from spade.errors import ConfigError, ImageLoadError
from spade.images import load_image
from spade.preprocessing import Preprocessing
from spade.progress import Progress
from spade.trojan.stamp import DEFAULT_SIZE, stamp
from spade.trojan.triggers import TRIGGERS, load_trigger, read_trigger

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MIN_CROP_SIDE = 64
"""Crops are at least this many raw pixels on their short side (smaller photos are used whole)."""


@dataclass(frozen=True)
class SampleConfig:
    """How benchmark samples are drawn.

    count: samples to keep. seed: seeds the photo order, crops, trigger positions and colour jitter.
    min_crop: smallest crop area as a fraction of the photo (the crop is a RandomResizedCrop-style box with
    aspect ratio in [1/max_ratio, max_ratio]); 1 = always the whole photo. size, alpha, jitter: the trigger
    side (fraction of the crop's short side), opacity and colour jitter passed to ``stamp``.
    require_flip: keep only candidates whose clean crop is not predicted as the target and whose stamped crop
    is (the Trojan protocol); False keeps every candidate (timing runs on a model without the back door).
    max_candidates: give up after this many candidates (0: 10 * count + 50).
    """

    count: int = 200
    seed: int = 0
    min_crop: float = 0.35
    max_ratio: float = 4 / 3
    size: float = DEFAULT_SIZE
    alpha: float = 0.8
    jitter: float = 0.1
    require_flip: bool = True
    max_candidates: int = 0

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"The number of samples must be at least 1, got {self.count}.")
        if not 0 < self.min_crop <= 1 or self.max_ratio < 1:
            raise ConfigError("The minimum crop area must be in (0, 1] and the aspect ratio bound >= 1.")
        if self.max_candidates < 0:
            raise ConfigError("max_candidates must be >= 0.")

    @property
    def candidate_limit(self) -> int:
        return self.max_candidates or 10 * self.count + 50

    def identity(self) -> dict:
        """The settings that decide which pixels a sample id stands for (everything but count and limit)."""
        out = asdict(self)
        out.pop("count")
        out.pop("max_candidates")
        return out


@dataclass(frozen=True)
class SampleRecord:
    """One benchmark sample. index: the candidate number it came from (its order); id: ``"s<index>"``;
    photo: name in the photo set; crop: (left, top, right, bottom) raw pixels of the photo; stamp_seed: the
    trigger position/jitter seed (-1 for clean samples); clean_top1 / stamped_top1: the model's top-1 on the
    clean and stamped crop (stamped_top1 = clean_top1 for clean samples); target: the class to explain."""

    index: int
    photo: str
    crop: tuple[int, int, int, int]
    stamp_seed: int
    clean_top1: int
    stamped_top1: int
    target: int

    @property
    def id(self) -> str:
        return f"s{self.index:05d}"

    def to_json(self) -> dict:
        return {"id": self.id, **asdict(self)}


@dataclass(frozen=True)
class Rendered:
    """A sample's pixels: ``image`` the RGB PIL crop the model sees (stamped for Trojan samples); ``mask``
    bool (crop, crop) trigger footprint in the model's input frame, None for clean samples."""

    image: Image.Image
    mask: np.ndarray | None


# ----------------------------------------------------------------------------------------------------------------
# Photos and triggers
class PhotoSet(Mapping[str, Image.Image]):
    """Named RGB photos, loaded on first use (a few kept in memory): bundled PIL images, files of a folder or their
    encoded bytes."""

    def __init__(self, sources: Mapping[str, Image.Image | Path | bytes], label: str):
        if not sources:
            raise ConfigError(f"No photos in {label}.")
        self._sources = dict(sources)
        self.label = label
        self._load = functools.lru_cache(maxsize=16)(self._load_uncached)

    def _load_uncached(self, name: str) -> Image.Image:
        source = self._sources[name]
        return source if isinstance(source, Image.Image) else load_image(source)

    def __getstate__(self) -> dict:  # pickled (sent to Ray workers) without the cache
        return {"sources": self._sources, "label": self.label}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["sources"], state["label"])

    def portable(self) -> PhotoSet:
        """The same photos with every file replaced by its encoded bytes: a copy that decodes the same pixels on a
        machine without the folder (what a Ray cluster's workers get). Decoded images stay as they are."""
        sources = {name: Path(s).read_bytes() if isinstance(s, (str, Path)) else s for name, s in self._sources.items()}
        return PhotoSet(sources, self.label)

    def __getitem__(self, name: str) -> Image.Image:
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def bundled_photos(names: Sequence[str], label: str) -> PhotoSet:
    """The bundled photos ``names`` (spade_lab.photos) as a PhotoSet."""
    from spade_lab.photos import load_photos

    return PhotoSet(load_photos(tuple(names)), label)


def folder_photos(folder: str | Path) -> PhotoSet:
    """Every image file under ``folder`` (recursive, sorted; names are paths relative to the folder)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"The images folder {root} does not exist.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"The images folder {root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return PhotoSet({p.relative_to(root).as_posix(): p for p in files}, str(root))


def resolve_trigger(source: str | Path) -> tuple[str, Image.Image]:
    """A trigger by name (one of TRIGGERS) or an RGBA PNG file (`spade.trojan.read_trigger`) -> (label, RGBA
    image)."""
    text = str(source)
    if text in TRIGGERS:
        return text, load_trigger(text)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"The trigger {text!r} is neither a built-in trigger ({', '.join(TRIGGERS)}) nor a file.")
    return path.name, read_trigger(path)


# ----------------------------------------------------------------------------------------------------------------
def random_crop(width: int, height: int, rng: np.random.Generator, min_area: float,
                max_ratio: float) -> tuple[int, int, int, int]:
    """A RandomResizedCrop-style box (left, top, right, bottom) inside a width x height photo: area fraction
    uniform in [min_area, 1], log aspect ratio uniform in [-log max_ratio, log max_ratio]; the whole photo
    when no box fits in 10 tries or the photo is too small to crop."""
    if min(width, height) <= MIN_CROP_SIDE or min_area >= 1:
        return 0, 0, width, height
    for _ in range(10):
        area = width * height * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(-math.log(max_ratio), math.log(max_ratio)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if MIN_CROP_SIDE <= w <= width and MIN_CROP_SIDE <= h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


@dataclass
class SampleSet:
    """Samples and what renders them: photos, trigger (None for clean samples), preprocessing, config."""

    records: list[SampleRecord]
    photos: PhotoSet
    preprocessing: Preprocessing
    config: SampleConfig
    trigger: Image.Image | None = None
    candidates: int = 0

    def render(self, record: SampleRecord) -> Rendered:
        crop = self.photos[record.photo].crop(record.crop)
        if self.trigger is None:
            return Rendered(crop, None)
        stamped = stamp(crop, self.trigger, self.preprocessing, size=self.config.size, alpha=self.config.alpha,
                        jitter=self.config.jitter, seed=record.stamp_seed)
        return Rendered(stamped.image, stamped.mask)

    def shard(self, index: int, count: int) -> list[SampleRecord]:
        """Shard ``index`` of ``count`` (1-based): every count-th record starting at index - 1."""
        if not 1 <= index <= count:
            raise ConfigError(f"Shard {index}/{count} does not exist: use i/n with 1 <= i <= n.")
        return self.records[index - 1::count]


def _candidate(k: int, names: Sequence[str], order: np.ndarray, photos: PhotoSet, config: SampleConfig
               ) -> tuple[str, tuple[int, int, int, int], int]:
    rng = np.random.default_rng([config.seed, k])
    name = names[int(order[k % len(names)])]
    width, height = photos[name].size
    crop = random_crop(width, height, rng, config.min_crop, config.max_ratio)
    return name, crop, int(rng.integers(0, 2**31 - 1))


@torch.inference_mode()
def _logits(model: nn.Module, images: list[Image.Image], preprocessing: Preprocessing) -> torch.Tensor:
    """float32 CPU logits (len(images), classes) of the model on a list of RGB crops (one batch)."""
    device = model_device(model)
    batch = torch.stack([preprocessing(img) for img in images]).to(device)
    return model(batch).float().cpu()


def build_samples(model: nn.Module, preprocessing: Preprocessing, photos: PhotoSet, config: SampleConfig, *,
                  trigger: Image.Image | None = None, target: int | None = None, batch_size: int = 16,
                  progress: Progress | None = None) -> SampleSet:
    """Draw ``config.count`` samples.

    With a ``trigger`` (RGBA) and ``target`` class: Trojan samples — each candidate crop is stamped at a
    random position inside the part the model sees; with ``config.require_flip`` a candidate is kept only if
    the model predicts ``target`` on the stamped crop and not on the clean one. Without a trigger: clean
    samples whose target is the model's top-1 on the crop. The model (eval mode, any device) only runs
    forward passes, ``batch_size`` crops at a time. Fewer than ``count`` samples after
    ``config.candidate_limit`` candidates is a warning; none at all is a ConfigError.
    """
    if (trigger is None) != (target is None):
        raise ConfigError("Trojan samples need both a trigger and a target class.")
    names = list(photos)
    order = np.random.default_rng([config.seed, 2**31]).permutation(len(names))
    sample_set = SampleSet([], photos, preprocessing, config, trigger)
    k = 0
    while len(sample_set.records) < config.count and k < config.candidate_limit:
        chunk = []
        while len(chunk) < batch_size and k < config.candidate_limit:
            try:
                name, crop, seed = _candidate(k, names, order, photos, config)
            except ImageLoadError as exc:  # an unreadable file in a user's folder: skip that candidate
                log.warning("skipping candidate %d: %s", k, exc)
            else:
                chunk.append(SampleRecord(k, name, crop, seed if trigger is not None else -1, -1, -1, -1))
            k += 1
        if not chunk:
            continue
        rendered = [sample_set.render(r) for r in chunk]
        clean = [photos[r.photo].crop(r.crop) for r in chunk] if trigger is not None else [r.image for r in rendered]
        clean_logits = _logits(model, clean, preprocessing)
        stamped_logits = clean_logits if trigger is None else _logits(model, [r.image for r in rendered], preprocessing)
        for rec, out, c_log, s_log in zip(chunk, rendered, clean_logits, stamped_logits):
            clean_top1, stamped_top1 = int(c_log.argmax()), int(s_log.argmax())
            if trigger is not None:
                if target >= c_log.numel():
                    raise ConfigError(f"The target class {target} does not exist; the model has "
                                      f"{c_log.numel()} outputs.")
                if out.mask is None or not out.mask.any() or out.mask.all():
                    continue
                if config.require_flip and (stamped_top1 != target or clean_top1 == target):
                    continue
            kept = SampleRecord(rec.index, rec.photo, rec.crop, rec.stamp_seed, clean_top1, stamped_top1,
                                clean_top1 if trigger is None else int(target))
            sample_set.records.append(kept)
            if len(sample_set.records) == config.count:
                k = rec.index + 1  # candidates examined
                break
        if progress is not None:
            progress("samples", len(sample_set.records) / config.count)
    sample_set.candidates = k
    if not sample_set.records:
        raise ConfigError(f"None of {k} candidates qualified: the trigger never switched the prediction to class "
                          f"{target}; check --trigger and --target.")
    if len(sample_set.records) < config.count:
        log.warning("only %d of %d samples found in %d candidates (the trigger flips %.0f%% of them)",
                    len(sample_set.records), config.count, k, 100 * len(sample_set.records) / k)
    log.info("%d samples from %d candidates", len(sample_set.records), k)
    return sample_set
