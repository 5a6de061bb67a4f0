"""The researcher password of the Human study page: only its argon2 hash is ever stored or compared.

Whoever runs the server sets ``SPADE_RESEARCHER_PASSWORD_HASH`` to a hash made by this module::

    python -m spade_study.password            # asks for the password twice, prints the hash
    echo -n secret | python -m spade_study.password --stdin

Without the setting the researcher pages stay open to browsers on the server's own machine (see the README's
Human study section).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Mapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from spade.errors import ConfigError

PASSWORD_ENV = "SPADE_RESEARCHER_PASSWORD_HASH"
MIN_PASSWORD_CHARS = 8
_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """The argon2id hash (an ``$argon2id$...`` string, salted) of ``password`` (at least 8 characters)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"The password needs at least {MIN_PASSWORD_CHARS} characters.")
    return _HASHER.hash(password)


def check_hash(password_hash: str) -> str:
    """The stripped hash; ConfigError when it is not an argon2 hash (e.g. the password itself was set)."""
    password_hash = password_hash.strip()
    try:
        _HASHER.check_needs_rehash(password_hash)  # parses the parameters: fails on anything but an argon2 hash
    except (InvalidHashError, ValueError) as exc:
        raise ConfigError(f"{PASSWORD_ENV} is not an argon2 hash; make one with `python -m spade_study.password`."
                          ) from exc
    if not password_hash.startswith("$argon2"):
        raise ConfigError(f"{PASSWORD_ENV} is not an argon2 hash; make one with `python -m spade_study.password`.")
    return password_hash


def configured_hash(env: Mapping[str, str] | None = None) -> str | None:
    """The researcher password hash of the settings; None when none is set (the open local default).
    Raises ConfigError for a setting that is not an argon2 hash."""
    value = (os.environ if env is None else env).get(PASSWORD_ENV, "").strip()
    return check_hash(value) if value else None


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (argon2's own constant-time verify)."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spade_study.password",
                                     description=f"Print the argon2 hash of a researcher password for {PASSWORD_ENV}.")
    parser.add_argument("--stdin", action="store_true", help="read the password from standard input (one line)")
    args = parser.parse_args(argv)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Researcher password: ")
        if getpass.getpass("Again: ") != password:
            sys.stderr.write("The two passwords differ.\n")
            return 1
    try:
        sys.stdout.write(hash_password(password) + "\n")
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stderr.write(f"Set it for the server, e.g.: export {PASSWORD_ENV}='<the line above>'\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
