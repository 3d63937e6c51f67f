"""A real PostgreSQL server for the tests, brought up and torn down by the tests themselves.

The server is Debian's ``postgresql`` package (PostgreSQL 15 on Debian 12): it is already on a
fresh machine of the kind CI runs on, and when it is missing and we are root (CI is), it is
installed with ``apt-get install postgresql``. We never use the system cluster: ``initdb``
makes a throw-away cluster in a temporary folder and ``postgres`` listens only on a Unix socket
in that folder (no TCP port at all, so parallel runs never collide). PostgreSQL refuses to run
as root, so as root the cluster belongs to the ``postgres`` system user and its commands run
through ``runuser``.

``PostgresServer.stop()`` / ``start()`` take the database away and bring it back (the
"database lost while serving" tests); ``database()`` creates a fresh database per test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PORT = 5432  # only names the socket file inside our own folder


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_installed() -> Path:
    """The folder of ``initdb``/``postgres``; installs Debian's package when root and missing."""
    bindir = _bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0:
        raise RuntimeError(
            "the tests need PostgreSQL's server programs (initdb, postgres): "
            "install Debian's 'postgresql' package (sudo apt-get install postgresql)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        check=True,
        env=env,
        capture_output=True,
    )
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("apt-get installed postgresql but initdb is still missing")
    return bindir


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = ensure_installed()
        self.root = Path(tempfile.mkdtemp(prefix="xaiserve-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.as_postgres = os.geteuid() == 0
        self.user = "postgres" if self.as_postgres else os.environ.get("USER", "postgres")
        os.chmod(self.root, 0o777)
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
             "-E", "UTF8", "--no-sync"]
        )
        self.log = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _cmd(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else argv

    def _run(self, argv: list[str]) -> None:
        subprocess.run(self._cmd(argv), check=True, capture_output=True)

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.log, "ab")  # noqa: SIM115 - the server process owns it
        self.process = subprocess.Popen(
            self._cmd(
                [
                    str(self.bindir / "postgres"),
                    "-D", str(self.data),
                    "-k", str(self.socket_dir),
                    "-p", str(PORT),
                    "-c", "listen_addresses=",
                    "-c", "fsync=off",
                    "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off",
                    "-c", "max_connections=300",
                    "-c", "shared_buffers=64MB",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start in 30 s: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT: connections are cut, like a database that went away)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 2)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)
        self.process = None

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}&port={PORT}"

    def database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
