"""The human study of the SPADE paper (section 4), run with real participants.

A participant sees an image, one neuron visualization (of the dense model or of the image's SPADE trace,
blinded) and two patches of the image, and picks the patch that drives the neuron (or "can't decide").
The ground truth is the patch a CAM-type map of the dense model rates highest.

Modules (no Streamlit):

* ``design``: the study's config and data (items with patches and visualizations), patch choice;
* ``create``: ``create_study`` computes the patches and both conditions' visualizations once (torch);
* ``assignment``: per-participant task lists, counterbalanced across participants and seeded;
* ``archive``: a study (and its answers) as one zip file of JSON and PNG images;
* ``storage``: SQLite or PostgreSQL through SQLAlchemy; no answer is lost or duplicated;
* ``results``: the paper's Table 3 with confidence intervals, paired tests and breakdowns.
* ``password``: the researcher password's argon2 hash (``python -m spade_study.password`` makes one);
* ``links``: signed participant tokens, the signing secret, the recruiting platform's ids from a link.

Only ``create`` imports torch; the others stay light (a participant's request or a storage worker process
does not pay for it). Names are re-exported lazily.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ANSWERS": "spade_study.assignment",
    "Answer": "spade_study.assignment",
    "Task": "spade_study.assignment",
    "assign_tasks": "spade_study.assignment",
    "participant_seed": "spade_study.assignment",
    "CONDITIONS": "spade_study.design",
    "Patch": "spade_study.design",
    "Study": "spade_study.design",
    "StudyConfig": "spade_study.design",
    "StudyImage": "spade_study.design",
    "StudyItem": "spade_study.design",
    "VisualizationSettings": "spade_study.design",
    "choose_patches": "spade_study.design",
    "create_study": "spade_study.create",
    "read_archive": "spade_study.archive",
    "write_archive": "spade_study.archive",
    "StudyResults": "spade_study.results",
    "answers_csv": "spade_study.results",
    "answers_json": "spade_study.results",
    "summarize": "spade_study.results",
    "wilson_interval": "spade_study.results",
    "Participant": "spade_study.assignment",
    "PlatformIds": "spade_study.assignment",
    "ParticipantTokens": "spade_study.links",
    "InvalidParticipantLink": "spade_study.links",
    "platform_ids": "spade_study.links",
    "study_secret": "spade_study.links",
    "hash_password": "spade_study.password",
    "verify_password": "spade_study.password",
    "StudyClosedError": "spade_study.storage",
    "StudyExistsError": "spade_study.storage",
    "StudyNotFoundError": "spade_study.storage",
    "StudyStore": "spade_study.storage",
    "StudySummary": "spade_study.storage",
    "database_url": "spade_study.storage",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spade_study' has no attribute {name!r}")
