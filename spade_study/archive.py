"""A study as one zip file: ``study.json`` (settings, items, patch boxes), the PNG images under ``images/``,
and optionally ``participants.json`` and ``answers.json``. Moves a study (with its data) to another machine.

The zip is deterministic (fixed member order and timestamps), so exporting an imported study gives the same
bytes. Reading treats the file as hostile: members are read in chunks under size caps (a header that lies
about the size does not matter), only stored or deflated unencrypted members are accepted, every PNG is
decoded under a pixel cap, and every field's type and every reference (items, conditions, participants) is
checked. Any failure raises StudyArchiveError with one sentence for the user.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image, UnidentifiedImageError

from spade.errors import ConfigError, SpadeError
from spade_study.assignment import ANSWERS, TRUTH_FIRST, TRUTH_SECOND, Answer, Participant, PlatformIds
from spade_study.design import CONDITIONS, Patch, Study, StudyConfig, StudyItem, VisualizationSettings

FORMAT = "spade-study"
VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)
_MB = 1024 * 1024

MAX_ARCHIVE_BYTES = 128 * _MB
"""Largest study file accepted (128 MB, compressed)."""
MAX_MEMBERS = 5000
"""Most members (files) in a study file: 5000."""
MAX_MEMBER_BYTES = 16 * _MB
"""Largest uncompressed member (16 MB), checked on the declared size and while reading."""
MAX_TOTAL_BYTES = 128 * _MB
"""Largest uncompressed total of all members read (128 MB), checked on the declared sizes and while reading."""
MAX_IMAGE_PIXELS = 4096 * 4096
"""Most pixels of one PNG (4096 x 4096 = 16.8 million), checked before it is decoded."""
MAX_TOTAL_PIXELS = 256 * _MB
"""Most pixels of all PNGs together (2**28 = 268 million), checked before each is decoded."""
_CHUNK = 1024 * 1024
_INT32 = 2**31
_INT64 = 2**63
_STUDY_ID_CHARS, _TITLE_CHARS, _MODEL_CHARS, _PARTICIPANT_ID_CHARS = 64, 500, 200, 64  # the database's columns
_PLATFORM_ID_CHARS = 128


class StudyArchiveError(SpadeError):
    """A study file is refused (not a zip, too large, damaged member, bad image, bad field or reference)."""


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
                {"id": p.id, "number": p.number, "seed": p.seed, "created": _iso(p.created),
                 **_platform_record(p.platform)} for p in sorted(participants, key=lambda p: p.number)]))
            _member(zf, "answers.json", _json([answer_record(a) for a in answers]))
    return buffer.getvalue()


def _platform_record(platform: PlatformIds) -> dict:
    return {f"platform_{field}_id": value for field, value in vars(platform).items()}


def answer_record(a: Answer) -> dict:
    """A JSON-ready answer (the raw-answer export format), with the participant's recruiting-platform ids
    (``platform_participant_id``: Prolific's PROLIFIC_PID, ``platform_study_id``, ``platform_session_id``)."""
    return {"participant_id": a.participant_id, "participant_number": a.participant_number,
            **_platform_record(a.platform),
            "task_index": a.task_index, "item": a.item, "condition": a.condition, "training": a.training,
            "patch_order": a.patch_order, "answer": a.answer, "response_ms": a.response_ms,
            "answered_at": _iso(a.answered_at)}


def read_archive(data: bytes) -> Archive:
    """Parse and check zip bytes written by :func:`write_archive` (see the module docstring)."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise StudyArchiveError(f"The study file is larger than {MAX_ARCHIVE_BYTES // _MB} MB.")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise StudyArchiveError("This is not a study file: it is not a zip archive.") from exc
    with zf:
        members = _Members(zf)
        study = _study(members.json("study.json"), members)
        participants = tuple(_participants(members.json("participants.json"), study)
                             if members.has("participants.json") else ())
        answers = tuple(_answers(members.json("answers.json"), study, participants)
                        if members.has("answers.json") else ())
    return Archive(study=study, participants=participants, answers=answers)


class _Members:
    """The members of an open zip, each read at most once, within the size and pixel caps."""

    def __init__(self, zf: zipfile.ZipFile):
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise StudyArchiveError(f"The study file has {len(infos)} members; at most {MAX_MEMBERS} are accepted.")
        if sum(info.file_size for info in infos) > MAX_TOTAL_BYTES:
            raise StudyArchiveError(f"The study file expands to more than {MAX_TOTAL_BYTES // _MB} MB.")
        self._zf = zf
        self._infos = {info.filename: info for info in infos}
        self._read: set[str] = set()
        self._bytes = 0
        self._pixels = 0

    def has(self, name: str) -> bool:
        return name in self._infos

    def bytes(self, name: str) -> bytes:
        info = self._infos.get(name)
        if info is None:
            raise StudyArchiveError(f"The study file lacks {name}.")
        if name in self._read:
            raise StudyArchiveError(f"The study file refers to {name} more than once.")
        self._read.add(name)
        if info.flag_bits & 0x1:
            raise StudyArchiveError(f"{name} in the study file is encrypted.")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise StudyArchiveError(f"{name} in the study file uses compression method {info.compress_type}; "
                                    "only stored and deflated members are accepted.")
        if info.file_size > MAX_MEMBER_BYTES:
            raise StudyArchiveError(f"{name} in the study file is larger than {MAX_MEMBER_BYTES // _MB} MB.")
        chunks = []
        size = 0
        try:
            with self._zf.open(info) as stream:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_MEMBER_BYTES:
                        raise StudyArchiveError(
                            f"{name} in the study file is larger than {MAX_MEMBER_BYTES // _MB} MB.")
                    if self._bytes + size > MAX_TOTAL_BYTES:
                        raise StudyArchiveError(f"The study file expands to more than {MAX_TOTAL_BYTES // _MB} MB.")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise StudyArchiveError(f"{name} in the study file is damaged ({exc}).") from exc
        self._bytes += size
        return b"".join(chunks)

    def json(self, name: str):
        try:
            return json.loads(self.bytes(name))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise StudyArchiveError(f"{name} in the study file is not valid JSON.") from exc

    def png(self, name: str) -> tuple[bytes, tuple[int, int]]:
        """The PNG's bytes and (width, height), after decoding it completely."""
        data = self.bytes(name)
        try:
            with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
                pixels = image.width * image.height
                if pixels > MAX_IMAGE_PIXELS:
                    raise StudyArchiveError(f"{name} in the study file has {image.width} x {image.height} pixels; "
                                            f"at most {MAX_IMAGE_PIXELS:,} are accepted.")
                if self._pixels + pixels > MAX_TOTAL_PIXELS:
                    raise StudyArchiveError(f"The images of the study file have more than {MAX_TOTAL_PIXELS:,} "
                                            "pixels together.")
                self._pixels += pixels
                image.load()
                return data, image.size
        except Image.DecompressionBombError as exc:
            raise StudyArchiveError(f"{name} in the study file has more than {MAX_IMAGE_PIXELS:,} pixels.") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as exc:
            raise StudyArchiveError(f"{name} in the study file is not a valid PNG image.") from exc


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
          dict: "an object"}
