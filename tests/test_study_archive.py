"""Hostile study files: every damaged, oversized or inconsistent archive is refused with a StudyArchiveError
that names the problem, and nothing reaches the database."""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
import zlib

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from spade_study import archive
from spade_study.archive import StudyArchiveError, read_archive, write_archive
from spade_study.assignment import assign_tasks
from spade_study.storage import StudyStore
from tests.app_testing import TIMEOUT
from tests.study_helpers import synthetic_study


@pytest.fixture
def store(tmp_path) -> StudyStore:
    db = StudyStore(f"sqlite:///{tmp_path / 'studies.sqlite'}")
    yield db
    db.close()


def _valid(study_id: str = "hostile") -> bytes:
    """A study file with two participants and their answers, made by exporting a real store."""
    source = StudyStore("sqlite://")
    study = synthetic_study(study_id, n_real=3, n_training=1)
    source.save_study(study)
    for _ in range(2):
        p = source.register_participant(study.id)
        for task, answer in zip(assign_tasks(study, p.number, p.seed)[:3], ("A", "B", "undecided")):
            source.record_answer(study.id, p.id, task, answer, 700)
    data = source.export_study(study.id)
    source.close()
    return data


VALID = _valid()
_MB = 1024 * 1024


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _edit(name: str, change) -> bytes:
    """VALID with the JSON member ``name`` passed through ``change`` (which edits it in place or returns a
    replacement)."""
    members = _members(VALID)
    doc = json.loads(members[name])
    result = change(doc)
    members[name] = json.dumps(doc if result is None else result).encode()
    return _zip(members)


def _replace(name: str, data: bytes) -> bytes:
    members = _members(VALID)
    members[name] = data
    return _zip(members)


