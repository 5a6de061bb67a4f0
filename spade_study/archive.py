"""A study as one zip file: ``study.json`` (settings, items, patch boxes), the PNG images under ``images/``,
and optionally ``participants.json`` and ``answers.json``. Moves a study (with its data) to another machine.

The zip is deterministic (fixed member order and timestamps), so exporting an imported study gives the same
bytes. Reading checks the format, every referenced image and every field; a bad file raises
StudyArchiveError with a message for the user.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from spade.errors import SpadeError
from spade_study.assignment import ANSWERS, TRUTH_FIRST, TRUTH_SECOND, Answer, Participant
from spade_study.design import CONDITIONS, Patch, Study, StudyConfig, StudyItem

FORMAT = "spade-study"
VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024


class StudyArchiveError(SpadeError):
    """A study file could not be read (not a zip, wrong format, missing image, bad field)."""


@dataclass(frozen=True)
class Archive:
    study: Study
    participants: tuple[Participant, ...] = ()
    answers: tuple[Answer, ...] = ()


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _json(data) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


def study_document(study: Study) -> tuple[dict, dict[str, bytes]]:
    """(the JSON document of study.json, {archive path: PNG bytes})."""
    images: dict[str, bytes] = {}
    items = []
    for i, item in enumerate(study.items):
        def put(kind: str, data: bytes, i=i) -> str:
            path = f"images/{i:03d}_{kind}.png"
            images[path] = data
            return path

        items.append({
            "name": item.name, "neuron": item.neuron, "neuron_name": item.neuron_name, "training": item.training,
            "image": put("image", item.image_png), "details": item.details,
            "truth": {"box": list(item.truth.box), "score": item.truth.score, "image": put("truth", item.truth.png)},
            "distractor": {"box": list(item.distractor.box), "score": item.distractor.score,
                           "image": put("distractor", item.distractor.png)},
            "visualizations": {c: put(f"vis_{c}", data) for c, data in sorted(item.visualizations.items())},
        })
    doc = {"format": FORMAT, "version": VERSION, "id": study.id, "model": study.model,
           "created": _iso(study.created), "closed": study.closed, "config": study.config.to_dict(), "items": items}
    return doc, images


def write_archive(study: Study, participants: Sequence[Participant] = (), answers: Sequence[Answer] = ()) -> bytes:
    """The study (and optionally its participants and answers) as zip bytes."""
    doc, images = study_document(study)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        _member(zf, "study.json", _json(doc))
        for path, data in images.items():
            _member(zf, path, data)
        if participants or answers:
            _member(zf, "participants.json", _json([
                {"id": p.id, "number": p.number, "seed": p.seed, "created": _iso(p.created)}
                for p in sorted(participants, key=lambda p: p.number)]))
            _member(zf, "answers.json", _json([answer_record(a) for a in answers]))
    return buffer.getvalue()


def answer_record(a: Answer) -> dict:
    """A JSON-ready answer (the raw-answer export format)."""
    return {"participant_id": a.participant_id, "participant_number": a.participant_number,
            "task_index": a.task_index, "item": a.item, "condition": a.condition, "training": a.training,
            "patch_order": a.patch_order, "answer": a.answer, "response_ms": a.response_ms,
            "answered_at": _iso(a.answered_at)}


def read_archive(data: bytes) -> Archive:
    """Parse zip bytes written by :func:`write_archive`."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise StudyArchiveError("The study file is larger than 512 MB.")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise StudyArchiveError("This is not a study file: it is not a zip archive.") from exc
    with zf:
        names = set(zf.namelist())

        def read(name: str) -> bytes:
            if name not in names:
                raise StudyArchiveError(f"The study file lacks {name}.")
            return zf.read(name)

        try:
            doc = json.loads(read("study.json"))
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise StudyArchiveError(f"Not a {FORMAT} version {VERSION} file.")
            study = Study(
                id=str(doc["id"]), config=StudyConfig.from_dict(doc["config"]), model=str(doc.get("model", "")),
                created=_time(doc["created"]), closed=bool(doc.get("closed", False)),
                items=tuple(_item(entry, read) for entry in doc["items"]))
            participants: tuple[Participant, ...] = ()
            answers: tuple[Answer, ...] = ()
            if "participants.json" in names:
                participants = tuple(
                    Participant(id=str(p["id"]), study_id=study.id, number=int(p["number"]), seed=int(p["seed"]),
                                created=_time(p["created"])) for p in json.loads(read("participants.json")))
                answers = tuple(_answer(a, study) for a in json.loads(read("answers.json")))
        except StudyArchiveError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise StudyArchiveError(f"The study file is damaged: {type(exc).__name__}: {exc}.") from exc
    return Archive(study=study, participants=participants, answers=answers)


def _item(entry: dict, read) -> StudyItem:
    visualizations = {str(c): read(path) for c, path in entry["visualizations"].items()}
    if set(visualizations) - set(CONDITIONS):
        raise StudyArchiveError(f"Unknown condition in the study file: {sorted(visualizations)}.")
    return StudyItem(
        name=str(entry["name"]), image_png=read(entry["image"]), neuron=int(entry["neuron"]),
        neuron_name=str(entry["neuron_name"]), training=bool(entry["training"]), details=dict(entry["details"]),
        truth=Patch(box=tuple(int(v) for v in entry["truth"]["box"]), png=read(entry["truth"]["image"]),
                    score=float(entry["truth"]["score"])),
        distractor=Patch(box=tuple(int(v) for v in entry["distractor"]["box"]),
                         png=read(entry["distractor"]["image"]), score=float(entry["distractor"]["score"])),
        visualizations=visualizations)


def _answer(a: dict, study: Study) -> Answer:
    answer = Answer(study_id=study.id, participant_id=str(a["participant_id"]),
                    participant_number=int(a["participant_number"]), task_index=int(a["task_index"]),
                    item=int(a["item"]), condition=str(a["condition"]), training=bool(a["training"]),
                    patch_order=str(a["patch_order"]), answer=str(a["answer"]), response_ms=int(a["response_ms"]),
                    answered_at=_time(a["answered_at"]))
    if answer.answer not in ANSWERS or answer.patch_order not in (TRUTH_FIRST, TRUTH_SECOND):
        raise StudyArchiveError(f"The study file holds an invalid answer: {a}.")
    return answer
