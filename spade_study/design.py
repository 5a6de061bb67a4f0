"""What a human study is: its settings, its items (image, two patches, one visualization per condition),
and how the two candidate patches are chosen from a CAM-type map.

Everything here is plain data (numpy, PIL, PNG bytes); ``spade_study.create`` fills it with torch.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from spade.defaults import default_augmentations
from spade.errors import ConfigError
from spade.featurevis.methods import DEFAULT_METHOD, METHOD_LABELS

CONDITIONS = ("dense", "spade")
"""The two conditions: the neuron visualized on the dense model, or on the image's SPADE trace."""

MAX_COMPLETION_CODE_CHARS = 100
MAX_COMPLETION_URL_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

GROUND_TRUTH = "score_cam"
"""The default ground-truth map: Score-CAM of the dense model, as in the SPADE paper's study ("gradcam" is the
other CAM-type choice)."""
GROUND_TRUTH_CHOICES = ("score_cam", "gradcam")
"""The ground-truth maps the designer offers (any ``spade.saliency.METHODS`` name is accepted by StudyConfig)."""

MAX_PATCH_FRACTION = 1 / 3
"""Largest patch side (fraction of the image side) for which a non-overlapping distractor always exists."""

DEFAULT_INSTRUCTIONS = """\
In each task you see a photo, a picture that was generated to show what one "neuron" of an image \
classifier responds to, and two patches cut from the photo, labelled A and B.

Decide which patch contains what the neuron is looking for in this photo, using the generated picture as \
your guide, and press "Patch A" or "Patch B". If you really cannot tell, press "Can't decide".

The first tasks are practice: after each one you are told the expected answer. There are no trick \
questions, and there is no time limit, but your first impression is usually best."""


LEGACY_METHOD = "fourier"
"""The visualization method of studies stored before VisualizationSettings had a method (Lucid-style)."""


@dataclass(frozen=True)
class VisualizationSettings:
    """How the neuron visualizations are made (once, when the study is created).

    steps: feature-visualization Adam steps (None: the library default for the model's device).
    size: side of the visualization in pixels (None: the model's crop size).
    augmentations: augmented views the SPADE trace is fitted to. sparsity: None = the class logit's default profile
    (only the classifier at 0.95, `spade.featurevis.compare.default_visualization_profile`), else a uniform target
    in [0, 1); ``keep_decision`` lowers either until the trace keeps the
    top-1 class (`spade.featurevis.compare.visualization_request`). seed: seeds the augmentations and the
    visualizations. method: the feature-visualization method (a ``spade.featurevis.METHOD_LABELS`` key; default the
    better one on the quality benchmark). Studies stored before the field existed used LEGACY_METHOD.
    """

    steps: int | None = None
    size: int | None = None
    augmentations: int = default_augmentations("visualize")
    sparsity: float | None = None
    keep_decision: bool = True
    seed: int = 0
    method: str = DEFAULT_METHOD

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"Visualization steps must be at least 1, got {self.steps}.")
        if self.method not in METHOD_LABELS:
            raise ConfigError(f"Unknown visualization method {self.method!r}; choose one of "
                              f"{', '.join(METHOD_LABELS)}.")
        if self.augmentations < 1:
            raise ConfigError(f"Augmentations must be at least 1, got {self.augmentations}.")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"Sparsity must be in [0, 1), got {self.sparsity}.")

    @classmethod
    def stored(cls, data: dict) -> VisualizationSettings:
        """Settings as a stored study wrote them; without a method, the one studies were made with before
        (LEGACY_METHOD), so an old study never claims a method it did not use."""
        return cls(**{"method": LEGACY_METHOD, **data})