def _patch_headers(data: bytes, name: str, *, local: dict[int, bytes], central: dict[int, bytes]) -> bytes:
    """Overwrite bytes of member ``name``'s local header and central-directory entry at the given offsets."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        start = zf.getinfo(name).header_offset
    for offset, value in local.items():
        out[start + offset:start + offset + len(value)] = value
    position = out.find(b"PK\x01\x02")
    while position >= 0:
        length = struct.unpack("<H", out[position + 28:position + 30])[0]
        if out[position + 46:position + 46 + length] == name.encode():
            for offset, value in central.items():
                out[position + offset:position + offset + len(value)] = value
        position = out.find(b"PK\x01\x02", position + 1)
    return bytes(out)


def _corrupt_deflate() -> bytes:
    data = bytearray(_zip(_members(VALID)))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("study.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 10, start + min(info.compress_size, 60)):
        data[i] ^= 0xA5
    return bytes(data)


def _encrypted() -> bytes:
    return _patch_headers(VALID, "study.json", local={6: b"\x01\x00"}, central={8: b"\x01\x00"})


def _method_99() -> bytes:
    return _patch_headers(VALID, "study.json", local={8: b"\x63\x00"}, central={10: b"\x63\x00"})


def _huge_study_json() -> bytes:
    # 17 MB of spaces (valid JSON whitespace around the document) compress to about 17 KB
    members = _members(VALID)
    members["study.json"] += b" " * (archive.MAX_MEMBER_BYTES + _MB)
    return _zip(members)


def _lying_size() -> bytes:
    """The huge study.json with a central directory that declares 1000 bytes."""
    data = _huge_study_json()
    return _patch_headers(data, "study.json", local={22: struct.pack("<I", 1000)},
                          central={24: struct.pack("<I", 1000)})


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    png = bytearray(_members(VALID)["images/000_image.png"])
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    png[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    png[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(png[ihdr - 4:ihdr + 13])))
    return bytes(png)


def _black_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def _set(path: tuple, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


HOSTILE = {
    "not a zip": (lambda: b"PK\x03\x04 not really", "not a zip archive"),
    "corrupt deflate": (_corrupt_deflate, "study.json in the study file is damaged"),
    "encrypted member": (_encrypted, "study.json in the study file is encrypted"),
    "compression method 99": (_method_99, "compression method 99"),
    "declared huge study.json": (_huge_study_json, "study.json in the study file is larger than 16 MB"),
    "lying size header": (_lying_size, "study.json in the study file is damaged"),
    "study.json a list": (lambda: _edit("study.json", lambda doc: [doc]), "study.json must be an object, not a list"),
    "study.json not JSON": (lambda: _replace("study.json", b"{nope"), "study.json in the study file is not valid JSON"),
    "numeric title": (lambda: _edit("study.json", _set(("config", "title"), 42)),
                      "'title' of the study's config must be a string, not an integer"),
    "empty title": (lambda: _edit("study.json", _set(("config", "title"), " ")), "needs a title"),
    "negative seed": (lambda: _edit("study.json", _set(("config", "seed"), -1)), "'seed' of the study's config"),
    "zero items": (lambda: _edit("study.json", _set(("items",), [])), "holds no items"),
    "only training items": (lambda: _edit("study.json", lambda doc: {**doc, "items": doc["items"][3:]}),
                            "at least one real item"),
    "item a string": (lambda: _edit("study.json", _set(("items", 0), "x")), "item 0 must be an object"),
    "neuron a string": (lambda: _edit("study.json", _set(("items", 0, "neuron"), "3")),
                        "'neuron' of item 0 must be an integer, not a string"),
    "training a number": (lambda: _edit("study.json", _set(("items", 1, "training"), 1)),
                          "'training' of item 1 must be true or false"),
    "box outside the image": (lambda: _edit("study.json", _set(("items", 0, "truth", "box"), [20, 20, 28, 28])),
                              "lies outside its 24 x 24 image"),
    "missing visualization": (lambda: _edit("study.json", _set(("items", 0, "visualizations"),
                                                                        {"dense": "images/000_vis_dense.png"})),
                              "visualizations of item 0 must be those of the conditions"),
    "image used twice": (lambda: _edit("study.json", _set(("items", 1, "image"), "images/000_image.png")),
                         "refers to images/000_image.png more than once"),
    "missing image": (lambda: _edit("study.json", _set(("items", 0, "image"), "images/nothing.png")),
                      "lacks images/nothing.png"),
    "PNG that is text": (lambda: _replace("images/000_image.png", b"this is not a picture"),
                         "images/000_image.png in the study file is not a valid PNG image"),
    "truncated PNG": (lambda: _replace("images/001_truth.png", _members(VALID)["images/001_truth.png"][:60]),
                      "images/001_truth.png in the study file is not a valid PNG image"),
    "PNG bomb header": (lambda: _replace("images/000_image.png", _png_with_size(100_000, 100_000)),
                        "images/000_image.png in the study file has more than 16,777,216 pixels"),
    "PNG over the pixel cap": (lambda: _replace("images/000_image.png", _black_png(4097)),
                               "images/000_image.png in the study file has 4097 x 4097 pixels"),
    "participants an object": (lambda: _edit("participants.json", lambda doc: {"p": doc}),
                               "participants.json must be a list, not an object"),
    "duplicate participant": (lambda: _edit("participants.json", lambda doc: doc + doc[:1]),
                              "repeats or lacks an id or number"),
    "unknown participant": (lambda: _edit("answers.json", _set((0, "participant_id"), "stranger")),
                            "names participant 'stranger', who is not in participants.json"),
    "unknown item": (lambda: _edit("answers.json", _set((0, "item"), 99)), "names item 99"),
    "unknown condition": (lambda: _edit("answers.json", _set((0, "condition"), "sparse")),
                          "names condition 'sparse'"),
    "repeated answer": (lambda: _edit("answers.json", lambda doc: doc + doc[:1]), "a second time"),
    "bad answer time": (lambda: _edit("answers.json", _set((0, "answered_at"), "yesterday")),
                        "'answered_at' of answer 0 of answers.json is not an ISO date and time"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_is_stored(store, case):
    build, message = HOSTILE[case]
    with pytest.raises(StudyArchiveError, match=re.escape(message)) as caught:
        store.import_study(build())
    assert str(caught.value).endswith((".", ")")) and "\n" not in str(caught.value)
    assert store.list_studies() == []


def test_the_valid_file_still_imports_and_round_trips(store):
    study = store.import_study(VALID)
    assert store.export_study(study.id) == VALID
    assert len(store.participants(study.id)) == 2 and len(store.answers(study.id)) == 6


def test_participant_ids_already_in_the_database_are_refused(store):
    store.import_study(VALID)
    # the same participants under another study id
    again = _edit("study.json", _set(("id",), "other"))
    with pytest.raises(StudyArchiveError, match="participant '.+' is already in this database"):
        store.import_study(again)
    assert [s.id for s in store.list_studies()] == ["hostile"]


def test_caps_on_members_total_size_and_pixels(monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)
    with pytest.raises(StudyArchiveError, match="at most 5 are accepted"):
        read_archive(VALID)
    monkeypatch.undo()
    total = sum(len(data) for data in _members(VALID).values())
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", total - 1)
    with pytest.raises(StudyArchiveError, match="expands to more than"):
        read_archive(VALID)
    monkeypatch.undo()
    monkeypatch.setattr(archive, "MAX_TOTAL_PIXELS", 24 * 24 * 3)
    with pytest.raises(StudyArchiveError, match="pixels together"):
        read_archive(VALID)
    monkeypatch.undo()
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", len(VALID) - 1)
    with pytest.raises(StudyArchiveError, match="larger than"):
        read_archive(VALID)


def test_a_study_without_participants_reads():
    data = write_archive(synthetic_study("bare", n_real=2, n_training=0))
    result = read_archive(data)
    assert result.participants == () and result.answers == () and len(result.study.items) == 2


@pytest.mark.usefixtures("app_navigation")
def test_the_studies_tab_shows_a_refused_file_as_an_error(tmp_path, monkeypatch):
    path = tmp_path / "studies.sqlite"
    monkeypatch.setenv("SPADE_STUDY_DB", str(path))
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.session_state["device"] = "cpu"
    at.switch_page("pages/human_study.py").run()
    at.session_state["study_section"] = "Studies"
    at.run()
    bad = _edit("study.json", _set(("config", "title"), 42))
    at.file_uploader(key="sd_import").upload("bad.zip", bad, "application/zip").run()
    [button] = [b for b in at.button if b.label == "Import"]
    button.click().run()
    assert not at.exception, at.exception
    # shown as text: the message's markdown characters are escaped
    assert [re.sub(r"\\(.)", r"\1", e.value) for e in at.error] == [
        "The study file is damaged: 'title' of the study's config must be a string, not an integer."]
    db = StudyStore(f"sqlite:///{path}")
    assert db.list_studies() == []
    db.close()
