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

Only ``create`` imports torch; the others stay light (a participant's request or a storage worker process
does not pay for it). Names are re-exported lazily.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ANSWERS": "spade.study.assignment",
    "Answer": "spade.study.assignment",
    "Task": "spade.study.assignment",
    "assign_tasks": "spade.study.assignment",
    "participant_seed": "spade.study.assignment",
    "CONDITIONS": "spade.study.design",
    "Patch": "spade.study.design",
    "Study": "spade.study.design",
    "StudyConfig": "spade.study.design",
    "StudyImage": "spade.study.design",
    "StudyItem": "spade.study.design",
    "VisualizationSettings": "spade.study.design",
    "choose_patches": "spade.study.design",
    "create_study": "spade.study.create",
    "read_archive": "spade.study.archive",
    "write_archive": "spade.study.archive",
    "StudyResults": "spade.study.results",
    "answers_csv": "spade.study.results",
    "answers_json": "spade.study.results",
    "summarize": "spade.study.results",
    "wilson_interval": "spade.study.results",
    "Participant": "spade.study.storage",
    "StudyClosedError": "spade.study.storage",
    "StudyExistsError": "spade.study.storage",
    "StudyNotFoundError": "spade.study.storage",
    "StudyStore": "spade.study.storage",
    "StudySummary": "spade.study.storage",
    "database_url": "spade.study.storage",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spade.study' has no attribute {name!r}")
