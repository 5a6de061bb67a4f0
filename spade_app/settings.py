"""The Explore page's settings form: widgets in, one frozen :class:`RunSettings` out.

A form, so moving a slider does not rerun anything until "Run SPADE" is pressed. The last submitted
settings are kept in session state and used as the form's defaults, so they survive page switches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import streamlit as st
from torch import nn

from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.defaults import default_augmentations
from spade.errors import ConfigError, SpadeError
from spade.saliency import METHODS
from spade.solver import SOLVERS, SolverConfig
from spade.sparsity import Sparsity, SparsityProfile, late_blocks_profile, parse_profile
from spade.trace import SpadeTrace
from spade_app.loaders import UPLOAD_MB, profile_label

SETTINGS_KEY = "explore_settings"
REQUEST_KEY = "explore_request"
UNIFORM, LATE, PROFILE, FILE = "Uniform", "Late blocks", "Built-in profile", "Profile JSON file"
SPARSITY_MODES = (UNIFORM, LATE, PROFILE, FILE)
SOLVER_HELP = {
    "group": "the authors' selection groups: every k×k kernel group of a row block loses exactly the target share",
    "row": "each output row loses exactly the target share, chosen adaptively during the sweep",
    "obc": "the paper's exact solver, one weight at a time per row: closer to the model, but minutes on a CPU",
}
SPARSITY_OF_LABELS = {  # spade.solver.SPARSITY_OF, the default first
    "nonzero": "the layer's connections (its zero weights stay zero)",
    "all": "every weight, zeros included (the authors' code)",
}


@dataclass(frozen=True)
class RunSettings:
    """Everything a SPADE run on the Explore page depends on (besides the image and the model)."""

    sparsity: float | SparsityProfile = 0.5
    augment: AugmentConfig = AugmentConfig(count=default_augmentations("explore"))
    solver: SolverConfig = SolverConfig()
    methods: tuple[str, ...] = field(default=())
    keep_decision: bool = True

    @property
    def decision(self) -> KeepDecision:
        """The run's keep-the-decision policy: the default ladder, or (keep_decision off) the chosen sparsity only."""
        return KeepDecision().when(self.keep_decision)


def sparsity_text(sparsity: float | SparsityProfile | Mapping, sparsity_of: str = "nonzero") -> str:
    """A sparsity as the app shows it: "uniform 0.50", or a profile's name in code style (it may come from an
    uploaded file: shown as text), with "of every weight" when the solver counts every weight (sparsity_of
    "all"). sparsity: a setting, or as a trace's settings record it (a number or the profile's JSON)."""
    if isinstance(sparsity, (int, float)):
        text = f"uniform {sparsity:.2f}"
    else:
        name = sparsity.name if isinstance(sparsity, SparsityProfile) else sparsity.get("name", "custom")
        text = "profile `" + name.replace("`", "'") + "`"
    return text + (" of every weight" if sparsity_of == "all" else "")


def trace_sparsity_text(trace: SpadeTrace) -> str:
    """The sparsity a trace was asked for and the one it has, from its settings: "requested X → used Y (kept the
    decision)" when "Keep the model's decision" lowered it (or "(the decision still changed)" when even the
    ladder's last rung did not keep it), else just "X"."""
    settings = trace.settings
    sparsity_of = settings["solver"]["sparsity_of"]
    requested, used = trace.requested_sparsity, settings["sparsity"]
    if requested == used:
        return sparsity_text(used, sparsity_of)
    outcome = "kept the decision" if trace.top1_agrees else "the decision still changed"
    return f"requested {sparsity_text(requested)} → used {sparsity_text(used, sparsity_of)} ({outcome})"


WALKTHROUGH = RunSettings(sparsity=0.5, methods=("gradcam",))
"""Fixed settings of the classroom walkthrough on the "How SPADE works" page."""


def current_settings() -> RunSettings:
    """The last submitted settings (defaults before the first run)."""
    return st.session_state.get(SETTINGS_KEY) or RunSettings()


def keep_decision_checkbox(value: bool, key: str) -> bool:
    return st.checkbox("Keep the model's decision", value, key=key,
                       help="When the trace predicts another class than the dense model, re-solve it at "
                            f"{', '.join(f'{f:g}' for f in KeepDecision().factors)} times the chosen sparsity until it "
                            "predicts the same (the statistics are reused, so this costs solver time only). Off: the "
                            "paper's protocol, every trace at the chosen sparsity.")


def profile_from_upload(name: str, data: bytes) -> SparsityProfile:
    """A profile JSON file's bytes as a profile (named after the file unless it names itself); ConfigError."""
    return parse_profile(data, name)


