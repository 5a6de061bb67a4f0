"""Cached calls into the library: models (``st.cache_resource``, shared and never mutated) and
images / predictions and the sparsity profiles that fit a model (``st.cache_data``). Cache keys are content
digests, so the same bytes uploaded twice hit the cache and the big payloads themselves are never hashed on every
rerun."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st
from PIL import Image

from spade.errors import CheckpointTimeoutError, SpadeError
from spade.images import bundled_examples, load_image, thumbnail
from spade.layers import prunable_layers
from spade.models import LoadedModel, ModelSpec, load_checkpoint, load_model
from spade.saliency import METHODS
from spade.sparsity import PROFILE_DIR, PROFILES, SparsityProfile, load_profile, resolve_targets

UPLOAD_MB = {"image": 200, "checkpoint": 1024, "profile": 1, "trigger": 20}
"""The largest upload each uploader takes, in MB (what its "... per file" line says). Images are also capped in
pixels (`spade.images.MAX_PIXELS`); a study file takes `spade_study.archive.MAX_ARCHIVE_BYTES`; checkpoints are
capped by .streamlit/config.toml's server.maxUploadSize (the same 1024)."""


def digest(data: bytes) -> str:
    """Short content hash used as a cache key."""
    return hashlib.sha256(data).hexdigest()[:24]


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def registry_model(name: str, device: str) -> LoadedModel:
    """A registry model with its default weights on `device` (a resolved device string)."""
    return load_model(name, device=device)


def download_weights(name: str) -> None:
    """Explicit user request: fetch a registry model's default weights into the local cache."""
    load_model(name, device="cpu", download=True)


def checkpoint_model(key: str, arch: str, device: str, data: bytes, name: str | None = None) -> LoadedModel:
    """A user checkpoint (any layout spade.checkpoints reads) for architecture `arch`; `key` = digest(data); `name`:
    the uploaded file's name, which messages and the model's source name.

    Raises the library's SpadeError for a refused file. A refusal is remembered (for this file, architecture and
    device), so the reruns that follow while the file stays in the uploader do not check it again (a TorchScript
    check starts a process); a time limit passed (CheckpointTimeoutError) is not remembered, as a less busy
    moment may pass it."""
    refused = _refused_checkpoints()
    if (key, arch, device, name) in refused:
        kind, message = refused[(key, arch, device, name)]
        raise kind(message)
    try:
        return _checkpoint_model(key, arch, device, name, data)
    except CheckpointTimeoutError:
        raise
    except SpadeError as exc:
        while len(refused) >= MAX_REFUSALS:
            refused.pop(next(iter(refused)))
        refused[(key, arch, device, name)] = (type(exc), str(exc))
        raise


MAX_REFUSALS = 32  # refused checkpoints remembered (their messages only)


@st.cache_resource(show_spinner=False)
def _refused_checkpoints() -> dict[tuple[str, str, str, str | None], tuple[type[SpadeError], str]]:
    """{(digest, arch, device, file name): (error type, message)} of refused checkpoints, shared by all sessions."""
    return {}


@st.cache_resource(show_spinner="Loading and checking the checkpoint…", max_entries=2)
def _checkpoint_model(key: str, arch: str, device: str, name: str | None, _data: bytes) -> LoadedModel:
    return load_checkpoint(_data, arch, device=device, label=name)


@st.cache_data(show_spinner=False, max_entries=32)
def image_from_bytes(key: str, _data: bytes) -> Image.Image:
    """Decoded RGB image of uploaded bytes; raises spade.errors.ImageLoadError for a bad file."""
    return load_image(_data)


@st.cache_data(show_spinner=False)
def bundled_bytes(name: str) -> bytes:
    """Raw bytes of a bundled example photo."""
    return bundled_examples()[name].read_bytes()


@st.cache_data(show_spinner=False, max_entries=64)
def thumb(key: str, _image: Image.Image, size: int = 256) -> Image.Image:
    return thumbnail(_image, size)


@st.cache_data(show_spinner=False, max_entries=64)
def top_k(model_key: str, image_key: str, _loaded: LoadedModel, _image: Image.Image, k: int = 5
          ) -> list[tuple[int, str, float]]:
    """The dense model's top-k (class index, class name, probability), most probable first."""
    return [tuple(p) for p in _loaded.predict(_image, k=k)]


def _profile_files(folder: Path) -> tuple[tuple[str, float], ...]:
    if not folder.is_dir():
        return ()
    return tuple((str(p), p.stat().st_mtime) for p in sorted(folder.glob("*.json")))


@st.cache_data(show_spinner=False, max_entries=16)
def _fitting_profiles(model_key: str, files: tuple[tuple[str, float], ...], _loaded: LoadedModel
                      ) -> dict[str, SparsityProfile]:
    candidates: dict[str, SparsityProfile] = {}
    for path, _ in files:
        try:
            profile = load_profile(path)
        except SpadeError:
            continue  # an unreadable file is skipped (the CLI reports it when used directly)
        candidates[Path(path).stem] = profile
    candidates.update(PROFILES)  # a built-in name wins over a file stem, as in load_profile
    layers = list(prunable_layers(_loaded.model, _loaded.spec.layer_selection))
    fitting = {}
    for key, profile in candidates.items():
        try:
            resolve_targets(_loaded.model, layers, profile)
        except SpadeError:
            continue  # names blocks this model does not have
        fitting[key] = profile
    return fitting


def available_profiles(loaded: LoadedModel, model_key: str, folder: Path | None = None
                       ) -> dict[str, SparsityProfile]:
    """{key: profile} of the built-in profiles (key: their name in spade.sparsity.PROFILES) and the JSON files
    under spade/profiles/ (key: the file's stem) that fit the model. `profile_label` names an entry for display."""
    return _fitting_profiles(model_key, _profile_files(folder or PROFILE_DIR), loaded)


def profile_label(key: str, profile: SparsityProfile) -> str:
    """How an entry of `available_profiles` is shown: a built-in profile's name, or a file's profile name with
    the file name."""
    return key if key in PROFILES else f"{profile.name} ({key}.json)"


def default_profile(profiles: dict[str, SparsityProfile], spec: ModelSpec) -> str | None:
    """The key of the profile made for this model: the file named after it (spade/profiles/<model>.json, the
    profile tuned for all methods), else a file made for one of its saliency methods (<model>_<method>.json),
    else None. A file made for another model whose name starts with this one's does not count."""
    files = [key for key in profiles if key not in PROFILES]
    per_method = {f"{spec.name}_{name}" for name in METHODS}
    return spec.name if spec.name in files else next((key for key in files if key in per_method), None)
