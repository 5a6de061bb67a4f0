"""Where studies, participants and answers live: SQLite by default, any SQLAlchemy database URL otherwise
(PostgreSQL for a study on a shared server).

Settings (environment): ``SPADE_STUDY_DB`` = a database URL (``postgresql://user@host/db``) or an SQLite file
path; without it the file ``studies.sqlite`` in ``SPADE_DATA_DIR`` (default ``./data``).

Guarantees, on SQLite and PostgreSQL alike:

* one transaction per answer, committed before ``record_answer`` returns, so a process killed at any moment
  keeps every answer it reported as stored (SQLite: WAL journal, ``synchronous=FULL``);
* UNIQUE(study, participant, task): answering a task twice keeps the first answer (INSERT ... ON CONFLICT DO
  NOTHING), also when two requests race;
* participants get consecutive numbers per study (UNIQUE(study, number), retried on a race), which is what
  the counterbalancing in ``spade_study.assignment`` needs.

SQLite write transactions start with ``BEGIN IMMEDIATE`` (they take the write lock up front, so a read
followed by a write cannot fail with "database is locked" half-way); waiting writers block up to the busy
timeout.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from spade.errors import ConfigError, SpadeError
from spade_study.archive import StudyArchiveError, read_archive, write_archive
from spade_study.assignment import (
    ANSWERS,
    TRUTH_FIRST,
    TRUTH_SECOND,
    Answer,
    Participant,
    PlatformIds,
    Task,
    participant_seed,
)
from spade_study.design import Study

log = logging.getLogger(__name__)

DB_ENV, DATA_ENV = "SPADE_STUDY_DB", "SPADE_DATA_DIR"
DEFAULT_DATA_DIR = "data"
SQLITE_FILE = "studies.sqlite"
BUSY_TIMEOUT_S = 30.0
MAX_RESPONSE_MS = 24 * 3600 * 1000
PLATFORM_ID_CHARS = 128
PLATFORM_COLUMNS = {"participant": "platform_participant_id", "study": "platform_study_id",
                    "session": "platform_session_id"}
"""PlatformIds field -> column of the participants table (added to a database made by an older version)."""


class StudyNotFoundError(SpadeError):
    """No study with this id in the database."""


class StudyExistsError(SpadeError):
    """A study with this id is already in the database (e.g. imported twice)."""


class StudyClosedError(SpadeError):
    """The study is closed: it accepts no new participants and no answers."""


# ----------------------------------------------------------------------------------------------- schema
metadata = MetaData()

study_table = Table(
    "studies", metadata,
    Column("id", String(64), primary_key=True),
    Column("title", String(500), nullable=False),
    Column("model", String(200), nullable=False, default=""),
    Column("created", DateTime, nullable=False),
    Column("closed", Boolean, nullable=False, default=False),
    Column("seed", BigInteger, nullable=False),  # the config's seed, from which participant seeds derive
    Column("archive", LargeBinary, nullable=False),  # spade_study.archive zip of the design (no answers)
)

participant_table = Table(
    "participants", metadata,
    Column("id", String(64), primary_key=True),
    Column("study_id", String(64), ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("created", DateTime, nullable=False),
    # the recruiting platform's ids from the participant's link ("" when none): Prolific's PROLIFIC_PID, ...
    Column("platform_participant_id", String(PLATFORM_ID_CHARS), nullable=False, default=""),
    Column("platform_study_id", String(PLATFORM_ID_CHARS), nullable=False, default=""),
    Column("platform_session_id", String(PLATFORM_ID_CHARS), nullable=False, default=""),
    UniqueConstraint("study_id", "number", name="uq_participant_number"),
    CheckConstraint("number >= 0", name="ck_participant_number"),
)

answer_table = Table(
    "answers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_id", String(64), ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("participant_id", String(64), ForeignKey("participants.id", ondelete="CASCADE"), nullable=False),
    Column("task_index", Integer, nullable=False),
    Column("item", Integer, nullable=False),
    Column("condition", String(32), nullable=False),
    Column("training", Boolean, nullable=False),
    Column("patch_order", String(32), nullable=False),
    Column("answer", String(16), nullable=False),
    Column("response_ms", Integer, nullable=False),
    Column("answered_at", DateTime, nullable=False),  # UTC
    UniqueConstraint("study_id", "participant_id", "task_index", name="uq_answer_task"),
    CheckConstraint("answer IN ('A', 'B', 'undecided')", name="ck_answer_value"),
    CheckConstraint(f"patch_order IN ('{TRUTH_FIRST}', '{TRUTH_SECOND}')", name="ck_answer_patch_order"),
    CheckConstraint("response_ms >= 0", name="ck_answer_response_ms"),
    CheckConstraint("task_index >= 0", name="ck_answer_task_index"),
)


# ----------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class StudySummary:
    """A line of the list of studies."""

    id: str
    title: str
    model: str
    created: datetime
    closed: bool
    participants: int
    answers: int
    registered: int = 0
    """participants: those with at least one answer (training included); registered: everyone who pressed Start."""


def database_url(env: Mapping[str, str] | None = None) -> str:
    """The database URL from the settings (see the module docstring). ``postgresql://`` URLs get the psycopg
    (version 3) driver, the one installed with the app."""
    env = os.environ if env is None else env
    setting = env.get(DB_ENV, "").strip()
    if not setting:
        folder = Path(env.get(DATA_ENV, "").strip() or DEFAULT_DATA_DIR)
        return f"sqlite:///{(folder / SQLITE_FILE).resolve()}"
    if "://" not in setting:
        return f"sqlite:///{Path(setting).expanduser().resolve()}"
    if setting.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + setting.split("://", 1)[1]
    return setting


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _utc(moment: datetime) -> datetime:
    """A UTC datetime from the database (stored naive) or from a caller (aware)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _naive(moment: datetime) -> datetime:
    return _utc(moment).replace(tzinfo=None)


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # Transactions are begun by the "begin" hook below, not by the driver (see the module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        immediate = connection.get_execution_options().get("spade_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class StudyStore:
    """Studies, participants and answers in one database (thread-safe: share one store per process).

    url: an SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://user@host:port/db``); the tables are
    created when missing.
    """

    def __init__(self, url: str):
        self.url = url
        try:
            backend = make_url(url).get_backend_name()
        except Exception as exc:  # sqlalchemy raises ArgumentError and others for a malformed URL
            raise ConfigError(f"Not a database URL: {url!r} ({exc}).") from exc
        self.backend = backend
        if backend == "sqlite":
            self.engine = _sqlite_engine(url)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._writer = self.engine.execution_options(spade_write=True)
        self._create_tables()

    @classmethod
    def from_settings(cls, env: Mapping[str, str] | None = None) -> StudyStore:
        return cls(database_url(env))

    @property
    def display_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def _create_tables(self) -> None:
        for attempt in range(3):
            try:
                metadata.create_all(self._writer)
                self._add_platform_columns()
                return
            except (IntegrityError, ProgrammingError, OperationalError):
                # Two processes creating the schema at once: the loser sees "already exists"; check again.
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def _add_platform_columns(self) -> None:
        """Add the platform-id columns to a participants table made before they existed."""
        with self.engine.connect() as conn:
            present = {c["name"] for c in inspect(conn).get_columns("participants")}
        missing = [c for c in PLATFORM_COLUMNS.values() if c not in present]
        for column in missing:
            with self._writer.begin() as conn:
                conn.execute(text(f"ALTER TABLE participants ADD COLUMN {column} "
                                  f"VARCHAR({PLATFORM_ID_CHARS}) NOT NULL DEFAULT ''"))
            log.info("added column participants.%s", column)

    # ------------------------------------------------------------------------------------------- studies
    def save_study(self, study: Study) -> None:
        """Store a new study (its design as one archive blob). Raises StudyExistsError for a known id."""
        with self._writer.begin() as conn:
            self._insert_study(conn, study)

    def _insert_study(self, conn, study: Study) -> None:
        if conn.execute(select(study_table.c.id).where(study_table.c.id == study.id)).first() is not None:
            raise StudyExistsError(f"A study with id {study.id} already exists in this database.")
        conn.execute(study_table.insert().values(id=study.id, title=study.config.title, model=study.model,
                                             created=_naive(study.created), closed=study.closed,
                                             seed=int(study.config.seed), archive=write_archive(study)))

    def load_study(self, study_id: str) -> Study:
        """The study with its current closed flag. Raises StudyNotFoundError."""
        with self.engine.connect() as conn:
            row = conn.execute(select(study_table.c.archive, study_table.c.closed)
                               .where(study_table.c.id == study_id)).first()
        if row is None:
            raise StudyNotFoundError(f"There is no study {study_id!r} in this database.")
        study = read_archive(bytes(row.archive)).study
        return replace(study, closed=bool(row.closed))

    def is_closed(self, study_id: str) -> bool:
        with self.engine.connect() as conn:
            closed = conn.execute(select(study_table.c.closed).where(study_table.c.id == study_id)).scalar()
        if closed is None:
            raise StudyNotFoundError(f"There is no study {study_id!r} in this database.")
        return bool(closed)

    def list_studies(self) -> list[StudySummary]:
        """Every study, newest first, with its numbers of participants (those who answered at least once, and all
        registered ones) and (real and training) answers."""
        n_registered = (select(func.count()).select_from(participant_table)
                        .where(participant_table.c.study_id == study_table.c.id).scalar_subquery())
        n_participants = (select(func.count(func.distinct(answer_table.c.participant_id)))
                          .where(answer_table.c.study_id == study_table.c.id).scalar_subquery())
        n_answers = (select(func.count()).select_from(answer_table)
                     .where(answer_table.c.study_id == study_table.c.id).scalar_subquery())
        t = study_table.c
        query = (select(t.id, t.title, t.model, t.created, t.closed, n_participants.label("n_participants"),
                        n_answers.label("n_answers"), n_registered.label("n_registered"))
                 .order_by(t.created.desc(), t.id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [StudySummary(id=r.id, title=r.title, model=r.model, created=_utc(r.created), closed=bool(r.closed),
                             participants=int(r.n_participants), answers=int(r.n_answers),
                             registered=int(r.n_registered)) for r in rows]

    def set_closed(self, study_id: str, closed: bool = True) -> None:
        """Close (or reopen) a study."""
        with self._writer.begin() as conn:
            done = conn.execute(update(study_table).where(study_table.c.id == study_id).values(closed=bool(closed)))
        if done.rowcount != 1:
            raise StudyNotFoundError(f"There is no study {study_id!r} in this database.")

    # ------------------------------------------------------------------------------------------- participants
    def register_participant(self, study_id: str, platform: PlatformIds = PlatformIds()) -> Participant:
        """A new participant with the next free number of the study and its derived seed; ``platform``: the
        recruiting platform's ids from their link. Raises StudyClosedError for a closed study."""
        if any(len(v) > PLATFORM_ID_CHARS for v in vars(platform).values()):
            raise ConfigError(f"A platform id has at most {PLATFORM_ID_CHARS} characters.")
        for _ in range(20):
            try:
                with self._writer.begin() as conn:
                    row = conn.execute(select(study_table.c.closed, study_table.c.seed)
                                       .where(study_table.c.id == study_id)).first()
                    if row is None:
                        raise StudyNotFoundError(f"There is no study {study_id!r} in this database.")
                    if row.closed:
                        raise StudyClosedError("This study is closed and accepts no new participants.")
                    last = conn.execute(select(func.max(participant_table.c.number))
                                        .where(participant_table.c.study_id == study_id)).scalar()
                    number = 0 if last is None else int(last) + 1
                    seed = participant_seed(int(row.seed), number)
                    participant = Participant(id=secrets.token_urlsafe(12), study_id=study_id, number=number,
                                              seed=seed, created=datetime.now(UTC), platform=platform)
                    conn.execute(participant_table.insert().values(**_participant_row(participant)))
                return participant
            except IntegrityError:
                log.debug("participant number race on study %s; retrying", study_id)
        raise SpadeError("Could not register a participant: the database is too busy, try again.")

    def participant(self, study_id: str, participant_id: str) -> Participant | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(participant_table).where(participant_table.c.id == participant_id,
                                                          participant_table.c.study_id == study_id)).first()
        return None if row is None else _participant(row)

    def participants(self, study_id: str) -> list[Participant]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(participant_table).where(participant_table.c.study_id == study_id)
                                .order_by(participant_table.c.number)).all()
        return [_participant(r) for r in rows]

    # ------------------------------------------------------------------------------------------- answers
    def record_answer(self, study_id: str, participant_id: str, task: Task, answer: str, response_ms: int) -> bool:
        """Store one answer in its own transaction: True when stored, False when this task already had an
        answer (the first one is kept). Raises StudyClosedError, StudyNotFoundError (unknown participant of
        this study) or ConfigError (an answer outside ANSWERS, a negative time)."""
        if answer not in ANSWERS:
            raise ConfigError(f"An answer is one of {', '.join(ANSWERS)}; got {answer!r}.")
        response_ms = int(response_ms)
        if not 0 <= response_ms <= MAX_RESPONSE_MS:
            raise ConfigError(f"The response time must be between 0 and 24 h, got {response_ms} ms.")
        values = dict(study_id=study_id, participant_id=participant_id, task_index=int(task.index),
                      item=int(task.item), condition=task.condition, training=bool(task.training),
                      patch_order=task.patch_order, answer=answer, response_ms=response_ms, answered_at=_utcnow())
        with self._writer.begin() as conn:
            closed = conn.execute(
                select(study_table.c.closed).join(participant_table, participant_table.c.study_id == study_table.c.id)
                .where(study_table.c.id == study_id, participant_table.c.id == participant_id)).first()
            if closed is None:
                raise StudyNotFoundError(f"Participant {participant_id!r} is not part of study {study_id!r}.")
            if closed.closed:
                raise StudyClosedError("This study is closed and accepts no more answers.")
            return self._insert_ignoring_duplicate(conn, values)

    def _insert_ignoring_duplicate(self, conn, values: dict) -> bool:
        keys = ["study_id", "participant_id", "task_index"]
        if self.backend in ("sqlite", "postgresql"):
            if self.backend == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            statement = insert(answer_table).values(**values).on_conflict_do_nothing(index_elements=keys)
            # RETURNING gives a row only when the row was inserted (rowcount is unreliable with RETURNING).
            return conn.execute(statement.returning(answer_table.c.id)).first() is not None
        try:  # other databases: a savepoint keeps the transaction usable after the duplicate
            with conn.begin_nested():
                conn.execute(answer_table.insert().values(**values))
            return True
        except IntegrityError:
            return False

    def answered(self, study_id: str, participant_id: str) -> set[int]:
        """Task indices this participant has answered."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(answer_table.c.task_index).where(answer_table.c.study_id == study_id,
                                                                   answer_table.c.participant_id == participant_id))
            return {int(r.task_index) for r in rows}

    def next_task(self, study_id: str, participant_id: str, tasks: Sequence[Task]) -> Task | None:
        """The first of ``tasks`` without an answer (None: all done): where a returning participant resumes."""
        done = self.answered(study_id, participant_id)
        return next((t for t in tasks if t.index not in done), None)

    def answers(self, study_id: str, *, include_training: bool = True) -> list[Answer]:
        """Every answer of the study, ordered by participant number and task index."""
        query = (select(answer_table, participant_table.c.number,
                        *(participant_table.c[c] for c in PLATFORM_COLUMNS.values()))
                 .join(participant_table, participant_table.c.id == answer_table.c.participant_id)
                 .where(answer_table.c.study_id == study_id)
                 .order_by(participant_table.c.number, answer_table.c.task_index))
        if not include_training:
            query = query.where(answer_table.c.training.is_(False))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Answer(study_id=r.study_id, participant_id=r.participant_id, participant_number=int(r.number),
                       task_index=int(r.task_index), item=int(r.item), condition=r.condition,
                       training=bool(r.training), patch_order=r.patch_order, answer=r.answer,
                       response_ms=int(r.response_ms), answered_at=_utc(r.answered_at), platform=_platform(r))
                for r in rows]

    # ------------------------------------------------------------------------------------------- files
    def export_study(self, study_id: str) -> bytes:
        """The study with its participants and answers as one zip file (``spade_study.archive``)."""
        return write_archive(self.load_study(study_id), self.participants(study_id), self.answers(study_id))

    def import_study(self, data: bytes) -> Study:
        """Store a study exported by :meth:`export_study` (on this machine or another), with its participants
        and answers, in one transaction. Raises StudyExistsError when its id is already here, StudyArchiveError
        for a refused file or when one of its participants' ids is already here; nothing is stored then."""
        archive = read_archive(data)
        with self._writer.begin() as conn:
            self._insert_study(conn, archive.study)
            ids = [p.id for p in archive.participants]
            for start in range(0, len(ids), 500):  # a bounded number of parameters per query
                taken = conn.execute(select(participant_table.c.id)
                                     .where(participant_table.c.id.in_(ids[start:start + 500]))).scalar()
                if taken is not None:
                    raise StudyArchiveError(f"The study file's participant {taken!r} is already in this database "
                                            "(in another study).")
            if archive.participants:
                conn.execute(participant_table.insert(), [_participant_row(p) for p in archive.participants])
            if archive.answers:
                conn.execute(answer_table.insert(), [
                    dict(study_id=archive.study.id, participant_id=a.participant_id, task_index=a.task_index,
                         item=a.item, condition=a.condition, training=a.training, patch_order=a.patch_order,
                         answer=a.answer, response_ms=a.response_ms, answered_at=_naive(a.answered_at))
                    for a in archive.answers])
        return archive.study


def _platform(row) -> PlatformIds:
    return PlatformIds(**{field: getattr(row, column) or "" for field, column in PLATFORM_COLUMNS.items()})


def _participant(row) -> Participant:
    return Participant(id=row.id, study_id=row.study_id, number=int(row.number), seed=int(row.seed),
                       created=_utc(row.created), platform=_platform(row))


def _participant_row(p: Participant) -> dict:
    return dict(id=p.id, study_id=p.study_id, number=p.number, seed=p.seed, created=_naive(p.created),
                **{column: getattr(p.platform, field) for field, column in PLATFORM_COLUMNS.items()})
