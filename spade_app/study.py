"""The Human study page's researcher parts: the study designer, the list of studies (share link, close,
export, import) and the results view. The participant flow is in ``spade_app.study_participant``.

Studies live in the database of ``spade_study.storage`` (settings ``SPADE_STUDY_DB`` / ``SPADE_DATA_DIR``);
this module only arranges widgets around it. pages/human_study.py draws these parts only after the researcher
login (``spade_app.study_access``); their callbacks check it again. Everything a researcher or a study file
wrote (titles, item names, ids, models) goes through ``markdown_text`` before any markdown-rendering element.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import streamlit as st

from spade.defaults import default_augmentations
from spade.errors import SpadeError
from spade.featurevis import CPU_STEPS, DEFAULT_METHOD, DEFAULT_METHOD_REASON, GPU_STEPS, METHOD_LABELS, method_label
from spade.images import bundled_examples
from spade.progress import Progress
from spade.saliency import METHODS
from spade_app import loaders, runner
from spade_app.sidebar import IMAGE_TYPES, Selection
from spade_app.study_access import is_researcher
from spade_app.study_preview import PreviewImage, preview_section
from spade_study.archive import MAX_ARCHIVE_BYTES, StudyArchiveError
from spade_study.create import OVERALL, create_study
from spade_study.design import (
    CONDITIONS,
    DEFAULT_INSTRUCTIONS,
    GROUND_TRUTH,
    GROUND_TRUTH_CHOICES,
    MAX_COMPLETION_CODE_CHARS,
    MAX_PATCH_FRACTION,
    Study,
    StudyConfig,
    StudyImage,
)
from spade_study.design import VisualizationSettings as VisSettings
from spade_study.links import PLATFORM_PARAMS
from spade_study.results import CONDITION_LABELS, answers_csv, answers_json, summarize
from spade_study.storage import StudyExistsError, StudyStore, database_url

PAGE_PATH = "human_study"
"""URL path of the page for researchers (st.navigation derives it from pages/human_study.py)."""
SECTIONS = ("Design a study", "Studies", "Results")
SECTION_KEY = "study_section"
CREATED_KEY = "study_created"
RESULTS_KEY = "study_results_id"


# ----------------------------------------------------------------------------------------------- shared
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&^=\"'])")


def markdown_text(text: object) -> str:
    """``text`` escaped for Streamlit markdown (titles, labels, alerts): every ASCII punctuation character that
    markdown, HTML or Streamlit's own syntax (``:red[..]``, ``$..$``) could interpret gets a backslash, so it is
    shown as typed. Newlines are kept (the caller decides how lines are laid out)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


@st.cache_resource(show_spinner=False)
def _store(url: str) -> StudyStore:
    return StudyStore(url)


def store() -> StudyStore:
    """The study database of the current settings (one store per URL, shared by all sessions)."""
    return _store(database_url())


@st.cache_resource(show_spinner=False, max_entries=16)
def _study(url: str, study_id: str) -> Study:
    return _store(url).load_study(study_id)


def cached_study(study_id: str) -> Study:
    """A study's design (immutable once created; its ``closed`` flag may be stale: ask the store)."""
    return _study(database_url(), study_id)


def prolific_link(link: str) -> str:
    """A participant link with Prolific's placeholders added (Prolific fills them in for each participant)."""
    return link + "".join(f"&{param}={{{{%{param}%}}}}" for param in PLATFORM_PARAMS.values())


def participant_link(page_url: str | None, study_id: str) -> str:
    """The participant link of a study: the app's root URL (any base path kept) with ``?study=<id>``, where
    app.py makes the study page the only page. page_url: this page's URL (``st.context.url``: without the query;
    None outside a browser session, e.g. AppTest, which gives a link relative to the server's root)."""
    root = (page_url or "").rstrip("/").removesuffix(f"/{PAGE_PATH}")
    return f"{root}/?{urlencode({'study': study_id})}"


def share_link(study_id: str) -> str:
    """The participant link of a study, as seen from the browser showing this page."""
    return participant_link(st.context.url, study_id)


def condition_label(condition: str) -> str:
    return CONDITION_LABELS.get(condition, condition)


