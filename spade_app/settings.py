"""The Explore page's settings form: widgets in, one frozen :class:`RunSettings` out.

A form, so moving a slider does not rerun anything until "Run SPADE" is pressed. The last submitted
settings are kept in session state and used as the form's defaults, so they survive page switches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import streamlit as st
from torch import nn

from spade.augment import AugmentConfig
from spade.decision import KeepDecision
from spade.defaults import default_augmentations
from spade.errors import ConfigError, SpadeError
from spade.layer_pool import cpu_workers
from spade.layers import LayerSelection
from spade.obc_cost import in_words, layer_work, side_by_side_seconds
from spade.saliency import METHODS
from spade.solver import SOLVERS, SolverConfig
from spade.sparsity import Sparsity, SparsityProfile, late_blocks_profile, parse_profile
from spade.trace import SpadeTrace
from spade_app.loaders import UPLOAD_MB, profile_label

SETTINGS_KEY = "explore_settings"
REQUEST_KEY = "explore_request"
UNIFORM, LATE, PROFILE, FILE = "Uniform", "Late blocks", "Built-in profile", "Profile JSON file"
SPARSITY_MODES = (UNIFORM, LATE, PROFILE, FILE)
SOLVER_LABELS = {  # spade.solver.SOLVERS: the short menu entry of each
    "group": "group: fast (the authors' choice)",
    "row": "row: fast, the same share per row",
    "obc": "obc: exact, slower (see the estimate)",
}
SOLVER_HELP = {
    "group": "removes weights in small groups (every k×k kernel group of a row block loses exactly the target "
             "share), as the SPADE authors' code does",
    "row": "every output row of a layer loses exactly the target share, chosen while the solver sweeps the row",
    "obc": "the paper's exact solver, one weight at a time per row: closest to the model, but slower (the "
           "estimate under this menu)",
}
SPARSITY_OF_LABELS = {  # spade.solver.SPARSITY_OF, the default first
    "nonzero": "connections (zero weights stay zero)",
    "all": "every weight (the authors' code)",
}
DAMP_HELP = ("SPADE rebuilds each pruned layer so that its outputs on the augmented views stay as close as possible "
             "to the dense layer's. Damping is a small amount added to the statistics of that fit (the diagonal of "
             "the layer's Hessian, as a fraction of its mean) to keep it stable. 0.01 (the default of OBC and "
             "SparseGPT) rebuilds each layer most closely; larger values choose the removed weights more by their "
             "size and correct the remaining weights less.")
REFIT_HELP = ("Each pruned layer is rebuilt from what the dense model's layers see, so small errors add up on their "
              "way through the network; on a photo whose top two classes nearly tie they change the predicted "
              "class. With this on, the last layer's remaining weights are fitted once more, on the trace's own "
              "features, to give the dense model's class scores on this image and its augmented views. Every other "
              "layer stays as solved. Not the paper's protocol, and off by default: on 100 test crops it kept every "
              "decision at sparsity 0.5, but the saliency maps scored worse on insertion and deletion (insertion "
              "AUC lower by 0.5-0.75 points on those crops, by 2.1 on 24 calibration crops), and on the "
              "back-doored model it undid SPADE's gain in Trojan AUC.")
SPARSITY_OF_HELP = ("What the share of removed weights is a share of. Connections: only the weights that are not "
                    "already zero, so the trace stays a sub-network of the model and a layer with built-in zeros "
                    "(the back-doored demo model's block-diagonal layers) is pruned as much as any other. Every "
                    "weight: zeros included, as in the authors' code. Both count the same on layers without zeros.")


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


_SCALED = re.compile(r"^(?P<name>.*) x(?P<factor>[0-9.]+)$")
_NAMED = {"late blocks": re.compile(r"^late-blocks-(?P<target>[0-9.]+)$"),
          "classifier only": re.compile(r"^classifier-(?P<target>[0-9.]+)$")}
"""The profiles the app builds, in words, by the pattern of their names (`spade.sparsity.late_blocks_profile`,
`spade.sparsity.classifier_profile`)."""


def _profile_words(name: str, origin: bool = True) -> str:
    """A profile's name in words: "late blocks at 0.95" for the "Late blocks" profile (and "classifier only at 0.95"
    for the classifier-only one), "late blocks at 0.50 (backed off from 0.95)" for it scaled down by "Keep the
    model's decision" (its name then ends in " x<factor>"), "profile `name` at 0.53 × its targets" for another
    scaled profile, else "profile `name`" (code style: it may come from an uploaded file)."""
    scaled = _SCALED.match(name)
    base, factor = (scaled["name"], float(scaled["factor"])) if scaled else (name, None)
    for words, pattern in _NAMED.items():
        named = pattern.match(base)
        if named:
            target = float(named["target"])
            if factor is None:
                return f"{words} at {target:.2f}"
            return f"{words} at {target * factor:.2f}" + (f" (backed off from {target:.2f})" if origin else "")
    text = "profile `" + base.replace("`", "'") + "`"
    return text if factor is None else f"{text} at {factor:.2f} × its targets"


def sparsity_text(sparsity: float | SparsityProfile | Mapping, sparsity_of: str = "nonzero", origin: bool = True
                  ) -> str:
    """A sparsity as the app shows it: "uniform 0.50", or a profile in words (see :func:`_profile_words`), with
    "of every weight" when the solver counts every weight (sparsity_of "all"). sparsity: a setting, or as a
    trace's settings record it (a number or the profile's JSON). origin: name the sparsity a backed-off "Late
    blocks" profile came from (off where the requested sparsity is shown beside it)."""
    if isinstance(sparsity, (int, float)):
        text = f"uniform {sparsity:.2f}"
    else:
        name = sparsity.name if isinstance(sparsity, SparsityProfile) else sparsity.get("name", "custom")
        text = _profile_words(name, origin)
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
    return (f"requested {sparsity_text(requested)} → used {sparsity_text(used, sparsity_of, origin=False)} "
            f"({outcome})")


