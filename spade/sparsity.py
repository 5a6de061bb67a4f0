"""Sparsity targets: one uniform value, or a per-block profile (built in or from a JSON file)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from spade.errors import ConfigError
from spade.layers import LayerSelection, block_of, blocks

DEFAULT_KEY = "*"


@dataclass(frozen=True)
class SparsityProfile:
    """Per-block sparsity targets. targets: ((block or layer name, target), ...); blocks not listed
    get `default` (0 = left untouched)."""

    name: str
    targets: tuple[tuple[str, float], ...]
    default: float = 0.0
    description: str = ""

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, float], name: str = "custom", description: str = ""
                     ) -> SparsityProfile:
        default = float(mapping.get(DEFAULT_KEY, 0.0))
        targets = tuple((str(k), float(v)) for k, v in mapping.items() if k != DEFAULT_KEY)
        return cls(name=name, targets=targets, default=default, description=description)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "default": self.default,
                "targets": dict(self.targets)}

    def scaled(self, factor: float) -> SparsityProfile:
        """Every target (and the default) times ``factor`` in [0, 1]: the same shape, less sparse."""
        return SparsityProfile(name=f"{self.name} x{factor:.3g}",
                               targets=tuple((k, v * factor) for k, v in self.targets),
                               default=self.default * factor, description=self.description)


Sparsity = float | Mapping[str, float] | SparsityProfile

def scaled_sparsity(sparsity: Sparsity, factor: float) -> Sparsity:
    """A uniform target, mapping or profile with every target multiplied by ``factor`` in [0, 1]."""
    if not 0.0 <= factor <= 1.0:
        raise ConfigError(f"A sparsity scale must be in [0, 1], got {factor}.")
    if isinstance(sparsity, (int, float)):
        return float(sparsity) * factor
    profile = sparsity if isinstance(sparsity, SparsityProfile) else SparsityProfile.from_mapping(sparsity)
    return profile.scaled(factor)


_RESNET50_SALIENCY = {
    "fc": 0.95, "layer4.0": 0.95, "layer4.1": 0.95, "layer4.2": 0.95,
    "layer3.5": 0.0, "layer3.4": 0.0, "layer3.3": 0.8, "layer3.2": 0.9, "layer3.1": 0.8, "layer3.0": 0.8,
    "layer2.3": 0.95, "layer2.2": 0.99, "layer2.1": 0.0, "layer2.0": 0.2,
    "layer1.2": 0.0, "layer1.1": 0.8, "layer1.0": 0.2,
}
_RESNET50_NEURONS = {name: 0.95 for name in ("layer3.4", "layer3.5", "layer4.0", "layer4.1", "layer4.2", "fc")}

PROFILES: dict[str, SparsityProfile] = {
    "resnet50_saliency": SparsityProfile.from_mapping(
        _RESNET50_SALIENCY, "resnet50_saliency",
        "The SPADE authors' per-block targets for ResNet-50 saliency maps (tuned for LRP with FastSPADE)."),
    "resnet50_neurons": SparsityProfile.from_mapping(
        _RESNET50_NEURONS, "resnet50_neurons",
        "The SPADE authors' targets for neuron visualizations: 0.95 on the late layers only."),
}


PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
"""Profile files shipped with the library (e.g. tuned by `python -m spade benchmark tune`), loadable by stem."""


def load_profile(source: str | Path) -> SparsityProfile:
    """A built-in profile by name, a shipped profile file by stem (spade/profiles/<name>.json), or a JSON
    file: {"name", "targets": {block: target}, "default"} (a plain {block: target} mapping is accepted too)."""
    if str(source) in PROFILES:
        return PROFILES[str(source)]
    shipped = PROFILE_DIR / f"{source}.json"
    path = shipped if isinstance(source, str) and "/" not in source and shipped.is_file() else Path(source)
    if not path.is_file():
        raise ConfigError(f"No built-in profile or file named {str(source)!r}; built-in: {', '.join(PROFILES)}.")
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ConfigError(f"The profile file {path.name} is larger than {MAX_PROFILE_BYTES // 2**20} MB; a "
                              "sparsity profile is a small JSON object.")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read sparsity profile {path.name}: {exc.strerror}.") from exc
    return parse_profile(data, path.name)


#: The largest profile file read (a profile names at most a few hundred blocks).
MAX_PROFILE_BYTES = 2**20


def parse_profile(data: bytes | str, file_name: str) -> SparsityProfile:
    """A profile JSON document (bytes in UTF-8, or text) as a profile named after ``file_name``'s stem unless it
    names itself; ConfigError (one sentence naming the file) for anything that is not such a document."""
    stem = file_name.rsplit(".", 1)[0] or file_name
    if len(data) > MAX_PROFILE_BYTES:
        raise ConfigError(f"The profile file {file_name} is larger than {MAX_PROFILE_BYTES // 2**20} MB; a "
                          "sparsity profile is a small JSON object.")
    try:
        document = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError:
        raise ConfigError(f"The profile file {file_name} is not UTF-8 text (a JSON file is).") from None
    except RecursionError:
        raise ConfigError(f"The profile file {file_name} nests too deeply to be a sparsity profile.") from None
    except ValueError as exc:  # JSONDecodeError, or an integer with thousands of digits
        raise ConfigError(f"The profile file {file_name} is not valid JSON ({str(exc).splitlines()[0]}).") from None
    try:
        return profile_from_json(document, default_name=stem)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(f"In the profile file {file_name}, {text[:1].lower()}{text[1:]}") from None


def method_profiles(model: str, methods: Iterable[str], folder: Path | None = None) -> dict[str, SparsityProfile]:
    """{method: profile} for each of ``methods`` that has a profile of its own for ``model``: the file
    ``<folder>/<model>_<method>.json`` (folder: ``PROFILE_DIR``), as `benchmark tune --methods METHOD` makes for
    one saliency method (the authors tuned a profile per method). A ConfigError names a file that cannot be read.
    """
    folder = PROFILE_DIR if folder is None else Path(folder)
    files = {name: folder / f"{model}_{name}.json" for name in methods}
    return {name: load_profile(path) for name, path in files.items() if path.is_file()}


def profile_from_json(data, default_name: str = "custom") -> SparsityProfile:
    """Parse the JSON form written by `SparsityProfile.to_json` (or a plain mapping). ConfigError for a document
    of other types, one that sets no target, or a target outside [0, 1)."""
    if not isinstance(data, dict):
        raise ConfigError("A sparsity profile must be a JSON object.")
    targets = data.get("targets", data)
    if not isinstance(targets, dict) or not all(_is_number(v) for v in targets.values()):
        raise ConfigError("Profile targets must map block names to numbers.")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"A profile's {key} must be a string.")
    if "default" in data and not _is_number(data["default"]):
        raise ConfigError("A profile's default must be a number.")
    if not targets and not data.get("default"):
        raise ConfigError("The profile sets no sparsity (no targets and no default above 0), so it would prune "
                          "nothing; add \"targets\": {block: sparsity}.")
    profile = SparsityProfile.from_mapping(targets, name=str(data.get("name", default_name)),
                                           description=str(data.get("description", "")))
    if "default" in data:
        profile = SparsityProfile(profile.name, profile.targets, float(data["default"]), profile.description)
    for where, value in (*profile.targets, ("the default", profile.default)):
        _check(value, f"{where} in the profile {profile.name}")
    return profile


def _is_number(value: object) -> bool:
    """An int or float from JSON (not a bool, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(value: float, where: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"Sparsity for {where} must be in [0, 1), got {value}.")
    return float(value)


def resolve_targets(model: nn.Module, layer_names: list[str], sparsity: Sparsity) -> dict[str, float]:
    """{layer name: target sparsity} for the given target layers.

    A mapping/profile key may name a block (found from the module tree, see `spade.layers.block_of`)
    or a single layer; a layer key wins over its block's key. Unknown keys raise ConfigError.
    """
    if isinstance(sparsity, (int, float)):
        value = _check(float(sparsity), "all layers")
        return dict.fromkeys(layer_names, value)
    profile = sparsity if isinstance(sparsity, SparsityProfile) else SparsityProfile.from_mapping(sparsity)
    keys = dict(profile.targets)
    block_names = {name: block_of(model, name) for name in layer_names}
    known = set(layer_names) | set(block_names.values())
    unknown = [k for k in keys if k not in known]
    if unknown:
        valid = sorted(set(block_names.values()), key=list(block_names.values()).index)
        raise ConfigError(f"Profile {profile.name!r} names unknown blocks {', '.join(unknown[:5])}; "
                          f"this model's blocks are: {', '.join(valid[:40])}.")
    default = _check(profile.default, "the default")
    return {name: _check(keys.get(name, keys.get(block_names[name], default)), name) for name in layer_names}


def classifier_profile(model: nn.Module, target: float = 0.95, selection: LayerSelection = LayerSelection()
                       ) -> SparsityProfile:
    """`target` on the final (classifier) block only, every feature block dense: a class logit's trace that keeps
    the features exact and restricts the class to the channels the image's views use (the paper's "Sparse FC")."""
    final = list(blocks(model, selection))[-1]
    return SparsityProfile.from_mapping({final: target}, name=f"classifier-{target:g}",
                                        description=f"{target:g} on the classifier block ({final}) only")


def late_blocks_profile(model: nn.Module, target: float = 0.95, fraction: float = 0.3,
                        selection: LayerSelection = LayerSelection()) -> SparsityProfile:
    """The authors' neuron-visualization choice, defined structurally for any model: `target` on the
    last `fraction` of the feature blocks (rounded up) and on the final (classifier) block, 0 elsewhere.
    Blocks come from `spade.layers.blocks`. On torchvision ResNet-50 the defaults give exactly the
    authors' set: layer3.4, layer3.5, layer4.0-4.2 and fc."""
    names = list(blocks(model, selection))
    features = names[:-1]
    late = features[len(features) - math.ceil(fraction * len(features)):] + names[-1:]
    return SparsityProfile.from_mapping(dict.fromkeys(late, target), name=f"late-blocks-{target:g}",
                                        description=f"{target:g} on the last {len(late)} of {len(names)} blocks")