_REQUIRED = object()


def _is(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(value) -> str:
    for kind in (bool, int, float, str, list, dict):
        if isinstance(value, kind):
            return _KINDS[kind]
    return "null"


def _get(doc: dict, key: str, kind: type, where: str, *, default=_REQUIRED, none: bool = False):
    """doc[key], checked to be of ``kind`` (None allowed when ``none``); ``default`` when the key is missing."""
    if key not in doc:
        if default is _REQUIRED:
            raise StudyArchiveError(f"The study file is damaged: {where} lacks {key!r}.")
        return default
    value = doc[key]
    if value is None and none:
        return None
    if not _is(value, kind):
        raise StudyArchiveError(f"The study file is damaged: {key!r} of {where} must be {_KINDS[kind]}"
                                f"{' or null' if none else ''}, not {_type_name(value)}.")
    return float(value) if kind is float else value


def _within(value: int, low: int, high: int, key: str, where: str) -> int:
    if not low <= value < high:
        raise StudyArchiveError(f"The study file is damaged: {key!r} of {where} is {value}, outside [{low}, {high}).")
    return value


def _text(doc: dict, key: str, where: str, longest: int, *, default=_REQUIRED) -> str:
    value = _get(doc, key, str, where, default=default)
    if len(value) > longest:
        raise StudyArchiveError(f"The study file is damaged: {key!r} of {where} is longer than {longest} characters.")
    return value


def _time_field(doc: dict, key: str, where: str) -> datetime:
    try:
        return _time(_get(doc, key, str, where))
    except ValueError as exc:
        raise StudyArchiveError(f"The study file is damaged: {key!r} of {where} is not an ISO date and time.") from exc


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudyArchiveError(f"The study file is damaged: {where} must be an object, not {_type_name(value)}.")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise StudyArchiveError(f"The study file is damaged: {where} must be a list, not {_type_name(value)}.")
    return value


# (kind, may be null) of the fields of StudyConfig and VisualizationSettings; missing ones take the defaults.
_CONFIG_FIELDS = {"title": (str, False), "conditions": (list, False), "tasks_per_participant": (int, True),
                  "training_tasks": (int, False), "instructions": (str, False), "seed": (int, False),
                  "patch_fraction": (float, False), "ground_truth": (str, False), "completion_code": (str, False),
                  "completion_url": (str, False)}
_VISUALIZATION_FIELDS = {"steps": (int, True), "size": (int, True), "augmentations": (int, False),
                         "sparsity": (float, True), "keep_decision": (bool, False), "seed": (int, False),
                         "method": (str, False)}


def _config(value) -> StudyConfig:
    doc = _object(value, "the study's config")
    fields = {k: _get(doc, k, kind, "the study's config", none=none)
              for k, (kind, none) in _CONFIG_FIELDS.items() if k in doc}
    vis_doc = _object(doc.get("visualization", {}), "the study's visualization settings")
    vis = {k: _get(vis_doc, k, kind, "the study's visualization settings", none=none)
           for k, (kind, none) in _VISUALIZATION_FIELDS.items() if k in vis_doc}
    if "conditions" in fields:
        if not all(isinstance(c, str) for c in fields["conditions"]):
            raise StudyArchiveError("The study file is damaged: the study's conditions must be strings.")
        fields["conditions"] = tuple(fields["conditions"])
    if len(fields.get("title", "")) > _TITLE_CHARS:
        raise StudyArchiveError(f"The study file is damaged: the title is longer than {_TITLE_CHARS} characters.")
    _within(fields.get("seed", 0), 0, _INT64, "seed", "the study's config")
    _within(vis.get("seed", 0), 0, _INT64, "seed", "the study's visualization settings")
    try:
        return StudyConfig(visualization=VisualizationSettings.stored(vis), **fields)
    except ConfigError as exc:
        raise StudyArchiveError(f"The study file's settings are invalid: {exc}") from exc


def _study(value, members: _Members) -> Study:
    doc = _object(value, "study.json")
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise StudyArchiveError(f"Not a {FORMAT} version {VERSION} file.")
    study_id = _text(doc, "id", "study.json", _STUDY_ID_CHARS)
    if not study_id.strip():
        raise StudyArchiveError("The study file is damaged: the study's id is empty.")
    config = _config(_get(doc, "config", dict, "study.json"))
    entries = _get(doc, "items", list, "study.json")
    if not entries:
        raise StudyArchiveError("The study file holds no items (images); a study needs at least one.")
    items = tuple(_item(entry, i, config, members) for i, entry in enumerate(entries))
    study = Study(id=study_id, config=config, items=items, model=_text(doc, "model", "study.json", _MODEL_CHARS,
                                                                        default=""),
                  created=_time_field(doc, "created", "study.json"),
                  closed=_get(doc, "closed", bool, "study.json", default=False))
    if not study.real_items:
        raise StudyArchiveError("The study file holds only training items; a study needs at least one real item.")
    if config.training_tasks and not study.training_items:
        raise StudyArchiveError(f"The study asks for {config.training_tasks} training tasks but the file holds no "
                                "training items.")
    return study


def _patch(value, where: str, image_size: tuple[int, int], members: _Members) -> Patch:
    doc = _object(value, where)
    box = _get(doc, "box", list, where)
    width, height = image_size
    if len(box) != 4 or not all(_is(v, int) for v in box):
        raise StudyArchiveError(f"The study file is damaged: the box of {where} must be four integers.")
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise StudyArchiveError(f"The study file is damaged: the box of {where} lies outside its "
                                f"{width} x {height} image.")
    png, size = members.png(_get(doc, "image", str, where))
    if size != (right - left, bottom - top):
        raise StudyArchiveError(f"The study file is damaged: the image of {where} is {size[0]} x {size[1]} pixels, "
                                f"its box {right - left} x {bottom - top}.")
    return Patch(box=(left, top, right, bottom), png=png, score=_get(doc, "score", float, where))


def _item(value, index: int, config: StudyConfig, members: _Members) -> StudyItem:
    where = f"item {index}"
    doc = _object(value, where)
    image_png, size = members.png(_get(doc, "image", str, where))
    paths = _get(doc, "visualizations", dict, where)
    unknown = sorted(set(paths) - set(CONDITIONS))
    missing = [c for c in config.conditions if c not in paths]
    if unknown or missing:
        raise StudyArchiveError(f"The study file is damaged: the visualizations of {where} must be those of the "
                                f"conditions {', '.join(config.conditions)}.")
    visualizations = {c: members.png(_get(paths, c, str, f"the visualizations of {where}"))[0] for c in sorted(paths)}
    return StudyItem(
        name=_get(doc, "name", str, where), image_png=image_png,
        neuron=_within(_get(doc, "neuron", int, where), 0, _INT32, "neuron", where),
        neuron_name=_get(doc, "neuron_name", str, where), training=_get(doc, "training", bool, where),
        details=_get(doc, "details", dict, where, default={}),
        truth=_patch(_get(doc, "truth", dict, where), f"the truth patch of {where}", size, members),
        distractor=_patch(_get(doc, "distractor", dict, where), f"the distractor patch of {where}", size, members),
        visualizations=visualizations)


def _participants(value, study: Study) -> list[Participant]:
    participants: list[Participant] = []
    ids: set[str] = set()
    numbers: set[int] = set()
    for i, entry in enumerate(_list(value, "participants.json")):
        where = f"participant {i} of participants.json"
        doc = _object(entry, where)
        participant = Participant(
            id=_text(doc, "id", where, _PARTICIPANT_ID_CHARS), study_id=study.id,
            number=_within(_get(doc, "number", int, where), 0, _INT32, "number", where),
            seed=_within(_get(doc, "seed", int, where), 0, _INT64, "seed", where),
            created=_time_field(doc, "created", where),
            platform=PlatformIds(**{field: _text(doc, f"platform_{field}_id", where, _PLATFORM_ID_CHARS, default="")
                                    for field in vars(PlatformIds())}))
        if not participant.id or participant.id in ids or participant.number in numbers:
            raise StudyArchiveError(f"The study file is damaged: {where} repeats or lacks an id or number.")
        ids.add(participant.id)
        numbers.add(participant.number)
        participants.append(participant)
    return participants


def _answers(value, study: Study, participants: Sequence[Participant]) -> list[Answer]:
    numbers = {p.id: p.number for p in participants}
    platforms = {p.id: p.platform for p in participants}
    answers: list[Answer] = []
    tasks: set[tuple[str, int]] = set()
    for i, entry in enumerate(_list(value, "answers.json")):
        where = f"answer {i} of answers.json"
        doc = _object(entry, where)
        participant_id = _get(doc, "participant_id", str, where)
        if participant_id not in numbers:
            raise StudyArchiveError(f"The study file is damaged: {where} names participant {participant_id!r}, "
                                    "who is not in participants.json.")
        item = _get(doc, "item", int, where)
        if not 0 <= item < len(study.items):
            raise StudyArchiveError(f"The study file is damaged: {where} names item {item}, but the study has "
                                    f"{len(study.items)} items.")
        answer = Answer(
            study_id=study.id, participant_id=participant_id,
            participant_number=_get(doc, "participant_number", int, where),
            task_index=_within(_get(doc, "task_index", int, where), 0, _INT32, "task_index", where), item=item,
            condition=_get(doc, "condition", str, where), training=_get(doc, "training", bool, where),
            patch_order=_get(doc, "patch_order", str, where), answer=_get(doc, "answer", str, where),
            response_ms=_within(_get(doc, "response_ms", int, where), 0, _INT32, "response_ms", where),
            answered_at=_time_field(doc, "answered_at", where), platform=platforms[participant_id])
        if answer.participant_number != numbers[participant_id]:
            raise StudyArchiveError(f"The study file is damaged: {where} gives participant {participant_id!r} "
                                    f"number {answer.participant_number}, participants.json "
                                    f"{numbers[participant_id]}.")
        if answer.condition not in study.config.conditions:
            raise StudyArchiveError(f"The study file is damaged: {where} names condition {answer.condition!r}, "
                                    "which the study does not have.")
        if answer.training != study.items[item].training:
            raise StudyArchiveError(f"The study file is damaged: {where} disagrees with its item on training.")
        if answer.answer not in ANSWERS or answer.patch_order not in (TRUTH_FIRST, TRUTH_SECOND):
            raise StudyArchiveError(f"The study file is damaged: {where} holds answer {answer.answer!r} with patch "
                                    f"order {answer.patch_order!r}.")
        if (participant_id, answer.task_index) in tasks:
            raise StudyArchiveError(f"The study file is damaged: {where} answers task {answer.task_index} of "
                                    f"participant {participant_id!r} a second time.")
        tasks.add((participant_id, answer.task_index))
        answers.append(answer)
    return answers
