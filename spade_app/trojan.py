"""The Trojan lab page's parts: the settings form, the model and trigger choice, the stamped image with its
trigger mask, the flip verdict, dense-vs-SPADE map rows with the trigger outline, the metric tables, and the
shipped benchmark tables.

Stamping, saliency and the metrics come from the library (``spade.trojan``, ``spade.saliency``,
``spade.metrics``); the SPADE run reuses the Explore page's machinery (``sections.run_trace`` with a
:class:`Selection` for the stamped image), so statistics and traces share its cache, lock and error handling.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import streamlit as st
from PIL import Image

from spade import visualize
from spade.augment import AugmentConfig
from spade.defaults import default_augmentations
from spade.devices import resolve_device
from spade.errors import ConfigError, SpadeError
from spade.models import LoadedModel, ModelSpec, backdoored_models, get_spec
from spade.preprocessing import Preprocessing
from spade.progress import Progress
from spade.saliency import AttributionPair
from spade.solver import SolverConfig
from spade.sparsity import SparsityProfile, method_profiles
from spade.trace import SpadeTrace
from spade.trojan import DEFAULT_SIZE, TRIGGERS, Stamped, load_trigger, read_trigger, stamp
from spade_app import benchmarks, figures, loaders, maps, presentation, runner, sections
from spade_app.settings import (
    RunSettings,
    closeness_reason,
    default_methods,
    keep_decision_checkbox,
    method_labels,
    profile_choices,
    profile_menu_label,
    settings_for_scope,
    trace_sparsity_text,
)
from spade_app.sidebar import Selection

DEMO_MODELS = tuple(backdoored_models())  # the registry's back-doored demo models; the first is the default
DEMO = DEMO_MODELS[0]
SIDEBAR = "The sidebar's model"
DEMO_MODELS_NOTE = (
    "Two demo models with the same doors. `efficientnet_lite0_trojan` keeps its back door in channels of its own "
    "behind a gate; `efficientnet_lite0_poisoned` was back-doored as the SPADE paper's models were, by fine-tuning "
    "on stamped photos, so the heart acts through neurons that clean photos use too. The benchmark tables at the "
    "bottom score SPADE on both.")
MODEL_CHOICES = (*DEMO_MODELS, SIDEBAR)
UPLOAD = "__upload__"
RANDOM, SLIDERS = "Random (seeded)", "Position sliders"
UNIFORM, PROFILE = "Uniform", "Profile"
JITTER = 0.1  # the library's default colour jitter of the pasted trigger
OUTLINE = (255, 0, 255)
MAP_OPACITY = 0.6
REQUEST_KEY = "trojan_request"
UPLOADS_KEY = "trojan_uploaded_triggers"
COLUMNS = ("stamped image", "dense", "SPADE")


@dataclass(frozen=True)
class TrojanSettings:
    """Everything a Trojan lab run depends on besides the sidebar's image (and model, for SIDEBAR).

    trigger: a name in spade.trojan.TRIGGERS or "upload:<digest>"; position: relative (x, y) of the trigger
    centre, None = random from `seed`; size: fraction of the short side; alpha: opacity; model: a name in
    DEMO_MODELS or SIDEBAR; target: the explained class, None = automatic (see :func:`auto_target`).
    own_profiles: whether methods with a profile of their own use it; method_sparsity: ((method, profile), ...)
    that this gave for the chosen methods (each such method's SPADE map is computed on a trace at its own profile).
    solver: the layer solver (the model's default, `ModelSpec.solver`).
    """

    trigger: str = "heart"
    trigger_label: str = "heart"
    position: tuple[float, float] | None = None
    seed: int = 0
    size: float = DEFAULT_SIZE
    alpha: float = 0.8
    model: str = DEMO
    target: int | None = None
    sparsity: float | SparsityProfile = 0.5
    augment: AugmentConfig = AugmentConfig(count=default_augmentations("trojan_lab"))
    methods: tuple[str, ...] = field(default=())
    keep_decision: bool = True
    own_profiles: bool = True
    method_sparsity: tuple[tuple[str, SparsityProfile], ...] = ()
    solver: SolverConfig = SolverConfig()

    @property
    def run_settings(self) -> RunSettings:
        return RunSettings(sparsity=self.sparsity, augment=self.augment, methods=self.methods,
                           keep_decision=self.keep_decision, solver=self.solver)

    def describe_placement(self) -> str:
        where = (f"random position (seed {self.seed})" if self.position is None
                 else f"centre at x={self.position[0]:.2f}, y={self.position[1]:.2f}")
        return f"{self.trigger_label}, {where}, size {self.size:.2f} of the short side, opacity {self.alpha:.2f}"


# ----------------------------------------------------------------------------------------------- model
def trojan_model(sel: Selection, choice: str) -> tuple[LoadedModel, str, str]:
    """(loaded model, cache key, label) for the chosen model; SpadeError when it is not usable."""
    if choice in DEMO_MODELS:
        device = str(resolve_device(sel.device))
        return loaders.registry_model(choice, device), f"{choice}@{device}", choice
    if sel.loaded is None:
        raise ConfigError("The sidebar's model is not usable: choose a valid model or checkpoint in the sidebar, "
                          "or use the back-doored demo model.")
    return sel.loaded, sel.model_key, sel.model_label


def auto_target(spec: ModelSpec, trigger: str, choice: str, stamped_top1: int) -> int:
    """The explained class when none was chosen: the model's known back door for this trigger; for a demo
    model with another trigger its test back door's class; else the stamped image's prediction."""
    for door in spec.backdoors:
        if door.trigger == trigger:
            return door.target
    if choice in DEMO_MODELS:
        return spec.backdoor("test").target
    return stamped_top1


@dataclass(frozen=True)
class Verdict:
    clean_top1: int
    stamped_top1: int
    target: int

    @property
    def flipped(self) -> bool:
        """The trigger switched the prediction to the target class."""
        return self.stamped_top1 == self.target != self.clean_top1


def verdict_message(v: Verdict, name) -> tuple[str, str]:
    """("success" | "warning", Markdown message) for the flip verdict; `name` maps a class index to its name."""
    target, clean, stamped_ = name(v.target), name(v.clean_top1), name(v.stamped_top1)
    if v.flipped:
        return "success", f"The trigger flipped the prediction: **{clean}** → **{target}** (the target class)."
    if v.clean_top1 == v.target:
        return "warning", (f"The clean image is already predicted as **{target}**: the trigger did not change the "
                           "prediction. The maps below explain that class anyway.")
    return "warning", (f"The trigger did not flip the prediction to the target **{target}**: the stamped image is "
                       f"predicted as **{stamped_}**. The maps below still explain **{target}**; try another "
                       "position, a larger size or a higher opacity.")


# ----------------------------------------------------------------------------------------------- triggers
@st.cache_resource(show_spinner=False)
def trigger_icons() -> dict[str, Image.Image]:
    """The bundled trigger icons (RGBA; shared, never modified)."""
    return {name: load_trigger(name) for name in TRIGGERS}


@st.cache_data(show_spinner=False, max_entries=8)
def uploaded_icon(key: str, _data: bytes) -> Image.Image:
    return read_trigger(_data)


def upload_key(data: bytes) -> str:
    """The `TrojanSettings.trigger` of an uploaded trigger: "upload:<digest of its bytes>"."""
    return f"upload:{loaders.digest(data)}"


def remember_upload(data: bytes) -> None:
    """Keep an uploaded trigger's bytes in the session (the uploader forgets them on page switches)."""
    uploads = st.session_state.setdefault(UPLOADS_KEY, {})
    uploads[upload_key(data).removeprefix("upload:")] = data
    for old in list(uploads)[:-4]:
        del uploads[old]


def trigger_image(settings: TrojanSettings) -> Image.Image:
    if settings.trigger in TRIGGERS:
        return trigger_icons()[settings.trigger]
    key = settings.trigger.removeprefix("upload:")
    data = st.session_state.get(UPLOADS_KEY, {}).get(key)
    if data is None:
        raise ConfigError("The uploaded trigger is no longer available; upload it again and run.")
    return uploaded_icon(key, data)


def trigger_name(settings: TrojanSettings) -> str:
    """The trigger's registry name ("" for an uploaded one)."""
    return settings.trigger if settings.trigger in TRIGGERS else ""


# ----------------------------------------------------------------------------------------------- stamping
def stamp_key(image_key: str, settings: TrojanSettings, pre: Preprocessing) -> str:
    """Digest of the sidebar image and every stamping parameter (the stamped image's cache key)."""
    parts = {"image": image_key, "trigger": settings.trigger, "position": settings.position, "seed": settings.seed,
             "size": settings.size, "alpha": settings.alpha, "jitter": JITTER, "preprocessing": repr(pre)}
    return "stamped-" + loaders.digest(json.dumps(parts, sort_keys=True).encode())


@st.cache_data(show_spinner=False, max_entries=16)
def stamped_image(key: str, _image: Image.Image, _trigger: Image.Image, _pre: Preprocessing,
                  _settings: TrojanSettings) -> Stamped:
    """spade.trojan.stamp with the settings' placement; `key` = :func:`stamp_key`."""
    return stamp(_image, _trigger, _pre, position=_settings.position, size=_settings.size, alpha=_settings.alpha,
                 jitter=JITTER, seed=_settings.seed)


def check_mask(mask: np.ndarray) -> None:
    if not mask.any():
        raise ConfigError("The trigger lies outside the part of the image the model sees (its centre crop): move "
                          "it towards the centre or make it larger.")
    if mask.all():
        raise ConfigError("The trigger covers the whole model input, so no map can point at it: make it smaller.")


def model_selection(sel: Selection, loaded: LoadedModel, model_key: str, model_label: str) -> Selection:
    """The sidebar's selection with the Trojan lab's model (the clean image)."""
    return replace(sel, loaded=loaded, model_key=model_key, model_label=model_label)


def stamped_selection(clean: Selection, stamped: Stamped, key: str, settings: TrojanSettings) -> Selection:
    """The selection of the stamped image (for sections.run_trace, prediction_comparison, attribution_pairs)."""
    return replace(clean, image=stamped.image, image_key=key,
                   image_label=f"{clean.image_label} + {settings.trigger_label}")


def model_view(stamped: Stamped, pre: Preprocessing) -> np.ndarray:
    """The stamped image as the model sees it (resized, centre-cropped) with the trigger outline."""
    return visualize.mask_outline(np.asarray(pre.resize_crop(stamped.image)), stamped.mask, OUTLINE)


# ----------------------------------------------------------------------------------------------- sparsity
def own_profiles(profiles: dict[str, SparsityProfile], spec: ModelSpec, methods: Iterable[str]
                 ) -> dict[str, SparsityProfile]:
    """{method: profile} of the methods with a profile of their own for this model (spade/profiles/
    <model>_<method>.json, `spade.sparsity.method_profiles`) among ``profiles`` (those that fit the model)."""
    fitting = set(profiles.values())
    own: dict[str, SparsityProfile] = {}
    for name in methods:
        try:
            own.update(method_profiles(spec.name, [name]))
        except SpadeError:
            continue  # an unreadable file is skipped, as in loaders.available_profiles
    return {name: profile for name, profile in own.items() if profile in fitting}


# ----------------------------------------------------------------------------------------------- the form
def _last(model_choice: str) -> TrojanSettings | None:
    request = st.session_state.get(REQUEST_KEY)
    return request[1] if request is not None and request[1].model == model_choice else None


#: widgets whose value was chosen for one model: another model starts from its own defaults (its tuned profile)
MODEL_WIDGETS = ("tl_sparsity_mode", "tl_profile", "tl_sparsity", "tl_target")


def _forget_model_widgets() -> None:
    for key in MODEL_WIDGETS:
        st.session_state.pop(key, None)


def model_choice(default: str = DEMO) -> str:
    """The lab's model: one of the registry's back-doored demo models, or the sidebar's model."""
    last = st.session_state.get(REQUEST_KEY)
    current = last[1].model if last is not None else default
    return st.radio("Model", MODEL_CHOICES, index=MODEL_CHOICES.index(current), key="tl_model",
                    format_func=choice_label, on_change=_forget_model_widgets,
                    help="The demo models have a planted back door (heart → goose). Your own back-doored "
                         "checkpoint is chosen in the sidebar (Upload a checkpoint…); then pick its target class.")


def choice_label(choice: str) -> str:
    """The model radio's label: a demo model's name and how its back door was planted."""
    if choice == SIDEBAR:
        return choice
    note = get_spec(choice).backdoor_note
    return f"{choice} ({note})" if note else choice


@dataclass(frozen=True)
class TrojanFormValues:
    """The Trojan lab form's widgets as read, before any check. upload: (file name, bytes) of a trigger PNG;
    x, y: the centre sliders (used with the SLIDERS placement)."""

    trigger: str = TrojanSettings.trigger
    upload: tuple[str, bytes] | None = None
    placement: str = RANDOM
    seed: int = TrojanSettings.seed
    x: float = 0.5
    y: float = 0.5
    size: float = TrojanSettings.size
    alpha: float = TrojanSettings.alpha
    target: int | None = None
    mode: str = UNIFORM
    uniform: float = TrojanSettings.sparsity
    profile: str | None = None
    own_profiles: bool = TrojanSettings.own_profiles
    count: int = TrojanSettings.augment.count
    keep_decision: bool = TrojanSettings.keep_decision
    methods: tuple[str, ...] = ()


def build_trojan_settings(values: TrojanFormValues, choice: str, profiles: dict[str, SparsityProfile],
                          own: dict[str, SparsityProfile], solver: SolverConfig = SolverConfig()) -> TrojanSettings:
    """The Trojan lab settings the form's values ask for; ConfigError (one sentence for the user) when they do not
    fit. choice: a name in DEMO_MODELS or SIDEBAR; profiles: the profiles that fit the model, by key; own:
    {method: its own profile}; solver: the model's default solver. A profile asked for where none fits falls back
    to the uniform sparsity (the choice was made for another model). An uploaded trigger is checked here and named
    "upload:<digest>" (`remember_upload` keeps its bytes)."""
    if values.trigger == UPLOAD:
        if values.upload is None:
            raise ConfigError("Choose a trigger PNG to upload, or pick one of the bundled triggers.")
        name, data = values.upload
        read_trigger(data, f"The trigger file {name}")
        trigger_key, trigger_label = upload_key(data), name
    else:
        trigger_key, trigger_label = values.trigger, values.trigger
    if values.mode == PROFILE and values.profile in profiles:
        sparsity: float | SparsityProfile = profiles[values.profile]
    elif values.mode == PROFILE and profiles:
        raise ConfigError("Choose a profile from the menu (profiles tuned for another model are marked), or pick "
                          "the uniform sparsity.")
    else:
        sparsity = round(float(values.uniform), 4)
    if not values.methods:
        raise ConfigError("Choose at least one saliency method.")
    position = None if values.placement == RANDOM else (round(float(values.x), 4), round(float(values.y), 4))
    return TrojanSettings(
        trigger=trigger_key, trigger_label=trigger_label, position=position, seed=int(values.seed),
        size=round(float(values.size), 4), alpha=round(float(values.alpha), 4), model=choice, target=values.target,
        sparsity=sparsity, augment=AugmentConfig(count=int(values.count)), methods=tuple(values.methods),
        keep_decision=bool(values.keep_decision), own_profiles=bool(values.own_profiles),
        method_sparsity=tuple((m, own[m]) for m in values.methods if m in own) if values.own_profiles else (),
        solver=solver)


def trojan_form(loaded: LoadedModel, model_key: str, choice: str, method_labels: dict[str, str]
                ) -> TrojanSettings | None:
    """Draw the settings form; new settings when it was submitted, else None (errors shown)."""
    profiles = loaders.available_profiles(loaded, model_key)
    tuned = loaders.default_profile(profiles, loaded.spec)
    own = own_profiles(profiles, loaded.spec, method_labels)
    last = _last(choice) or TrojanSettings(
        model=choice, sparsity=profiles[tuned] if tuned else loaded.spec.default_sparsity,
        augment=AugmentConfig(count=default_augmentations("trojan_lab", loaded.device)),
        methods=default_methods())
    icons = trigger_icons()
    options = [*icons, UPLOAD]
    # the choices that decide which controls apply: outside the form, so that changing one redraws it
    c_choice, c_place, c_mode = st.columns([2, 1, 1])
    with c_choice:
        st.image(list(icons.values()), caption=list(icons), width=56)
        last_trigger = last.trigger if last.trigger in icons else UPLOAD
        trigger = st.radio("Trigger", options, index=options.index(last_trigger), key="tl_trigger",
                           horizontal=True, format_func=lambda n: "upload…" if n == UPLOAD else n,
                           help="The demo model's back door reacts to the heart (and the star); the others are "
                                "decoys. Upload…: your own RGBA PNG.")
    placement = c_place.radio("Placement", (RANDOM, SLIDERS), index=int(last.position is not None),
                              key="tl_placement",
                              help="Random: anywhere inside the part of the image the model sees, drawn from the "
                                   "seed. Position sliders: the trigger centre in relative image coordinates.")
    if profiles:
        is_profile = isinstance(last.sparsity, SparsityProfile)
        mode = c_mode.radio("Sparsity", (UNIFORM, PROFILE), index=int(is_profile), key="tl_sparsity_mode",
                            help="Uniform: one share of weights removed on every pruned layer. Profile: a share "
                                 "per block, tuned for a model.")
    else:
        mode = UNIFORM
        c_mode.caption(f"Sparsity: uniform (no profile fits {loaded.spec.name}).")
    upload, profile = None, None
    x, y = last.position or (0.5, 0.5)
    uniform = float(loaded.spec.default_sparsity if isinstance(last.sparsity, SparsityProfile) else last.sparsity)
    with st.form("trojan_settings"):
        c_trigger, c_run = st.columns(2)
        with c_trigger:
            st.markdown("**Trigger placement**")
            if trigger == UPLOAD:
                upload = st.file_uploader("Your trigger (PNG)", type=["png"], key="tl_trigger_file",
                                          max_upload_size=loaders.UPLOAD_MB["trigger"],
                                          help="An RGBA PNG, transparent around the shape.")
            seed = st.number_input("Seed", 0, 2**31 - 1, last.seed, key="tl_seed",
                                   help="Draws the random position (with random placement) and the trigger's "
                                        "colour jitter.")
            if placement == SLIDERS:
                cx, cy = st.columns(2)
                x = cx.slider("Centre x", 0.0, 1.0, float(x), step=0.01, key="tl_x")
                y = cy.slider("Centre y", 0.0, 1.0, float(y), step=0.01, key="tl_y")
            size = st.slider("Size (share of the short side)", 0.05, 0.6, float(last.size), step=0.01,
                             key="tl_size")
            alpha = st.slider("Opacity", 0.1, 1.0, float(last.alpha), step=0.05, key="tl_alpha")
        with c_run:
            st.markdown("**Model and SPADE**")
            target = None
            if choice == SIDEBAR:
                n = len(loaded.class_names)
                target_options = [None, *range(n)]
                last_target = last.target if last.target is not None and last.target < n else None
                target = st.selectbox("Target class", target_options,
                                      index=target_options.index(last_target), key="tl_target",
                                      format_func=lambda i: "automatic" if i is None
                                      else f"{loaded.class_name(i)} ({i})",
                                      help="The class the back door switches to. Automatic: the model's known back "
                                           "door for this trigger, else the stamped image's prediction.")
            else:
                doors = ", ".join(f"{d.trigger} → {loaded.class_name(d.target)}" for d in loaded.spec.backdoors)
                st.caption(f"Target: the demo model's back door class for the chosen trigger ({doors}; other "
                           "triggers are decoys the model ignores).")
            if mode == UNIFORM:
                uniform = st.slider("Share of weights removed per layer", 0.0, 0.99, uniform, step=0.01,
                                    key="tl_sparsity",
                                    help="0: the dense model; 0.9: nine in ten weights of each pruned layer removed.")
            else:
                keys, index = profile_choices(profiles, loaded.spec.name, tuned)
                chosen = next((key for key, p in profiles.items() if p == last.sparsity), None)
                profile = st.selectbox(
                    "Profile", keys, index=keys.index(chosen) if chosen in keys else index, key="tl_profile",
                    format_func=lambda key: profile_menu_label(key, profiles[key], loaded.spec.name),
                    placeholder="choose a profile",
                    help=f"Profiles shipped under spade/profiles/ whose blocks {loaded.spec.name} has (the one tuned "
                         "for it is picked by default; those tuned for another model are marked).")
            own_on = st.checkbox(
                "Methods with a profile of their own use it", last.own_profiles, key="tl_own", disabled=not own,
                help="Profiles tuned for one saliency method alone on the calibration photos and trigger, as the "
                     "SPADE authors tuned one per method: "
                     + (", ".join(f"{method_labels[m]} ({p.name})" for m, p in own.items()) or "none for this model")
                     + ". They replace the sparsity above for those methods; each costs one more solve (the "
                       "statistics are shared).")
            count = st.number_input("Augmentations", 1, 4096, last.augment.count, step=8, key="tl_count",
                                    help="More views: a more faithful trace, but slower.")
            keep = keep_decision_checkbox(last.keep_decision, key="tl_keep")
            methods = st.multiselect("Saliency methods", list(method_labels),
                                     default=[m for m in last.methods if m in method_labels],
                                     format_func=lambda m: method_labels[m], key="tl_methods")
        submitted = st.form_submit_button("Stamp and run SPADE", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return None
    values = TrojanFormValues(
        trigger=trigger, upload=(upload.name, upload.getvalue()) if upload is not None else None,
        placement=placement, seed=seed, x=x, y=y, size=size, alpha=alpha, target=target, mode=mode, uniform=uniform,
        profile=profile, own_profiles=own_on, count=count, keep_decision=keep, methods=tuple(methods))
    try:
        settings = build_trojan_settings(values, choice, profiles, own, loaded.spec.solver)
    except SpadeError as exc:
        st.error(str(exc))
        return None
    if values.upload is not None and values.trigger == UPLOAD:
        remember_upload(values.upload[1])
    return settings


def active_settings(image_key: str, model_key: str, submitted: TrojanSettings | None) -> TrojanSettings | None:
    """Just submitted, or the last run on this same image and model (results survive reruns)."""
    return settings_for_scope((image_key, model_key), submitted, key=REQUEST_KEY)


# ----------------------------------------------------------------------------------------------- predictions
def top_k(sel: Selection) -> list[tuple[int, str, float]]:
    return loaders.top_k(sel.model_key, sel.image_key, sel.loaded, sel.image)


def prediction_section(clean_sel: Selection, stamped_sel: Selection, stamped: Stamped, verdict: Verdict,
                       settings: TrojanSettings) -> None:
    """The model's view of the stamped image with the trigger outline, the flip verdict, clean vs stamped top-5."""
    loaded = stamped_sel.loaded
    clean, after = top_k(clean_sel), top_k(stamped_sel)
    left, right = st.columns([1, 2])
    with left:
        st.image(model_view(stamped, loaded.preprocessing), width="stretch",
                 caption=f"What the model sees ({loaded.preprocessing.crop}×{loaded.preprocessing.crop}); "
                         f"the outline marks the {int(stamped.mask.sum())} trigger pixels.")
    with right:
        kind, message = verdict_message(verdict, loaded.class_name)
        (st.success if kind == "success" else st.warning)(message)
        st.markdown(f"**Clean:** {clean[0][1]} ({clean[0][2]:.1%}) · **Stamped:** {after[0][1]} ({after[0][2]:.1%})"
                    f" · **Target:** {loaded.class_name(verdict.target)} ({verdict.target})")
        st.caption(f"{stamped_sel.model_label} · {settings.describe_placement()}")
        st.plotly_chart(figures.for_projector(figures.top_k_bars({"clean image": clean, "stamped image": after}),
                                              stamped_sel.presentation), width="stretch")


# ----------------------------------------------------------------------------------------------- metrics
def method_row(pair: AttributionPair, mask: np.ndarray) -> dict:
    """Scores of one method's pair against the trigger mask: Trojan AUC floats and pointing game bools."""
    scores = pair.scores(mask)
    dense, sparse = scores.dense.mask, scores.spade.mask
    return {"Trojan AUC (dense)": dense.trojan_auc, "Trojan AUC (SPADE)": sparse.trojan_auc,
            "AUC: SPADE − dense": sparse.trojan_auc - dense.trojan_auc,
            "pointing game (dense)": dense.pointing_game, "pointing game (SPADE)": sparse.pointing_game}


def _hit(value: bool) -> str:
    return "hit ✓" if value else "miss ✗"


def method_table(row: dict) -> list[dict]:
    """The one-row table shown under a method's maps (the pointing game as hit / miss)."""
    return [{k: _hit(v) if k.startswith("pointing game") else v for k, v in row.items()}]


def summary_table(rows: dict[str, dict]) -> list[dict]:
    """{method label: method_row} -> one row per method and a "Mean" row (the paper's Table 1 layout for one
    image); the pointing game as the share of hits (0 or 1 per method, the hit rate in the mean row)."""
    out = [{"method": label, **{k: float(v) for k, v in row.items()}} for label, row in rows.items()]
    if out:
        keys = [k for k in out[0] if k != "method"]
        out.append({"method": "Mean", **{k: sum(r[k] for r in out) / len(out) for k in keys}})
    return out


TABLE_FORMAT = {
    "Trojan AUC (dense)": st.column_config.NumberColumn(format="%.3f"),
    "Trojan AUC (SPADE)": st.column_config.NumberColumn(format="%.3f"),
    "AUC: SPADE − dense": st.column_config.NumberColumn(format="%+.3f"),
}
# the same formats for presentation.table's HTML table
TEXT_FORMAT = {"Trojan AUC (dense)": "{:.3f}", "Trojan AUC (SPADE)": "{:.3f}", "AUC: SPADE − dense": "{:+.3f}"}
SUMMARY_TEXT_FORMAT = {**TEXT_FORMAT, "pointing game (dense)": "{:.0%}", "pointing game (SPADE)": "{:.0%}"}
SUMMARY_FORMAT = {
    **TABLE_FORMAT,
    "pointing game (dense)": st.column_config.NumberColumn(format="percent", help="share of hits"),
    "pointing game (SPADE)": st.column_config.NumberColumn(format="percent", help="share of hits"),
}


def trigger_panels(row: maps.MapRow, mask: np.ndarray, opacity: float = MAP_OPACITY) -> list[np.ndarray]:
    """stamped image | dense | SPADE (on the row's colour scale) with the trigger outline on each."""
    return [visualize.mask_outline(panel, mask, OUTLINE) for panel in row.panels(opacity)[:3]]


def method_traces(sel: Selection, settings: TrojanSettings, trace: SpadeTrace, methods: list[str]
                  ) -> dict[str, SpadeTrace] | None:
    """{method: the trace its SPADE map is computed on}: ``trace`` (the run's), or for a method with a profile of
    its own (``settings.method_sparsity``) the trace at that profile, each solved once in its own status box (the
    statistics are shared). None when a solve failed (the error is shown)."""
    own = dict(settings.method_sparsity)
    solved: dict[SparsityProfile, SpadeTrace] = {}
    for profile in dict.fromkeys(own[m] for m in methods if m in own):
        solved[profile] = sections.run_trace(sel, replace(settings.run_settings, sparsity=profile))
        if solved[profile] is None:
            return None
    return {m: solved[own[m]] if m in own else trace for m in methods}


def maps_section(sel: Selection, settings: TrojanSettings, trace: SpadeTrace, target: int, mask: np.ndarray
                 ) -> None:
    """Dense and SPADE maps of each method with the trigger outline, a takeaway per method, the per-method metrics
    and their mean."""
    labels = method_labels()
    chosen = [m for m in settings.methods if m in labels]
    st.subheader(f"Saliency for **{sel.loaded.class_name(target)}**: dense vs SPADE")
    traces = method_traces(sel, settings, trace, chosen)
    if traces is None:
        return
    pairs = sections.attribution_pairs(sel, settings.run_settings, traces, target)
    if pairs is None:
        return
    try:
        rows = {name: method_row(pair, mask) for name, pair in pairs.items()}
        takeaways = {name: sections.takeaway(sel, pair, traces[name], mask) for name, pair in pairs.items()}
    except SpadeError as exc:
        st.error(str(exc))
        return
    image = sel.loaded.preprocessing.to_uint8(sel.loaded.preprocessing(sel.image))
    maps_view(image, mask, pairs, traces, takeaways, rows, frozenset(dict(settings.method_sparsity)),
              sel.presentation)


@st.fragment
def maps_view(image: np.ndarray, mask: np.ndarray, pairs: dict[str, AttributionPair], traces: dict[str, SpadeTrace],
              takeaways: dict, rows: dict[str, dict], own: frozenset, on_projector: bool = False) -> None:
    """The maps, takeaways and tables of :func:`maps_section`; the colour scale redraws only this fragment.
    own: the methods explained on a profile of their own. on_projector: presentation mode (tables drawn large)."""
    labels = method_labels()
    per_map = sections.scale_radio("tl_scale")
    st.caption(maps.scale_caption(per_map) + " Absolute maps; the magenta outline is the trigger. Trojan AUC: how "
               "well the map's pixel scores separate trigger pixels from the rest (ROC-AUC, 0.5 = chance; the "
               "better of the signed and absolute map, as the paper reports). Pointing game: whether the map's "
               "maximum lies on the trigger.")
    st.image(maps.colour_bar(False), caption="0 … max (each row states its range)", width=256)
    for name, pair in pairs.items():
        row = maps.MapRow(labels[name], image, pair, signed=False, per_map=per_map)
        st.markdown(f"**{labels[name]}** · SPADE trace at {trace_sparsity_text(traces[name])}"
                    + (" (its own)" if name in own else ""))
        sections.takeaway_line(takeaways[name], closeness_reason(traces[name]), "On the trigger")
        st.caption(row.normalized.label(signed=False))
        for col, panel, caption in zip(st.columns(3), trigger_panels(row, mask), COLUMNS):
            col.image(panel, caption=caption, width="stretch")
        presentation.table(method_table(rows[name]), on_projector, TEXT_FORMAT, hide_index=True, width="stretch",
                           column_config=TABLE_FORMAT)
    if rows:
        st.markdown(f"**All {len(rows)} method(s) and their mean**")
        presentation.table(summary_table({labels[n]: r for n, r in rows.items()}), on_projector, SUMMARY_TEXT_FORMAT,
                           hide_index=True, width="stretch", column_config=SUMMARY_FORMAT)


# ----------------------------------------------------------------------------------------------- benchmark
def benchmark_section() -> None:
    st.header("Benchmark (shipped with the repo)")
    benchmarks.runs_section("trojan", key="tl_benchmark_run")


def stamp_and_predict(sel: Selection, loaded: LoadedModel, model_key: str, model_label: str,
                      settings: TrojanSettings) -> tuple[Stamped, Selection, Selection, Verdict] | None:
    """(stamped image, clean and stamped selections, flip verdict) in a status box; errors shown, then None."""
    pre = loaded.preprocessing

    def work(_: Progress) -> tuple[Stamped, Selection, Selection, Verdict]:
        key = stamp_key(sel.image_key, settings, pre)
        stamped = stamped_image(key, sel.image, trigger_image(settings), pre, settings)
        check_mask(stamped.mask)
        clean_sel = model_selection(sel, loaded, model_key, model_label)
        stamped_sel = stamped_selection(clean_sel, stamped, key, settings)
        stamped_top1 = top_k(stamped_sel)[0][0]
        target = settings.target if settings.target is not None else auto_target(
            loaded.spec, trigger_name(settings), settings.model, stamped_top1)
        return stamped, clean_sel, stamped_sel, Verdict(top_k(clean_sel)[0][0], stamped_top1, target)

    return runner.run_guarded("Stamping the trigger…", loaded.device, work, failed="Stamping failed",
                              done=lambda _: "Trigger stamped")
