"""Which tasks a participant gets, in which order, with which condition and which patch on which side.

The design (per participant ``number`` n = 0, 1, 2, ... in order of arrival, C conditions):

* Real tasks. The study seed fixes one permutation of the real images. Participant n takes k consecutive
  images of it (k = tasks per participant), starting at ``(n // C) * k`` (mod the number of images), so the
  C participants of one block see the same images. The j-th of them is shown under condition
  ``(j + n) % C``: within a block every image is seen once under every condition (a Latin square), and each
  participant gets every condition k / C times (+-1).
* Patch sides. The ground-truth patch is labelled A for the j-th image when ``j // C + c + n // C`` is even
  (c: the index of its condition), else B. Per participant and per condition the sides alternate, so both
  are balanced (+-1) and independent of the condition (a participant's preference for the left patch cannot
  favour one condition); consecutive blocks swap every (image, condition)'s side.
* The real tasks are then shuffled with the participant's seed, so neither the order of the conditions nor
  the alternation of the sides can be seen. Training tasks (made from the training images, cycling through
  them, conditions and sides alternating) come first, unshuffled.

Everything is a function of (study, number, seed): the same inputs give the same tasks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from spade.errors import ConfigError
from spade_study.design import Study

ANSWERS = ("A", "B", "undecided")
"""What a participant can answer: patch A, patch B, or can't decide."""

TRUTH_FIRST, TRUTH_SECOND = "truth,distractor", "distractor,truth"
"""Patch orders: which patch is shown as A (first) and which as B."""


@dataclass(frozen=True)
class Task:
    """One task of one participant.

    index: position in the participant's list (0-based; training tasks first). item: index into
    ``study.items``. condition: which visualization is shown (never shown to the participant).
    truth_label: "A" or "B", the label under which the ground-truth patch is shown. training: practice task.
    """

    index: int
    item: int
    condition: str
    truth_label: str
    training: bool = False

    @property
    def patch_order(self) -> str:
        return TRUTH_FIRST if self.truth_label == "A" else TRUTH_SECOND


@dataclass(frozen=True)
class PlatformIds:
    """The ids a recruiting platform put into the participant's link (Prolific: ``PROLIFIC_PID``, ``STUDY_ID``,
    ``SESSION_ID``); "" when the link had none."""

    participant: str = ""
    study: str = ""
    session: str = ""


@dataclass(frozen=True)
class Participant:
    """One participant of a study: a random id (signed into the participant's URL), the arrival number that
    places them in the counterbalancing design, their seed, when they started (UTC), and the recruiting
    platform's ids from their link."""

    id: str
    study_id: str
    number: int
    seed: int
    created: datetime
    platform: PlatformIds = PlatformIds()


@dataclass(frozen=True)
class Answer:
    """One stored answer (a row of the answers table, with the participant's number).

    answer: "A", "B" or "undecided". response_ms: from showing the task to the click. answered_at: UTC.
    platform: the participant's recruiting-platform ids.
    """

    study_id: str
    participant_id: str
    participant_number: int
    task_index: int
    item: int
    condition: str
    training: bool
    patch_order: str
    answer: str
    response_ms: int
    answered_at: datetime
    platform: PlatformIds = PlatformIds()

    @property
    def truth_label(self) -> str:
        return "A" if self.patch_order == TRUTH_FIRST else "B"

    @property
    def outcome(self) -> str:
        """"undecided", "agree" (the ground-truth patch was chosen) or "disagree"."""
        if self.answer == "undecided":
            return "undecided"
        return "agree" if self.answer == self.truth_label else "disagree"


def participant_seed(study_seed: int, number: int) -> int:
    """The seed of participant ``number`` of a study, derived from the study seed (stable across runs and
    machines, unlike Python's hash): a non-negative 63-bit integer."""
    digest = hashlib.sha256(f"spade-study:{int(study_seed)}:{int(number)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def assign_tasks(study: Study, number: int, seed: int | None = None) -> tuple[Task, ...]:
    """The task list of participant ``number`` (0-based arrival order) with ``seed`` (default:
    ``participant_seed(study.config.seed, number)``); see the module docstring for the design."""
    if number < 0:
        raise ConfigError(f"Participant numbers start at 0, got {number}.")
    config = study.config
    seed = participant_seed(config.seed, number) if seed is None else int(seed)
    conditions = config.conditions
    n_cond = len(conditions)
    real, training = study.real_items, study.training_items
    if not real:
        raise ConfigError("The study has no images for real tasks.")
    if config.training_tasks and not training:
        raise ConfigError("The study asks for training tasks but has no training images.")

    block = number // n_cond

    def condition_and_side(j: int) -> tuple[str, str]:
        c = (j + number) % n_cond
        return conditions[c], "AB"[(j // n_cond + c + block) % 2]

    tasks: list[Task] = []
    for r in range(config.training_tasks):
        condition, truth = condition_and_side(r)
        tasks.append(Task(index=r, item=training[r % len(training)], condition=condition, truth_label=truth,
                          training=True))

    order = np.random.default_rng(int(config.seed)).permutation(np.asarray(real))
    k = study.tasks_per_participant
    start = (block * k) % len(order)
    real_tasks = [(int(order[(start + j) % len(order)]), *condition_and_side(j)) for j in range(k)]
    shuffled = np.random.default_rng(seed).permutation(k)
    base = len(tasks)
    for position, j in enumerate(shuffled):
        item, condition, truth = real_tasks[int(j)]
        tasks.append(Task(index=base + position, item=item, condition=condition, truth_label=truth))
    return tuple(tasks)