@dataclass(frozen=True)
class FormValues:
    """The Explore form's widgets as read, before any check. upload: (file name, bytes) of a profile JSON file."""

    mode: str = UNIFORM
    uniform: float = RunSettings.sparsity
    profile: str | None = None
    upload: tuple[str, bytes] | None = None
    keep_decision: bool = RunSettings.keep_decision
    count: int = RunSettings.augment.count
    min_scale: float = AugmentConfig.min_scale
    flip: bool = AugmentConfig.flip
    brightness: float = AugmentConfig.brightness
    hue: float = AugmentConfig.hue
    erasing: float = AugmentConfig.erasing
    seed: int = 0
    solver: str = SolverConfig.mode
    sparsity_of: str = SolverConfig.sparsity_of
    damp: float = SolverConfig.damp
    methods: tuple[str, ...] = ()


def build_settings(values: FormValues, model: nn.Module, profiles: dict[str, SparsityProfile]) -> RunSettings:
    """The run settings the form's values ask for; ConfigError (one sentence for the user) when they do not fit.

    model: the dense model (the "Late blocks" profile is built from its blocks); profiles: the built-in profiles
    offered, by key."""
    uniform = round(float(values.uniform), 4)
    if values.mode == UNIFORM:
        sparsity: float | SparsityProfile = uniform
    elif values.mode == LATE:
        sparsity = late_blocks_profile(model, target=uniform)
    elif values.mode == PROFILE:
        if values.profile not in profiles:
            raise ConfigError("No built-in profile fits this model: choose another sparsity mode or upload a "
                              "profile JSON file.")
        sparsity = profiles[values.profile]
    elif values.mode == FILE:
        if values.upload is None:
            raise ConfigError("Choose a profile JSON file to upload, or pick another sparsity mode.")
        sparsity = profile_from_upload(*values.upload)
    else:
        raise ConfigError(f"Unknown sparsity mode {values.mode!r}; choose one of {', '.join(SPARSITY_MODES)}.")
    return RunSettings(
        sparsity=sparsity,
        augment=AugmentConfig(count=int(values.count), min_scale=float(values.min_scale), flip=bool(values.flip),
                              brightness=float(values.brightness), hue=float(values.hue),
                              erasing=float(values.erasing), seed=int(values.seed)),
        solver=SolverConfig(mode=values.solver, sparsity_of=values.sparsity_of, damp=float(values.damp)),
        methods=tuple(values.methods),
        keep_decision=bool(values.keep_decision),
    )


def _is_late_blocks(profile: SparsityProfile, model: nn.Module) -> bool:
    """Whether ``profile`` is the "Late blocks" profile of ``model`` at some slider value."""
    return bool(profile.targets) and profile == late_blocks_profile(model, target=profile.targets[0][1])


def _mode_of(sparsity: Sparsity, profiles: dict[str, SparsityProfile], model: nn.Module) -> str:
    """The form's sparsity mode that produced ``sparsity`` (a profile that fits no longer: the file mode)."""
    if not isinstance(sparsity, SparsityProfile):
        return UNIFORM
    if _is_late_blocks(sparsity, model):
        return LATE
    return PROFILE if sparsity in profiles.values() else FILE


