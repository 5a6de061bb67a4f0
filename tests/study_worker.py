"""A separate process that writes answers, for the storage tests (``python -m tests.study_worker``).

Each line on stdout reports one answer *after* ``record_answer`` returned, i.e. after its commit:
``<participant id> <task index> <stored 0|1> <answer> <response_ms>``. Modes:

* ``shared URL STUDY PARTICIPANT TAG``: answer every task of an existing participant (several workers race on
  the same tasks); the answer and response time encode TAG, so the stored row tells which worker won.
* ``endless URL STUDY TAG``: register participants one after the other and answer all their tasks, until
  killed.
"""

from __future__ import annotations

import sys

from spade_study.assignment import ANSWERS, assign_tasks
from spade_study.storage import StudyStore


def _answer_all(store: StudyStore, study, participant, tag: int) -> None:
    for task in assign_tasks(study, participant.number, participant.seed):
        answer = ANSWERS[tag % len(ANSWERS)]
        response_ms = tag * 100_000 + task.index
        stored = store.record_answer(study.id, participant.id, task, answer, response_ms)
        print(f"{participant.id} {task.index} {int(stored)} {answer} {response_ms}", flush=True)


def main(argv: list[str]) -> None:
    mode, url, study_id = argv[:3]
    store = StudyStore(url)
    study = store.load_study(study_id)
    if mode == "shared":
        participant_id, tag = argv[3], int(argv[4])
        _answer_all(store, study, store.participant(study_id, participant_id), tag)
    elif mode == "endless":
        tag = int(argv[3])
        while True:
            _answer_all(store, study, store.register_participant(study_id), tag)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