def ground_truth_label(method: str) -> str:
    """Display name of a study's ground-truth map (its registry name when unknown, e.g. from an imported file)."""
    return METHODS[method].label if method in METHODS else method


# ----------------------------------------------------------------------------------------------- designer
def _images(sel: Selection, names: list[str], uploads, training: list[str]) -> list[tuple[str, str, object, bool]]:
    """(label, content key, PIL image, training) of the chosen bundled photos and uploads; bad uploads are
    reported and skipped."""
    chosen = []
    for name, is_training in [(n, False) for n in names] + [(n, True) for n in training]:
        data = loaders.bundled_bytes(name)
        key = loaders.digest(data)
        chosen.append((name, key, loaders.image_from_bytes(key, data), is_training))
    for upload in uploads or []:
        data = upload.getvalue()
        key = loaders.digest(data)
        try:
            image = loaders.image_from_bytes(key, data)
        except SpadeError as exc:
            st.error(f"{upload.name}: {exc}")
            continue
        chosen.append((upload.name, key, image, False))
    seen: dict[str, int] = {}
    unique = []
    for label, key, image, is_training in chosen:
        seen[label] = seen.get(label, 0) + 1
        suffix = " (training)" if is_training else ""
        unique.append((label + suffix + (f" ({seen[label]})" if seen[label] > 1 else ""), key, image, is_training))
    return unique


def _neuron_choices(sel: Selection, images) -> dict[str, int]:
    """One class selectbox per image, defaulting to the dense model's prediction."""
    loaded = sel.loaded
    n_classes = len(loaded.class_names)
    neurons = {}
    with st.expander("Neuron per image (default: the predicted class)", expanded=False):
        cols = st.columns(3)
        for i, (label, key, image, _) in enumerate(images):
            predicted = loaders.top_k(sel.model_key, key, loaded, image, k=1)[0][0]
            with cols[i % 3]:
                st.image(loaders.thumb(key, image, 160), width=120)
                neurons[label] = st.selectbox(
                    markdown_text(label), range(n_classes), index=predicted, key=f"sd_neuron_{sel.model_key}_{key}",
                    format_func=lambda c, p=predicted: f"{loaded.class_name(c)} ({c})" + (" · predicted" if c == p
                                                                                          else ""))
    return neurons


