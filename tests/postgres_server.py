"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl start`` on
127.0.0.1 and a free port (Unix socket in the same folder), one fresh database per request, stopped and
deleted at the end. Uses the Debian ``postgresql`` package's binaries (``make test`` installs it).

initdb refuses to run as root: as root the server runs as the ``postgres`` system user (the Debian package
creates it) in a folder owned by that user; as any other user it runs as that user.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The folder with initdb and pg_ctl: $SPADE_PG_BIN, the newest /usr/lib/postgresql/<version>/bin, or PATH."""
    candidates = []
    if os.environ.get("SPADE_PG_BIN"):
        candidates.append(Path(os.environ["SPADE_PG_BIN"]))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin_dir = Path(bin_dir)
        self.root = Path(tempfile.mkdtemp(prefix="spade-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._prefix: list[str] = []
        self._names = itertools.count()
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError as exc:
                raise RuntimeError(f"running as root, PostgreSQL needs the '{SERVER_USER}' system user "
                                   "(created by the Debian postgresql package)") from exc
            os.chown(self.root, user.pw_uid, user.pw_gid)
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            if Path(runuser).exists():
                self._prefix = [runuser, "-u", SERVER_USER, "--"]
            else:
                self._prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._prefix, str(self.bin_dir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{tail}")

    def start(self) -> PostgresServer:
        """initdb (the first time) and start; waits until the server accepts connections."""
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", options, "start")
        return self

    def crash(self) -> None:
        """Stop the server like a crash ("immediate": no checkpoint; the next start replays its WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL (psycopg 3 driver)."""
        import psycopg

        name = f"spade_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