@dataclass(frozen=True)
class StudyConfig:
    """The researcher's choices for one study.

    conditions: which visualizations are compared (a subset of CONDITIONS, in this order).
    tasks_per_participant: real tasks per participant (None: every real image once); each participant sees
    an image at most once, under one condition. training_tasks: practice tasks with feedback, shown first,
    made from the training images (never analysed). seed: seeds the task assignment. patch_fraction: patch
    side as a fraction of the image side (at most 1/3). ground_truth: the saliency method (a
    ``spade.saliency.METHODS`` name) whose map on the dense model picks the patches. completion_code: shown
    on the end screen (e.g. a Prolific completion code; "" for none); completion_url: an http(s) address the
    end screen links to (e.g. Prolific's ``https://app.prolific.com/submissions/complete?cc=...``; "" for none).
    """

    title: str = "Which patch drives the neuron?"
    conditions: tuple[str, ...] = CONDITIONS
    tasks_per_participant: int | None = None
    training_tasks: int = 2
    instructions: str = DEFAULT_INSTRUCTIONS
    seed: int = 0
    patch_fraction: float = 0.3
    ground_truth: str = GROUND_TRUTH
    visualization: VisualizationSettings = VisualizationSettings()
    completion_code: str = ""
    completion_url: str = ""

    def __post_init__(self):
        conditions = tuple(self.conditions)
        object.__setattr__(self, "conditions", conditions)
        if not conditions or len(set(conditions)) != len(conditions) or set(conditions) - set(CONDITIONS):
            raise ConfigError(f"Conditions must be distinct values from {', '.join(CONDITIONS)}; got {conditions}.")
        if self.tasks_per_participant is not None and self.tasks_per_participant < 1:
            raise ConfigError(f"Tasks per participant must be at least 1, got {self.tasks_per_participant}.")
        if self.training_tasks < 0:
            raise ConfigError(f"Training tasks must be 0 or more, got {self.training_tasks}.")
        if not 0.0 < self.patch_fraction <= MAX_PATCH_FRACTION:
            raise ConfigError(f"The patch side must be between 0 and 1/3 of the image side, got {self.patch_fraction}.")
        if not self.title.strip():
            raise ConfigError("The study needs a title.")
        object.__setattr__(self, "completion_code", self.completion_code.strip())
        object.__setattr__(self, "completion_url", self.completion_url.strip())
        if len(self.completion_code) > MAX_COMPLETION_CODE_CHARS or _CONTROL.search(self.completion_code):
            raise ConfigError(f"The completion code must be one line of at most {MAX_COMPLETION_CODE_CHARS} "
                              "characters.")
        if self.completion_url:
            parts = urlsplit(self.completion_url)
            if (parts.scheme not in ("http", "https") or not parts.netloc or len(self.completion_url)
                    > MAX_COMPLETION_URL_CHARS or re.search(r"\s", self.completion_url)
                    or _CONTROL.search(self.completion_url)):
                raise ConfigError("The completion URL must be an http:// or https:// address without spaces, got "
                                  f"{self.completion_url[:80]!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StudyConfig:
        data = dict(data)
        vis = VisualizationSettings.stored(data.pop("visualization", {}))
        known = {f.name for f in fields(cls)}
        return cls(visualization=vis, **{k: (tuple(v) if k == "conditions" else v)
                                         for k, v in data.items() if k in known})


@dataclass(frozen=True)
class StudyImage:
    """One image offered to ``create_study``: name (shown to the researcher only), RGB PIL image, the neuron
    (a class index; None = the dense model's predicted class) and whether it is used for training tasks."""

    name: str
    image: Image.Image
    neuron: int | None = None
    training: bool = False


Box = tuple[int, int, int, int]
"""(left, top, right, bottom) in pixels of the item image, right/bottom exclusive."""


@dataclass(frozen=True)
class Patch:
    """A square crop of an item's image: its box, the crop as PNG, and the mean of the ground-truth map
    inside it (the map scaled to [0, 1] by its maximum)."""

    box: Box
    png: bytes = field(repr=False)
    score: float

    @property
    def size(self) -> tuple[int, int]:
        left, top, right, bottom = self.box
        return right - left, bottom - top

    def array(self) -> np.ndarray:
        """(h, w, 3) uint8."""
        return png_to_array(self.png)


@dataclass(frozen=True, eq=False)
class StudyItem:
    """One image of a study.

    image_png: the image as the model sees it (resized and centre-cropped), the frame of the patch boxes.
    neuron: the visualized class logit; neuron_name its class name. truth: the patch around the map's strongest
    region (the ground truth); distractor: a same-size patch, not overlapping it, that the map rates lowest.
    visualizations: {condition: PNG}. details: numbers for the researcher (trace sparsity, top-1 kept, ...).
    """

    name: str
    image_png: bytes = field(repr=False)
    neuron: int
    neuron_name: str
    truth: Patch
    distractor: Patch
    visualizations: dict[str, bytes] = field(repr=False)
    training: bool = False
    details: dict = field(default_factory=dict)

    def image_array(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        return png_to_array(self.image_png)


@dataclass(frozen=True, eq=False)
class Study:
    """A study ready for participants. ``closed``: no new participants or answers are accepted."""

    id: str
    config: StudyConfig
    items: tuple[StudyItem, ...]
    model: str = ""
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    closed: bool = False

    @property
    def real_items(self) -> tuple[int, ...]:
        """Indices of the items used for real (analysed) tasks."""
        return tuple(i for i, item in enumerate(self.items) if not item.training)

    @property
    def training_items(self) -> tuple[int, ...]:
        return tuple(i for i, item in enumerate(self.items) if item.training)

    @property
    def tasks_per_participant(self) -> int:
        """Real tasks per participant: the configured number, at most the number of real images."""
        n = len(self.real_items)
        wanted = self.config.tasks_per_participant
        return n if wanted is None else min(wanted, n)

    @property
    def total_tasks(self) -> int:
        return self.config.training_tasks + self.tasks_per_participant


def png_bytes(array: np.ndarray | Image.Image) -> bytes:
    """An (H, W, 3) uint8 array or a PIL image as PNG bytes."""
    image = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array, dtype=np.uint8))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_to_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def patch_side(height: int, width: int, fraction: float) -> int:
    """Side in pixels of the square patches for an image of this size."""
    return max(1, int(round(fraction * min(height, width))))