def settings_form(model: nn.Module, method_labels: dict[str, str], default_methods: tuple[str, ...] = (),
                  default_sparsity: float = 0.5, profiles: dict[str, SparsityProfile] | None = None,
                  default_profile: str | None = None) -> RunSettings | None:
    """Draw the form. Returns new settings when "Run SPADE" was pressed, else None (errors shown).

    model: the dense model (the "Late blocks" profile is built from its block structure).
    default_sparsity: the slider's value before the first run (the model spec's recommended uniform target).
    profiles: {key: profile} offered as built-in profiles, those that fit the model (loaders.available_profiles);
    default_profile: the key selected before the first choice (else the first).
    """
    profiles = profiles or {}
    last = st.session_state.get(SETTINGS_KEY) or RunSettings(sparsity=default_sparsity)
    aug = last.augment
    with st.form("spade_settings"):
        c_sparsity, c_aug, c_solver = st.columns(3)
        with c_sparsity:
            st.markdown("**Sparsity**")
            last_mode = _mode_of(last.sparsity, profiles, model)
            mode = st.radio("Targets", SPARSITY_MODES, index=SPARSITY_MODES.index(last_mode), key="ex_sparsity_mode",
                            horizontal=True,
                            help="Uniform: the slider's value on every pruned layer. Late blocks: the slider's value "
                                 "on the last 30% of blocks and the classifier, 0 elsewhere (the authors' choice "
                                 "for neuron visualizations). Built-in profile / JSON: per-block targets.")
            last_uniform = default_sparsity if isinstance(last.sparsity, SparsityProfile) else float(last.sparsity)
            uniform = st.slider("Sparsity (share of weights removed per layer)", 0.0, 0.99, last_uniform,
                                step=0.01, key="ex_sparsity")
            keys = list(profiles)
            chosen = next((key for key, p in profiles.items() if p == last.sparsity), default_profile)
            index = keys.index(chosen) if chosen in keys else (0 if keys else None)
            profile = st.selectbox("Built-in profile", keys, index=index,
                                   key="ex_profile", disabled=not keys,
                                   format_func=lambda key: profile_label(key, profiles[key]),
                                   placeholder="none fits this model",
                                   help="Profiles shipped with the library whose blocks this model has.\n\n"
                                        + "\n\n".join(f"**{profile_label(k, p)}**: {p.description}"
                                                        for k, p in profiles.items()))
            upload = st.file_uploader("Profile JSON ({\"targets\": {block: sparsity}, \"default\": 0})",
                                      type=["json"], key="ex_profile_file", max_upload_size=UPLOAD_MB["profile"])
            keep = keep_decision_checkbox(last.keep_decision, key="ex_keep")
        with c_aug:
            st.markdown("**Augmentations**")
            count = st.number_input("Count", 1, 4096, aug.count, step=8, key="ex_count",
                                    help="More views: a more faithful trace, but slower (128 is a good CPU value).")
            min_scale = st.slider("Minimum crop scale", 0.05, 1.0, aug.min_scale, step=0.05, key="ex_min_scale")
            flip = st.checkbox("Random horizontal flip", aug.flip, key="ex_flip")
            brightness = st.slider("Brightness jitter", 0.0, 1.0, aug.brightness, step=0.05, key="ex_brightness")
            hue = st.slider("Hue jitter", 0.0, 0.5, aug.hue, step=0.05, key="ex_hue")
            erasing = st.slider("Random erasing probability", 0.0, 1.0, aug.erasing, step=0.05, key="ex_erasing")
            seed = st.number_input("Seed", 0, 2**31 - 1, aug.seed, key="ex_seed")
        with c_solver:
            st.markdown("**Solver and explanations**")
            solver_mode = st.selectbox("Solver mode", list(SOLVERS), index=list(SOLVERS).index(last.solver.mode),
                                       key="ex_solver", format_func=lambda m: f"{m}: {SOLVER_HELP.get(m, '')}")
            sparsity_of = st.selectbox(
                "A sparsity counts", list(SPARSITY_OF_LABELS),
                index=list(SPARSITY_OF_LABELS).index(last.solver.sparsity_of), key="ex_sparsity_of",
                format_func=SPARSITY_OF_LABELS.get,
                help="Counting connections keeps the trace a sub-network of the model and prunes a layer with "
                     "built-in zeros (the back-doored demo model's block-diagonal layers) as much as any other. "
                     "The two agree on layers without zeros.")
            damp = st.number_input(
                "Hessian damping", min_value=0.0, max_value=1000.0, value=float(last.solver.damp), step=0.01,
                format="%g", key="ex_damp",
                help="Added to the diagonal of each layer's Hessian, as a fraction of its mean. 0.01 (OBC's and "
                     "SparseGPT's default) reconstructs each layer most closely; larger values prune more by weight "
                     "magnitude and compensate less.")
            methods = st.multiselect("Saliency methods", list(method_labels),
                                     default=[m for m in (last.methods or default_methods) if m in method_labels],
                                     format_func=lambda m: method_labels[m], key="ex_methods",
                                     disabled=not method_labels,
                                     placeholder="none" if method_labels else "saliency methods are not available yet")
            st.caption("The device is chosen in the sidebar.")
        submitted = st.form_submit_button("Run SPADE", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return None
    values = FormValues(mode=mode, uniform=uniform, profile=profile,
                        upload=(upload.name, upload.getvalue()) if upload is not None else None, keep_decision=keep,
                        count=count, min_scale=min_scale, flip=flip, brightness=brightness, hue=hue, erasing=erasing,
                        seed=seed, solver=solver_mode, sparsity_of=sparsity_of, damp=damp, methods=tuple(methods))
    try:
        settings = build_settings(values, model, profiles)
    except SpadeError as exc:
        st.error(str(exc))
        return None
    st.session_state[SETTINGS_KEY] = settings
    return settings


def method_labels() -> dict[str, str]:
    """{registry name: label} of the library's saliency methods (spade.saliency.METHODS)."""
    return {name: method.label for name, method in METHODS.items()}


def default_methods() -> tuple[str, ...]:
    available = method_labels()
    return tuple(m for m in ("saliency", "gradcam") if m in available)


def settings_for_scope(scope: tuple, submitted, key: str = REQUEST_KEY):
    """The settings to show results for: just submitted, or the last ones run in this same ``scope`` (the
    image and model keys; results survive reruns). ``key`` names the page's slot in the session state."""
    if submitted is not None:
        st.session_state[key] = (scope, submitted)
        return submitted
    request = st.session_state.get(key)
    if request is not None and request[0] == scope:
        return request[1]
    return None