def designer(sel: Selection) -> None:
    """The researcher's form: images, neurons, conditions, tasks, instructions; "Create study" computes the
    patches and visualizations once (with progress) and stores the study."""
    if not sel.ready:
        st.info("Choose a valid model in the sidebar to design a study.")
        return
    st.caption(f"Model: **{sel.model_label}** on {sel.loaded.device} (choose it in the sidebar).")
    examples = list(bundled_examples())
    names = st.multiselect("Images for the tasks", examples, default=examples[:4], key="sd_images")
    uploads = st.file_uploader("Add your own images", type=IMAGE_TYPES, accept_multiple_files=True,
                               key="sd_uploads", max_upload_size=loaders.UPLOAD_MB["image"])
    training = st.multiselect("Training images (practice tasks with feedback, not analysed)", examples,
                              default=examples[-2:], key="sd_training",
                              help="One practice task per training image: a participant never sees a practice "
                                   "photo twice (the second time they would know the answer).")
    shared = [n for n in training if n in names]
    if shared:
        st.warning(f"Used for practice and for real tasks: {markdown_text(', '.join(shared))}. A participant would "
                   "see the expected answer in practice; choose different images.")
    images = _images(sel, names, uploads, [n for n in training if n not in shared])  # one widget per photo
    real_count = sum(1 for *_, t in images if not t)
    neurons = _neuron_choices(sel, images) if images else {}

    # full width: in a third of the page the second condition's name was cut off
    conditions = st.multiselect("Conditions", list(CONDITIONS), default=list(CONDITIONS), key="sd_conditions",
                                format_func=condition_label)
    c1, c2, c3 = st.columns(3)
    title = c1.text_input("Title", "Which patch drives the neuron?", key="sd_title")
    # the key follows the number of images, so a shrinking maximum never conflicts with a kept value
    tasks = c2.number_input("Tasks per participant", 1, max(real_count, 1), max(real_count, 1),
                            key=f"sd_tasks_{real_count}",
                            help="Each participant sees each image at most once, under one condition; conditions "
                                 "and patch sides are counterbalanced across participants.")
    # at most one practice task per training image; the key follows their number (as for the tasks)
    n_training = c2.number_input("Training tasks", 0, len(training), len(training),
                                 key=f"sd_training_tasks_{len(training)}",
                                 help="Practice tasks with feedback, shown first; at most one per training image.")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="sd_seed",
                           help="Seeds the task assignment, the SPADE augmentations and the visualizations.")
    instructions = st.text_area("Instructions for the participants", DEFAULT_INSTRUCTIONS, height=180,
                                key="sd_instructions", help="Shown as plain text (no formatting); a blank line "
                                                            "starts a new paragraph.")
    with st.expander("Participant platform (Prolific): completion code and URL", expanded=False):
        st.caption("Participants who come from a recruiting platform return there at the end. The end screen shows "
                   "the completion code and a button to the completion URL (either may stay empty). The ids "
                   f"Prolific adds to the link ({', '.join(PLATFORM_PARAMS.values())}) are stored with the answers "
                   "and appear in the exports.")
        completion_code = st.text_input("Completion code", "", max_chars=MAX_COMPLETION_CODE_CHARS,
                                        key="sd_completion_code", placeholder="e.g. C1A2B3C4")
        completion_url = st.text_input("Completion URL", "", key="sd_completion_url",
                                       placeholder="https://app.prolific.com/submissions/complete?cc=C1A2B3C4")
    gpu = sel.loaded.device.type != "cpu"
    with st.expander("Visualizations and patches", expanded=False):
        v1, v2, v3 = st.columns(3)
        steps = v1.number_input("Visualization steps", 1, 4096, GPU_STEPS if gpu else CPU_STEPS, step=16,
                                key="sd_steps")
        augmentations = v2.number_input("SPADE augmentations", 1, 4096,
                                        default_augmentations("visualize", sel.loaded.device), step=8,
                                        key="sd_augmentations")
        fraction = v3.slider("Patch side (share of the image side)", 0.1, round(MAX_PATCH_FRACTION, 2), 0.3,
                             step=0.01, key="sd_patch")
        m1, m2 = st.columns(2)
        methods = list(METHOD_LABELS)
        method = m1.selectbox("Visualization method", methods, index=methods.index(DEFAULT_METHOD),
                              format_func=method_label, key="sd_method")
        m1.caption(DEFAULT_METHOD_REASON)
        truths = list(GROUND_TRUTH_CHOICES)
        ground_truth = m2.selectbox("Ground truth (map on the dense model)", truths,
                                    index=truths.index(GROUND_TRUTH), format_func=lambda m: METHODS[m].label,
                                    key="sd_ground_truth")
        m2.caption("The patch this map rates highest is the expected answer. Score-CAM is the paper's choice: "
                   "it weights each channel by how much it raises the class's score (forward passes only).")
    vis = VisSettings(steps=int(steps), augmentations=int(augmentations), seed=int(seed), method=method)
    default_steps = GPU_STEPS if gpu else CPU_STEPS
    previews = [PreviewImage(f"{markdown_text(label)} · {markdown_text(sel.loaded.class_name(neurons[label]))}", key,
                             image, neurons[label]) for label, key, image, _ in images]
    preview_section(sel, previews, tuple(conditions), vis, default_steps)
    if st.button("Create study", type="primary", icon=":material/add_circle:", key="sd_create"):
        if not is_researcher():
            return
        if shared:
            st.error("Choose training images that are not also used for the real tasks.")
            return
        try:
            config = StudyConfig(title=title, conditions=tuple(c for c in CONDITIONS if c in conditions),
                                 tasks_per_participant=int(tasks), training_tasks=int(n_training),
                                 instructions=instructions, seed=int(seed), patch_fraction=float(fraction),
                                 ground_truth=ground_truth, visualization=vis,
                                 completion_code=completion_code, completion_url=completion_url)
        except SpadeError as exc:
            st.error(markdown_text(exc))
            return
        study_images = [StudyImage(label, image, neurons.get(label), is_training)
                        for label, _, image, is_training in images]
        study = _create(sel, study_images, config)
        if study is not None:
            st.session_state[CREATED_KEY] = study.id
    created = st.session_state.get(CREATED_KEY)
    if created:
        st.success(f"Study **{markdown_text(created)}** is ready. Send this link to the participants:",
                   icon=":material/link:")
        st.code(share_link(created), language=None)
        st.caption("On Prolific, use this form of the link (Prolific fills in the placeholders):")
        st.code(prolific_link(share_link(created)), language=None)


