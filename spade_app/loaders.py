"""Cached calls into the library: models (``st.cache_resource``, shared and never mutated) and
images / predictions (``st.cache_data``). Cache keys are content digests, so the same bytes uploaded
twice hit the cache and the big payloads themselves are never hashed on every rerun."""

from __future__ import annotations

import hashlib

import streamlit as st
from PIL import Image

from spade.images import bundled_examples, load_image, thumbnail
from spade.models import LoadedModel, load_checkpoint, load_model


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


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=2)
def checkpoint_model(key: str, arch: str, device: str, _data: bytes) -> LoadedModel:
    """A user checkpoint (any layout spade.checkpoints reads) for architecture `arch`; `key` = digest(_data)."""
    return load_checkpoint(_data, arch, device=device)


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