def window_sums(saliency: np.ndarray, side: int) -> np.ndarray:
    """Sum of ``saliency`` (H, W) over every side x side window: (H - side + 1, W - side + 1) float64, indexed
    by the window's top-left corner (an integral image, so every window costs four lookups)."""
    integral = np.pad(np.asarray(saliency, dtype=np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])


def choose_patches(saliency: np.ndarray, side: int) -> tuple[Box, Box]:
    """The two candidate patches of one image from its ground-truth map ``saliency`` (H, W), higher = more
    important: (truth, distractor) boxes of side x side pixels inside the image.

    truth: the window with the largest sum of the map; distractor: among the windows that do not overlap it,
    the one with the smallest sum. Ties go to the first window in row-major order of the top-left corner.
    Raises ConfigError when the patch does not fit or no non-overlapping window exists (side > 1/3 of the
    shorter image side can make that happen).
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.ndim != 2:
        raise ConfigError(f"The map must be 2-D (H, W), got shape {saliency.shape}.")
    height, width = saliency.shape
    if not 1 <= side <= min(height, width):
        raise ConfigError(f"A {side}-pixel patch does not fit a {width}x{height} image.")
    sums = window_sums(saliency, side)
    ty, tx = np.unravel_index(int(np.argmax(sums)), sums.shape)
    ys = np.arange(sums.shape[0])[:, None]
    xs = np.arange(sums.shape[1])[None, :]
    apart = (ys + side <= ty) | (ys >= ty + side) | (xs + side <= tx) | (xs >= tx + side)
    if not apart.any():
        raise ConfigError(f"No {side}-pixel distractor patch fits beside the strongest region; use smaller patches.")
    dy, dx = np.unravel_index(int(np.argmin(np.where(apart, sums, np.inf))), sums.shape)
    return ((int(tx), int(ty), int(tx) + side, int(ty) + side), (int(dx), int(dy), int(dx) + side, int(dy) + side))


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    left, top, right, bottom = box
    return np.ascontiguousarray(array[top:bottom, left:right])