def _creation_progress():
    overall = st.progress(0.0, text="Images done: 0%")
    current = st.empty()

    def draw(stage: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if stage == OVERALL:
            overall.progress(fraction, text=f"Images done: {fraction:.0%}")
        else:
            current.progress(fraction, text=f"{stage}: {fraction:.0%}")

    return draw


def _create(sel: Selection, images: list[StudyImage], config: StudyConfig) -> Study | None:
    loaded = sel.loaded

    def work(draw: Progress) -> Study:
        return create_study(loaded.model, images, config, preprocessing=loaded.preprocessing,
                            class_names=loaded.class_names, cam_layer=loaded.spec.last_conv_stage,
                            selection=loaded.spec.layer_selection,
                            solver=loaded.spec.solver, model_name=sel.model_label,
                            progress=draw)

    def done(study: Study) -> str:
        store().save_study(study)
        lost = [item.name for item in study.items if item.details.get("trace_top1_agrees") is False]
        if lost:
            st.warning(f"The SPADE trace changed the model's decision on: {markdown_text(', '.join(lost))}.")
        return f"Study {study.id} created: {len(study.items)} images"

    return runner.run_guarded("Creating the study…", loaded.device, work, failed="Creating the study failed",
                              done=done, progress=_creation_progress)


# ----------------------------------------------------------------------------------------------- studies
def _set_closed(study_id: str, closed: bool) -> None:
    if is_researcher():
        store().set_closed(study_id, closed)


def _show_results(study_id: str) -> None:
    st.session_state[RESULTS_KEY] = study_id
    st.session_state[SECTION_KEY] = SECTIONS[2]


def studies_section() -> None:
    """Every study of the database: share link, close/reopen, export; and the import of a study file."""
    db = store()
    st.caption(f"Database: `{db.display_url}`")
    summaries = db.list_studies()
    if not summaries:
        st.info("No study yet: create one in the designer, or import a study file below.")
    for s in summaries:
        with st.container(border=True):
            state = "closed" if s.closed else "open"
            st.markdown(f"**{markdown_text(s.title)}** · id {markdown_text(s.id)} · {state} · participants: "
                        f"{s.participants} (answered at least once; {s.registered} pressed Start) · answers: "
                        f"{s.answers} · model {markdown_text(s.model or '?')} · created {s.created:%Y-%m-%d %H:%M} UTC")
            st.code(share_link(s.id), language=None)
            c1, c2, c3 = st.columns(3)
            if s.closed:
                c1.button("Reopen", key=f"reopen_{s.id}", on_click=_set_closed, args=(s.id, False),
                          icon=":material/lock_open:")
            else:
                c1.button("Close", key=f"close_{s.id}", on_click=_set_closed, args=(s.id, True),
                          icon=":material/lock:", help="A closed study accepts no new participants or answers.")
            c2.download_button("Export (.zip)", data=lambda sid=s.id: db.export_study(sid),
                               file_name=f"study_{s.id}.zip", mime="application/zip", key=f"export_{s.id}",
                               icon=":material/download:", on_click="ignore")
            c3.button("Results", key=f"results_{s.id}", on_click=_show_results, args=(s.id,),
                      icon=":material/analytics:")
    st.markdown("##### Import a study file")
    upload = st.file_uploader("Study file (.zip, from Export)", type=["zip"], key="sd_import",
                              max_upload_size=MAX_ARCHIVE_BYTES // 2**20)
    if upload is not None and st.button("Import", key="sd_import_button", icon=":material/upload:"):
        if not is_researcher():
            return
        try:
            study = db.import_study(upload.getvalue())
        except (StudyArchiveError, StudyExistsError) as exc:
            st.error(markdown_text(exc))
        else:
            st.success(f"Imported study {markdown_text(study.id)} ({markdown_text(study.config.title)}).")
            st.rerun()


# ----------------------------------------------------------------------------------------------- results
_PERCENT_KEYS = {"agree_share": "agree %", "agree_when_decided": "agree when decided %"}


def display_rows(rows) -> list[dict]:
    """Breakdown rows (``StudyResults.by_participant`` / ``by_image``) for a table: shares as percentages, the
    median time in seconds, conditions by their label, and "–" instead of an empty cell (never "None")."""
    shown = []
    for row in rows:
        out = {}
        for key, value in row.items():
            if key in _PERCENT_KEYS:
                out[_PERCENT_KEYS[key]] = "–" if value is None else f"{100 * value:.1f}"
            elif key == "median_response_ms":
                out["median time (s)"] = "–" if value is None else f"{value / 1000:.1f}"
            elif key == "condition":
                out[key] = condition_label(value)
            else:
                out[key] = "–" if value is None else value
        shown.append(out)
    return shown


def _comparison_rows(results, second: str) -> list[dict]:
    return [{"metric": c.metric.replace("_", " "), "units": c.units, "pairs": c.n_pairs,
             "higher with " + condition_label(second): c.n_better, "lower with " + condition_label(second): c.n_worse,
             "ties": c.n_ties,
             "mean difference (points)": "–" if c.mean_difference is None else f"{100 * c.mean_difference:+.1f}",
             "p": f"{c.p_value:.3g}"} for c in results.comparisons]


def results_section() -> None:
    """Table 3 per condition with 95% intervals, paired comparisons, breakdowns and the raw answers."""
    db = store()
    summaries = db.list_studies()
    if not summaries:
        st.info("No study yet.")
        return
    ids = [s.id for s in summaries]
    titles = {s.id: f"{s.title} ({s.id})" for s in summaries}
    wanted = st.session_state.get(RESULTS_KEY)
    if wanted in ids:
        st.session_state["sd_results_study"] = wanted
        st.session_state.pop(RESULTS_KEY)
    study_id = st.selectbox("Study", ids, format_func=titles.get, key="sd_results_study")
    study = cached_study(study_id)
    answers = db.answers(study_id)
    names = {i: item.name for i, item in enumerate(study.items)}
    results = summarize(answers, study.config.conditions, names)
    m1, m2, m3 = st.columns(3)
    m1.metric("Participants", results.participants)
    m2.metric("Answers (without training)", results.answers)
    m3.metric("Training answers", sum(a.training for a in answers))
    st.markdown("#### Table 3: which patch drives the neuron?")
    st.caption("Per cell: the share of all answers of a condition, in %, with its 95% Wilson interval in brackets "
               "(– where there are no answers yet); *agree*: the participant chose the patch that the dense model's "
               f"{markdown_text(ground_truth_label(study.config.ground_truth))} map rates highest. The counts are in "
               "the Results (JSON) download.")
    st.dataframe(results.table3_compact(), hide_index=True, width="stretch", key="sd_table3")
    if results.comparisons:
        st.markdown("#### Paired comparison")
        first, second = study.config.conditions
        st.caption(f"Exact two-sided sign test of {condition_label(second)} vs {condition_label(first)} over the "
                   "participants (and images) that saw both; ties are dropped.")
        st.dataframe(_comparison_rows(results, second), hide_index=True, width="stretch")
    with st.expander("Per participant"):
        st.dataframe(display_rows(results.by_participant), hide_index=True, width="stretch")
    with st.expander("Per image"):
        st.dataframe(display_rows(results.by_image), hide_index=True, width="stretch")
    summary = {"id": study.id, "title": study.config.title, "model": study.model,
               "conditions": list(study.config.conditions)}
    d1, d2, d3 = st.columns(3)
    d1.download_button("Raw answers (CSV)", answers_csv(answers, names), file_name=f"answers_{study.id}.csv",
                       mime="text/csv", icon=":material/table:", on_click="ignore")
    d2.download_button("Raw answers (JSON)", answers_json(answers, names, summary),
                       file_name=f"answers_{study.id}.json", mime="application/json", icon=":material/data_object:",
                       on_click="ignore")
    d3.download_button("Results (JSON)", json.dumps({"study": summary, **results.to_dict()}, indent=1),
                       file_name=f"results_{study.id}.json", mime="application/json", icon=":material/analytics:",
                       on_click="ignore")
