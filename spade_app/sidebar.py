"""The shared sidebar (image, model, device, presentation mode) rendered by app.py on every page.

Widget keys live in ``st.session_state`` so the choices persist across pages; the resolved choice is
stored as a :class:`Selection` under ``SELECTION_KEY`` for the pages to read with :func:`get_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
import torch
from PIL import Image

from spade.devices import resolve_device
from spade.errors import SpadeError, WeightsUnavailableError
from spade.images import MAX_PIXELS, bundled_examples
from spade.models import DEFAULT_MODEL, MODELS, LoadedModel
from spade_app import loaders

SELECTION_KEY = "spade_selection"
CHECKPOINT = "__checkpoint__"
BUNDLED, UPLOAD = "Example photo", "Upload"
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
CHECKPOINT_TYPES = ["pth", "pt", "pth.tar", "ckpt", "bin"]


@dataclass(frozen=True)
class Selection:
    """What the sidebar resolved to. image/loaded are None when the choice failed (an error is shown)."""

    image: Image.Image | None
    image_key: str | None  # content digest of the image bytes
    image_label: str
    loaded: LoadedModel | None
    model_key: str | None  # registry name, or "arch@digest" for an uploaded checkpoint
    model_label: str
    device: str  # the user's choice: "auto" | "cpu" | "cuda"
    presentation: bool

    @property
    def ready(self) -> bool:
        return self.image is not None and self.loaded is not None


def get_selection() -> Selection:
    """The current sidebar selection (app.py renders the sidebar before any page runs)."""
    sel = st.session_state.get(SELECTION_KEY)
    if sel is None:  # a page run on its own, e.g. by a test: render the sidebar now
        sel = render_sidebar()
    return sel


def require_selection(purpose: str = "start") -> Selection:
    """The current selection; stops the page with a hint when its image or model is not usable."""
    sel = get_selection()
    if not sel.ready:
        st.info(f"Choose a valid image and model in the sidebar to {purpose}.")
        st.stop()
    return sel


def _model_label(name: str) -> str:
    if name == CHECKPOINT:
        return "Upload a checkpoint…"
    spec = MODELS[name]
    if spec.offline:
        return f"{name}"
    return name if spec.weights_available() else f"{name} (weights not cached)"


def _image_section() -> tuple[Image.Image | None, str | None, str]:
    examples = list(bundled_examples())
    source = st.radio("Image", [BUNDLED, UPLOAD], key="image_source", horizontal=True)
    if source == BUNDLED:
        if not examples:
            st.error("No bundled example photos found in assets/images; upload an image instead.")
            return None, None, ""
        name = st.selectbox("Example photo", examples, key="image_example",
                            format_func=lambda n: n.replace("_", " ").capitalize())
        data, label = loaders.bundled_bytes(name), name
    else:
        # no type filter: the sidebar is too narrow for Streamlit's list of types (it was cut off), and
        # spade.images.load_image refuses anything that is not one of these formats with a sentence
        upload = st.file_uploader("Upload an image", key="image_upload", max_upload_size=loaders.UPLOAD_MB["image"],
                                  help=f"{', '.join(t.upper() for t in IMAGE_TYPES)}; up to "
                                       f"{loaders.UPLOAD_MB['image']} MB and {MAX_PIXELS // 1_000_000} megapixels.")
        if upload is None:
            st.info("Choose an image file to upload.")
            return None, None, ""
        data, label = upload.getvalue(), upload.name
    key = loaders.digest(data)
    try:
        image = loaders.image_from_bytes(key, data)
    except SpadeError as exc:
        st.error(str(exc))
        return None, None, label
    st.image(loaders.thumb(key, image), caption=f"{label} ({image.width}×{image.height})")
    return image, key, label


def _device_section() -> tuple[str, str | None]:
    """(user choice, resolved torch device string or None on error)."""
    cuda = torch.cuda.is_available()
    options = ["auto", "cpu", "cuda"] if cuda else ["auto", "cpu"]
    if st.session_state.get("device") not in options:
        st.session_state.pop("device", None)
    choice = st.radio("Device", options, key="device", horizontal=True)
    if not cuda:
        st.caption(f"CUDA is unavailable: torch {torch.__version__} sees no GPU on this machine, so everything "
                   "runs on the CPU.")
    try:
        return choice, str(resolve_device(choice))
    except SpadeError as exc:
        st.error(str(exc))
        return choice, None


def _model_section(device: str | None) -> tuple[LoadedModel | None, str | None, str]:
    names = [*MODELS, CHECKPOINT]
    default = names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0
    name = st.selectbox("Model", names, index=default, key="model_name", format_func=_model_label)
    if name != CHECKPOINT:
        st.caption(MODELS[name].description)
    if device is None:
        return None, None, name
    try:
        if name != CHECKPOINT:
            try:
                return loaders.registry_model(name, device), f"{name}@{device}", name
            except WeightsUnavailableError as exc:
                st.error(str(exc))
                if st.button(f"Download the {name} weights", key="download_weights", icon=":material/download:",
                             help="Fetches the file once into the torch hub cache; needs network access."):
                    with st.spinner(f"Downloading the {name} weights…"):
                        try:
                            loaders.download_weights(name)
                        except SpadeError as download_exc:
                            st.error(str(download_exc))
                            return None, None, name
                    st.rerun()
                return None, None, name
        arch = st.selectbox("Architecture of the checkpoint", list(MODELS), key="checkpoint_arch")
        upload = st.file_uploader("Checkpoint (state dict or TorchScript)", type=CHECKPOINT_TYPES,
                                  key="checkpoint_upload", max_upload_size=loaders.UPLOAD_MB["checkpoint"])
        if upload is None:
            st.info("Upload a checkpoint file for the chosen architecture.")
            return None, None, ""
        data = upload.getvalue()
        key = loaders.digest(data)
        loaded = loaders.checkpoint_model(key, arch, device, data, upload.name)
        return loaded, f"{arch}:{key}@{device}", f"{upload.name} ({arch})"
    except SpadeError as exc:
        st.error(str(exc))
        return None, None, name


def render_sidebar() -> Selection:
    """Draw the sidebar, resolve the choices (showing st.error for bad files) and store the Selection."""
    with st.sidebar:
        st.markdown("## SPADE Explorer")
        image, image_key, image_label = _image_section()
        st.divider()
        model_box = st.container()  # drawn above the device choice, filled once the device is known
        device, resolved = _device_section()
        with model_box:
            loaded, model_key, model_label = _model_section(resolved)
        st.divider()
        presentation = st.toggle("Presentation mode", key="presentation",
                                 help="Hide the settings and enlarge figures for a projector.")
    sel = Selection(image=image, image_key=image_key, image_label=image_label, loaded=loaded,
                    model_key=model_key, model_label=model_label, device=device, presentation=presentation)
    st.session_state[SELECTION_KEY] = sel
    return sel


def _use_example(name: str) -> None:
    st.session_state["image_source"] = BUNDLED
    st.session_state["image_example"] = name


def gallery(columns: int = 8) -> None:
    """Thumbnails of the bundled photos; "Use" switches the sidebar's image to that photo."""
    examples = list(bundled_examples())
    for start in range(0, len(examples), columns):
        cols = st.columns(columns)
        for col, name in zip(cols, examples[start:start + columns]):
            data = loaders.bundled_bytes(name)
            key = loaders.digest(data)
            col.image(loaders.thumb(key, loaders.image_from_bytes(key, data), 160), width="stretch")
            col.button(name.replace("_", " ").capitalize(), key=f"gallery_{name}", on_click=_use_example,
                       args=(name,), width="stretch")