def closeness_reason(trace: SpadeTrace) -> str:
    """Why a trace's maps can be nearly the dense model's, in words: the sparsity was backed off to keep the
    decision, or it is low, or the trace reproduces the dense model closely on this image (logit cosine >= 0.9),
    else that the pruning hardly moved this method's map."""
    settings = trace.settings
    requested, used = trace.requested_sparsity, settings["sparsity"]
    if requested != used:
        return (f"the sparsity was backed off from {sparsity_text(requested)} to "
                f"{sparsity_text(used, origin=False)} to keep the decision, and that little pruning leaves the "
                "trace close to the dense model")
    if isinstance(used, (int, float)) and used < 0.6:
        return (f"at {sparsity_text(used)} the trace stays close to the dense model; a higher sparsity "
                "prunes more and can change more")
    if trace.logit_cosine >= 0.9:
        return (f"the trace reproduces the dense model closely on this image (logit cosine similarity "
                f"{trace.logit_cosine:.2f})")
    return "the pruning changed what the model computes, but hardly where this method's map points"


WALKTHROUGH = RunSettings(sparsity=0.5, methods=("gradcam",))
"""Fixed settings of the classroom walkthrough on the "How SPADE works" page (which uses the model's default solver)."""


def current_settings() -> RunSettings:
    """The last submitted settings (defaults before the first run)."""
    return st.session_state.get(SETTINGS_KEY) or RunSettings()


