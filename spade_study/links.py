"""Participant links: a signed token per participant, and the ids a recruiting platform adds to the link.

A participant's link is ``?study=<study id>&p=<token>``; the token is the pair (study id, participant id) signed
with the server's secret (``itsdangerous``), so an edited, forged or copied-across-studies token is refused and
nobody can read or answer another participant's tasks by guessing an id.

The secret (settings, environment): ``SPADE_STUDY_SECRET`` (at least 32 characters; the same on every server of
one study database), else the file ``study_secret`` in ``SPADE_DATA_DIR`` (default ``./data``), written once with
a random value the first time it is needed (mode 0600). A new secret makes every earlier participant link
invalid (answers already stored stay).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from itsdangerous import BadData, URLSafeSerializer

from spade.errors import ConfigError, SpadeError
from spade_study.assignment import PlatformIds
from spade_study.storage import DATA_ENV, DEFAULT_DATA_DIR

SECRET_ENV = "SPADE_STUDY_SECRET"
SECRET_FILE = "study_secret"
MIN_SECRET_CHARS = 32
_SALT = "spade-study-participant"

PLATFORM_PARAMS = {"participant": "PROLIFIC_PID", "study": "STUDY_ID", "session": "SESSION_ID"}
"""PlatformIds field -> the URL parameter it is read from (Prolific's names)."""
MAX_PLATFORM_ID_CHARS = 128
_PLATFORM_ID = re.compile(r"[A-Za-z0-9_.:@+-]+")


class InvalidParticipantLink(SpadeError):
    """A participant token that was not signed by this server for this study."""


def secret_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(DATA_ENV, "").strip() or DEFAULT_DATA_DIR) / SECRET_FILE


def study_secret(env: Mapping[str, str] | None = None) -> str:
    """The signing secret of the settings (see the module docstring), creating the file when needed."""
    env = os.environ if env is None else env
    value = env.get(SECRET_ENV, "").strip()
    if value:
        if len(value) < MIN_SECRET_CHARS:
            raise ConfigError(f"{SECRET_ENV} must have at least {MIN_SECRET_CHARS} characters, it has {len(value)}.")
        return value
    path = secret_path(env)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        try:
            os.link(temporary, path)  # atomic, and fails when another process was first: its secret is kept
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(f"The study secret in {path} is shorter than {MIN_SECRET_CHARS} characters; delete the file "
                          "to make a new one (earlier participant links stop working).")
    return value


class ParticipantTokens:
    """Signs and checks participant tokens with one secret."""

    def __init__(self, secret: str):
        self._serializer = URLSafeSerializer(secret, salt=_SALT)

    def token(self, study_id: str, participant_id: str) -> str:
        """The URL-safe token of this participant of this study."""
        return self._serializer.dumps([study_id, participant_id])

    def participant_id(self, study_id: str, token: str) -> str:
        """The participant id that ``token`` was signed for; InvalidParticipantLink when the token is not one
        of this server's (edited, forged, a bare participant id) or belongs to another study."""
        try:
            payload = self._serializer.loads(token)
        except BadData as exc:
            raise InvalidParticipantLink("This participant link is not valid: it has been changed or was not made "
                                         "by this study. Please open the link exactly as you were given it.") from exc
        if (not isinstance(payload, list) or len(payload) != 2 or not all(isinstance(v, str) for v in payload)
                or payload[0] != study_id):
            raise InvalidParticipantLink("This participant link belongs to another study. Please open the link "
                                         "exactly as you were given it.")
        return payload[1]


def platform_ids(params: Mapping[str, str]) -> PlatformIds:
    """The recruiting platform's ids from a participant link's query (``PROLIFIC_PID``, ``STUDY_ID``,
    ``SESSION_ID``; missing ones are ""). Raises ConfigError for a value that is not a plain id (at most 128
    letters, digits and ``_.:@+-``), e.g. a placeholder the platform did not fill in."""
    values = {}
    for field, param in PLATFORM_PARAMS.items():
        value = str(params.get(param, "") or "").strip()
        if value and (len(value) > MAX_PLATFORM_ID_CHARS or not _PLATFORM_ID.fullmatch(value)):
            raise ConfigError(f"The link's {param} is not a valid id (at most {MAX_PLATFORM_ID_CHARS} letters, digits "
                              "and _.:@+-). Please open the study from the platform again.")
        values[field] = value
    return PlatformIds(**values)
