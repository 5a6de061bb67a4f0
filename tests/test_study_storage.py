"""Study storage on SQLite and on a throwaway PostgreSQL server: concurrent writers lose nothing and
duplicate nothing, a writer killed mid-write leaves every committed answer, the first answer wins, and a
study moves between databases as one file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from spade.errors import ConfigError
from spade_study.archive import StudyArchiveError, read_archive
from spade_study.assignment import assign_tasks
from spade_study.storage import (
    StudyClosedError,
    StudyExistsError,
    StudyNotFoundError,
    StudyStore,
    database_url,
)
from tests.postgres_server import PostgresServer, find_bin_dir
from tests.study_helpers import synthetic_study

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres():
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = ("PostgreSQL server binaries (initdb, pg_ctl) are missing: install the Debian package with "
                   "`apt-get install postgresql` (make test does), or set SPADE_PG_BIN")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def new_url(request, tmp_path):
    """A factory of empty databases of the parametrised backend."""
    if request.param == "sqlite":
        counter = iter(range(1000))
        return lambda: f"sqlite:///{tmp_path / f'studies{next(counter)}.sqlite'}"
    server = request.getfixturevalue("postgres")
    return server.create_database


@pytest.fixture
def url(new_url):
    return new_url()


@pytest.fixture
def store(url):
    s = StudyStore(url)
    yield s
    s.close()


def _study(store: StudyStore, study_id: str = "s1", **kwargs):
    study = synthetic_study(study_id, **kwargs)
    store.save_study(study)
    return study


def _rows(store: StudyStore, study_id: str) -> list:
    return store.answers(study_id)


# ----------------------------------------------------------------------------------------------- basics
def test_first_answer_is_kept_and_resume_finds_the_next_task(store):
    study = _study(store)
    p = store.register_participant(study.id)
    tasks = assign_tasks(study, p.number, p.seed)
    assert store.next_task(study.id, p.id, tasks) == tasks[0]
    assert store.record_answer(study.id, p.id, tasks[0], "A", 1200) is True
    assert store.record_answer(study.id, p.id, tasks[0], "B", 50) is False
    assert store.record_answer(study.id, p.id, tasks[0], "undecided", 60) is False
    assert store.next_task(study.id, p.id, tasks) == tasks[1]
    assert store.record_answer(study.id, p.id, tasks[2], "undecided", 700) is True  # out of order is fine
    assert store.next_task(study.id, p.id, tasks) == tasks[1]
    rows = _rows(store, study.id)
    assert [(a.task_index, a.answer, a.response_ms) for a in rows] == [(0, "A", 1200), (2, "undecided", 700)]
    first = rows[0]
    assert (first.item, first.condition, first.patch_order, first.training) == (
        tasks[0].item, tasks[0].condition, tasks[0].patch_order, tasks[0].training)
    assert first.participant_number == 0 and first.answered_at.tzinfo is not None
    # a reopened store (another process, a restarted server) sees the same
    again = StudyStore(store.url)
    assert store.next_task(study.id, p.id, tasks) == again.next_task(study.id, p.id, tasks) == tasks[1]
    again.close()


def test_invalid_answers_unknown_participants_and_closed_studies_are_refused(store):
    study = _study(store)
    other = _study(store, "s2")
    p = store.register_participant(study.id)
    task = assign_tasks(study, p.number, p.seed)[0]
    with pytest.raises(ConfigError):
        store.record_answer(study.id, p.id, task, "C", 10)
    with pytest.raises(ConfigError):
        store.record_answer(study.id, p.id, task, "A", -1)
    with pytest.raises(StudyNotFoundError):
        store.record_answer(other.id, p.id, task, "A", 10)  # p belongs to another study
    with pytest.raises(StudyNotFoundError):
        store.record_answer(study.id, "nobody", task, "A", 10)
    with pytest.raises(StudyNotFoundError):
        store.load_study("missing")
    with pytest.raises(StudyExistsError):
        store.save_study(study)
    store.set_closed(study.id, True)
    assert store.is_closed(study.id) and store.load_study(study.id).closed
    with pytest.raises(StudyClosedError):
        store.record_answer(study.id, p.id, task, "A", 10)
    with pytest.raises(StudyClosedError):
        store.register_participant(study.id)
    store.set_closed(study.id, False)
    assert store.record_answer(study.id, p.id, task, "A", 10)
    assert _rows(store, other.id) == []
    summaries = {s.id: s for s in store.list_studies()}
    assert (summaries["s1"].participants, summaries["s1"].answers) == (1, 1)
    assert (summaries["s2"].participants, summaries["s2"].answers) == (0, 0)


def test_study_design_round_trips_through_the_database(store):
    study = _study(store)
    loaded = store.load_study(study.id)
    assert loaded.config == study.config and loaded.created == study.created and loaded.model == study.model
    for a, b in zip(study.items, loaded.items):
        assert (a.name, a.neuron, a.truth, a.distractor, a.visualizations, a.image_png, a.training, a.details) == (
            b.name, b.neuron, b.truth, b.distractor, b.visualizations, b.image_png, b.training, b.details)


# ----------------------------------------------------------------------------------------------- concurrency
def test_concurrent_threads_lose_nothing_and_duplicate_nothing(store):
    study = _study(store, n_real=30, n_training=0)
    shared = store.register_participant(study.id)
    shared_tasks = assign_tasks(study, shared.number, shared.seed)
    n_threads = 8
    errors: list[BaseException] = []
    won: dict[int, list[int]] = defaultdict(list)  # shared task -> threads whose answer was stored
    own: dict[int, str] = {}
    barrier = threading.Barrier(n_threads)

    def work(tag: int) -> None:
        try:
            barrier.wait()
            p = store.register_participant(study.id)
            own[tag] = p.id
            for task in assign_tasks(study, p.number, p.seed):
                assert store.record_answer(study.id, p.id, task, "A", tag)
                assert not store.record_answer(study.id, p.id, task, "B", tag)  # second answer: ignored
            for task in shared_tasks:
                if store.record_answer(study.id, shared.id, task, "AB"[tag % 2], 1000 + tag):
                    won[task.index].append(tag)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(tag,)) for tag in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    rows = _rows(store, study.id)
    keys = [(a.participant_id, a.task_index) for a in rows]
    assert len(keys) == len(set(keys)), "duplicates"
    per_participant = Counter(a.participant_id for a in rows)
    assert len(per_participant) == n_threads + 1
    assert all(n == 30 for n in per_participant.values())
    for tag, pid in own.items():
        assert {a.answer for a in rows if a.participant_id == pid} == {"A"}
        assert {a.response_ms for a in rows if a.participant_id == pid} == {tag}
    # the shared participant: exactly one winner per task, and the stored row is the winner's answer
    assert sorted(won) == [t.index for t in shared_tasks]
    assert all(len(tags) == 1 for tags in won.values())
    for a in rows:
        if a.participant_id == shared.id:
            assert a.response_ms == 1000 + won[a.task_index][0]
    numbers = sorted(p.number for p in store.participants(study.id))
    assert numbers == list(range(n_threads + 1)), "participant numbers are consecutive and unique"


def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.study_worker", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _reports(lines: str) -> list[tuple[str, int, bool, str, int]]:
    out = []
    for line in lines.splitlines():
        pid, index, stored, answer, ms = line.split()
        out.append((pid, int(index), stored == "1", answer, int(ms)))
    return out


def test_concurrent_processes_lose_nothing_and_duplicate_nothing(store, url):
    study = _study(store, n_real=25, n_training=0)
    shared = store.register_participant(study.id)
    n_procs = 4
    procs = [_worker("shared", url, study.id, shared.id, str(tag)) for tag in range(n_procs)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(_reports(out))
    rows = {a.task_index: a for a in _rows(store, study.id)}
    assert sorted(rows) == list(range(25))
    for index, row in rows.items():
        winners = [tag for tag, reports in enumerate(outputs) for r in reports if r[1] == index and r[2]]
        assert len(winners) == 1, (index, winners)
        assert row.response_ms == winners[0] * 100_000 + index
    assert all(len(reports) == 25 for reports in outputs)


def _sqlite_path(url: str) -> str | None:
    parsed = make_url(url)
    return parsed.database if parsed.get_backend_name() == "sqlite" else None


@pytest.mark.parametrize("kill_after", [5, 40])
def test_killed_writer_keeps_every_committed_answer(store, url, kill_after):
    study = _study(store, n_real=12, n_training=1)
    procs = [_worker("endless", url, study.id, str(tag)) for tag in range(2)]
    reported: list[tuple] = []
    try:
        # wait until both workers have committed `kill_after` answers, then kill them mid-stream
        counts = [0, 0]
        for i, proc in enumerate(procs):
            while counts[i] < kill_after:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                reported += _reports(line)
                counts[i] += 1
        for proc in procs:  # both are busy writing: the kill lands anywhere, also inside a transaction
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            # lines written before the kill report committed answers too (read through the same buffered reader)
            reported += _reports(proc.stdout.read())
            proc.wait(timeout=60)
            proc.stdout.close()
            proc.stderr.close()
    assert all(proc.returncode == -signal.SIGKILL for proc in procs)

    path = _sqlite_path(url)
    if path:
        with sqlite3.connect(path) as conn:  # recovers the WAL left by the killed writers
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    fresh = StudyStore(url)
    rows = _rows(fresh, study.id)
    stored = {(a.participant_id, a.task_index): a for a in rows}
    assert len(stored) == len(rows), "no duplicates"
    for pid, index, was_stored, answer, ms in reported:
        assert was_stored
        assert (pid, index) in stored, f"committed answer {pid}/{index} lost"
        assert (stored[(pid, index)].answer, stored[(pid, index)].response_ms) == (answer, ms)
    # at most the one answer in flight per worker may be in the database without having been reported
    assert len(rows) - len(reported) <= len(procs)
    # every stored answer is a complete, valid row that matches its participant's task list
    participants = {p.id: p for p in fresh.participants(study.id)}
    for a in rows:
        p = participants[a.participant_id]
        task = assign_tasks(study, p.number, p.seed)[a.task_index]
        assert (a.item, a.condition, a.patch_order, a.training) == (task.item, task.condition, task.patch_order,
                                                                     task.training)
    # and the database keeps working
    p = fresh.register_participant(study.id)
    assert p.number == max(participants[q].number for q in participants) + 1
    assert fresh.record_answer(study.id, p.id, assign_tasks(study, p.number, p.seed)[0], "A", 1)
    fresh.close()


def test_crashed_postgres_server_keeps_every_committed_answer(postgres):
    """The database server itself dies (immediate shutdown, as in a crash) while two clients write."""
    server = PostgresServer(postgres.bin_dir).start()  # its own server: the shared one must stay up
    try:
        url = server.create_database()
        store = StudyStore(url)
        study = _study(store, n_real=12, n_training=0)
        store.close()
        procs = [_worker("endless", url, study.id, str(tag)) for tag in range(2)]
        reported = []
        for proc in procs:
            for _ in range(15):
                reported += _reports(proc.stdout.readline())
        server.crash()
        for proc in procs:
            reported += _reports(proc.stdout.read())
            assert proc.wait(timeout=60) != 0, "the writer loses its server"
            proc.stdout.close()
            proc.stderr.close()
        server.start()
        fresh = StudyStore(url)
        stored = {(a.participant_id, a.task_index): (a.answer, a.response_ms) for a in _rows(fresh, study.id)}
        assert len(reported) >= 30
        for pid, index, _, answer, ms in reported:
            assert stored.get((pid, index)) == (answer, ms), f"committed answer {pid}/{index} lost"
        fresh.close()
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------- files
def test_export_import_round_trip(store, new_url):
    study = _study(store)
    for _ in range(3):
        p = store.register_participant(study.id)
        for task, answer in zip(assign_tasks(study, p.number, p.seed)[:4], ("A", "B", "undecided", "A")):
            store.record_answer(study.id, p.id, task, answer, 100 + task.index)
    store.set_closed(study.id)
    data = store.export_study(study.id)
    archive = read_archive(data)
    assert len(archive.participants) == 3 and len(archive.answers) == 12

    other = StudyStore(new_url())
    imported = other.import_study(data)
    assert imported.id == study.id and other.is_closed(study.id)
    assert other.answers(study.id) == store.answers(study.id)
    assert other.participants(study.id) == store.participants(study.id)
    assert other.export_study(study.id) == data, "export -> import -> export gives the same file"
    with pytest.raises(StudyExistsError):
        other.import_study(data)
    # the imported study goes on where it was: the next participant gets the next number
    other.set_closed(study.id, False)
    assert other.register_participant(study.id).number == 3
    other.close()


def test_import_refuses_damaged_files(store):
    with pytest.raises(StudyArchiveError):
        store.import_study(b"not a zip")
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("study.json", '{"format": "spade-study", "version": 1, "items": [{"name": "x"}]}')
    with pytest.raises(StudyArchiveError):
        store.import_study(buffer.getvalue())
    assert store.list_studies() == []


# ----------------------------------------------------------------------------------------------- settings
def test_database_url_settings(tmp_path):
    assert database_url({"SPADE_DATA_DIR": str(tmp_path)}) == f"sqlite:///{tmp_path / 'studies.sqlite'}"
    assert database_url({}) == f"sqlite:///{Path('data').resolve() / 'studies.sqlite'}"
    assert database_url({"SPADE_STUDY_DB": str(tmp_path / "x.db")}) == f"sqlite:///{tmp_path / 'x.db'}"
    assert database_url({"SPADE_STUDY_DB": "postgresql://u:pw@h:5/db"}) == "postgresql+psycopg://u:pw@h:5/db"
    assert database_url({"SPADE_STUDY_DB": "sqlite:////a/b.sqlite"}) == "sqlite:////a/b.sqlite"


def test_sqlite_default_file_uses_wal_in_the_data_folder(tmp_path):
    store = StudyStore.from_settings({"SPADE_DATA_DIR": str(tmp_path / "nested" / "data")})
    _study(store)
    path = tmp_path / "nested" / "data" / "studies.sqlite"
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()