def keep_decision_checkbox(value: bool, key: str) -> bool:
    return st.checkbox("Keep the model's decision", value, key=key,
                       help="When the trace predicts another class than the dense model, re-solve it at "
                            f"{', '.join(f'{f:g}' for f in KeepDecision().factors)} times the chosen sparsity until it "
                            "predicts the same (the statistics are reused, so this costs solver time only). Off: the "
                            "paper's protocol, every trace at the chosen sparsity.")


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
    refit_output: bool = SolverConfig.refit_output
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
        if not profiles:
            raise ConfigError("No built-in profile fits this model: choose another sparsity mode or upload a "
                              "profile JSON file.")
        if values.profile not in profiles:
            raise ConfigError("Choose a built-in profile from the menu (profiles tuned for another model are "
                              "marked), or pick another sparsity mode.")
        sparsity = profiles[values.profile]
    elif values.mode == FILE:
        if values.upload is None:
            raise ConfigError("Choose a profile JSON file to upload, or pick another sparsity mode.")
        name, data = values.upload
        sparsity = parse_profile(data, name)  # named after the file unless it names itself
    else:
        raise ConfigError(f"Unknown sparsity mode {values.mode!r}; choose one of {', '.join(SPARSITY_MODES)}.")
    return RunSettings(
        sparsity=sparsity,
        augment=AugmentConfig(count=int(values.count), min_scale=float(values.min_scale), flip=bool(values.flip),
                              brightness=float(values.brightness), hue=float(values.hue),
                              erasing=float(values.erasing), seed=int(values.seed)),
        solver=SolverConfig(mode=values.solver, sparsity_of=values.sparsity_of, damp=float(values.damp),
                            refit_output=bool(values.refit_output)),
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


def made_for(key: str) -> str | None:
    """The registered model a profile was made for, read from its key: a file named after the model
    (``<model>.json``, ``<model>_<method>.json``) or a built-in profile named so (``resnet50_saliency``); the
    longest such model name, None when the key names none."""
    from spade.models import MODELS

    names = [name for name in MODELS if key == name or key.startswith(name + "_")]
    return max(names, key=len) if names else None


def profile_choices(profiles: dict[str, SparsityProfile], model_name: str, default: str | None
                    ) -> tuple[list[str], int | None]:
    """(the keys of ``profiles`` in menu order, the index selected first): the profiles made for ``model_name``
    first, then those made for no model in particular, then the other models' (they fit the blocks but were tuned
    on another model). The first selection is ``default`` when given, else the first profile made for this model
    or for no model in particular, else none (the user must choose, so a profile tuned for another model is never
    taken without a look)."""
    mine = [k for k in profiles if made_for(k) == model_name]
    own = mine + [k for k in profiles if made_for(k) is None]
    keys = own + [k for k in profiles if k not in own]
    chosen = default if default in keys else next(iter(own), None)
    return keys, (keys.index(chosen) if chosen is not None else None)


def profile_menu_label(key: str, profile: SparsityProfile, model_name: str) -> str:
    """A menu entry: the profile's label (loaders.profile_label), with "tuned for <model>" when it was made for
    another model than ``model_name``."""
    origin = made_for(key)
    label = profile_label(key, profile)
    return label if origin in (None, model_name) else f"{label} · tuned for {origin}"


def mode_radio(model: nn.Module, profiles: dict[str, SparsityProfile], default: Sparsity) -> str:
    """The sparsity mode, chosen outside the form so that the form shows only the controls of that mode."""
    last = st.session_state.get(SETTINGS_KEY)
    mode = _mode_of(last.sparsity if last is not None else default, profiles, model)
    return st.radio("Sparsity targets", SPARSITY_MODES, index=SPARSITY_MODES.index(mode), key="ex_sparsity_mode",
                    horizontal=True,
                    help="Uniform: one share of weights removed on every pruned layer. Late blocks: that share on "
                         "the last 30% of blocks and the classifier only, nothing elsewhere (the authors' choice "
                         "for neuron visualizations). Built-in profile / Profile JSON file: a share per block, from "
                         "a profile shipped with the app or from your own file.")


def advanced_solver(last: SolverConfig, default_solver: str, exact_estimate: str | None = None
                    ) -> tuple[str, str, float]:
    """(solver mode, what a sparsity counts, damping) in an "Advanced" expander with plain help texts; the solver
    menu starts at ``default_solver`` (the model's) and goes back to it when the model's default changes.
    exact_estimate: the exact solver's time and the settings it assumes, in words (`exact_solver_estimate`), shown
    under the menu."""
    if st.session_state.get("ex_solver_default") != default_solver:  # first draw or another model
        st.session_state["ex_solver_default"] = st.session_state["ex_solver"] = default_solver
    with st.expander("Advanced: solver", expanded=False):
        st.caption(f"The solver starts at this model's default, {default_solver}; the damping is the SPADE "
                   "paper's. Change them to compare solvers.")
        c_mode, c_count, c_damp = st.columns([2, 2, 1])
        solver_mode = c_mode.selectbox(
            "Solver", list(SOLVERS), key="ex_solver",
            format_func=lambda m: SOLVER_LABELS.get(m, m),
            help="How each layer chooses the weights it removes and corrects the others.\n\n"
                 + "\n\n".join(f"**{m}**: {SOLVER_HELP.get(m, '')}" for m in SOLVERS))
        if exact_estimate is not None:
            c_mode.caption(f"obc on this model: {exact_estimate} (estimated from the layer sizes; longer while other "
                           "work shares the processor).")
        sparsity_of = c_count.selectbox("Share of removed weights counts", list(SPARSITY_OF_LABELS),
                                        index=list(SPARSITY_OF_LABELS).index(last.sparsity_of),
                                        key="ex_sparsity_of", format_func=SPARSITY_OF_LABELS.get,
                                        help=SPARSITY_OF_HELP)
        damp = c_damp.number_input("Damping", min_value=0.0, max_value=1000.0, value=float(last.damp), step=0.01,
                                   format="%g", key="ex_damp", help=DAMP_HELP)
    return solver_mode, sparsity_of, damp


def exact_solver_estimate(model: nn.Module, sparsity: Sparsity, views: int, selection: LayerSelection,
                          device: str) -> str | None:
    """The exact solver's solve time on a CPU (`spade.obc_cost`) and the settings it assumes, in words ("about 70 s
    per run at share 0.50 with 64 views"); None on another device (the constants were measured on a CPU) or for a
    profile that does not fit the model."""
    if str(device).partition(":")[0] != "cpu":
        return None
    try:
        works = layer_work(model, sparsity, views, selection).values()
        seconds = side_by_side_seconds(works, cpu_workers())
    except SpadeError:
        return None
    share = f"share {float(sparsity):.2f}" if isinstance(sparsity, (int, float)) else "these targets"
    return f"{in_words(seconds)} per run at {share} with {views} views"


def settings_form(model: nn.Module, method_labels: dict[str, str], default_methods: tuple[str, ...] = (),
                  default_sparsity: float = 0.5, profiles: dict[str, SparsityProfile] | None = None,
                  default_profile: str | None = None, model_name: str = "", default_solver: str = "group",
                  selection: LayerSelection = LayerSelection(), device: str = "cpu") -> RunSettings | None:
    """Draw the sparsity mode and the form. Returns new settings when "Run SPADE" was pressed, else None (errors
    shown). Only the controls of the chosen sparsity mode are shown (the slider for Uniform / Late blocks, the
    profile menu for a built-in profile, the uploader for a profile file); the solver's settings sit in an
    "Advanced" expander.

    model: the dense model (the "Late blocks" profile is built from its block structure).
    default_sparsity: the slider's value before the first run (the model spec's recommended uniform target).
    profiles: {key: profile} offered as built-in profiles, those that fit the model (loaders.available_profiles);
    default_profile: the key selected before the first choice (else see :func:`profile_choices`).
    model_name: the model's registry name (profiles tuned for it come first).
    default_solver: the solver selected before the first run and whenever the model changes (the model spec's).
    selection, device: the model's target layers and where it runs, for the exact solver's time estimate.
    """
    profiles = profiles or {}
    last = st.session_state.get(SETTINGS_KEY) or RunSettings(sparsity=default_sparsity,
                                                             solver=SolverConfig(mode=default_solver))
    aug = last.augment
    mode = mode_radio(model, profiles, last.sparsity)
    uniform, profile, upload = (default_sparsity if isinstance(last.sparsity, SparsityProfile)
                                else float(last.sparsity)), None, None
    with st.form("spade_settings"):
        c_sparsity, c_aug, c_methods = st.columns(3)
        with c_sparsity:
            st.markdown("**Sparsity**")
            if mode in (UNIFORM, LATE):
                label = "Share of weights removed per layer" if mode == UNIFORM else "Share removed in the late blocks"
                uniform = st.slider(label, 0.0, 0.99, uniform, step=0.01, key="ex_sparsity",
                                    help="0: the dense model; 0.9: nine in ten weights of each pruned layer removed.")
            elif mode == PROFILE:
                keys, index = profile_choices(profiles, model_name, default_profile)
                chosen = next((key for key, p in profiles.items() if p == last.sparsity), None)
                index = keys.index(chosen) if chosen in keys else index
                profile = st.selectbox("Built-in profile", keys, index=index, key="ex_profile", disabled=not keys,
                                       format_func=lambda key: profile_menu_label(key, profiles[key], model_name),
                                       placeholder="choose a profile" if keys else "none fits this model",
                                       help="Profiles shipped with the app whose blocks this model has; those "
                                            "tuned for another model are marked.\n\n"
                                            + "\n\n".join(f"**{profile_label(k, p)}**: {p.description}"
                                                            for k, p in profiles.items()))
            else:
                upload = st.file_uploader("Profile JSON file", type=["json"], key="ex_profile_file",
                                          max_upload_size=UPLOAD_MB["profile"],
                                          help='A JSON object such as {"targets": {"blocks.5.0": 0.9}, "default": 0}: '
                                               "the share removed per block, and for every other block.")
            keep = keep_decision_checkbox(last.keep_decision, key="ex_keep")
            refit = st.checkbox("Refit the classifier on the trace", last.solver.refit_output, key="ex_refit",
                                help=REFIT_HELP)
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
        with c_methods:
            st.markdown("**Explanations**")
            methods = st.multiselect("Saliency methods", list(method_labels),
                                     default=[m for m in (last.methods or default_methods) if m in method_labels],
                                     format_func=lambda m: method_labels[m], key="ex_methods",
                                     disabled=not method_labels,
                                     placeholder="none" if method_labels else "saliency methods are not available yet")
            st.caption("The device is chosen in the sidebar.")
        estimate = exact_solver_estimate(model, uniform if mode == UNIFORM else last.sparsity, int(count),
                                         selection, device)
        solver_mode, sparsity_of, damp = advanced_solver(last.solver, default_solver, estimate)
        submitted = st.form_submit_button("Run SPADE", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return None
    values = FormValues(mode=mode, uniform=uniform, profile=profile,
                        upload=(upload.name, upload.getvalue()) if upload is not None else None, keep_decision=keep,
                        count=count, min_scale=min_scale, flip=flip, brightness=brightness, hue=hue, erasing=erasing,
                        seed=seed, solver=solver_mode, sparsity_of=sparsity_of, damp=damp, refit_output=refit,
                        methods=tuple(methods))
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
