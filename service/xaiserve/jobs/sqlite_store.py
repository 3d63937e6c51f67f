"""The embedded state store: one SQLite file under the data directory (the default).

One connection per process, in WAL mode, every transaction ``BEGIN IMMEDIATE`` (SQLite has one
writer at a time, so a claim's select-then-update cannot interleave with another's, in this
process or another one on the same host); ``busy_timeout`` waits for another process's writer.
An empty path is an in-memory database for one process (tests, ``operations`` without a data
directory). SQLite files must not be shared over a network file system: a fleet on several
hosts uses PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from xaiserve.jobs.sql_store import Cursor, SqlStateStore
from xaiserve.jobs.store import StoreUnavailable

BUSY_TIMEOUT_S = 30.0


class SqliteStateStore(SqlStateStore):
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    BLOB = "BLOB"

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite://{path}" if path else "sqlite://:memory:"
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                path or ":memory:",
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            if path:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the state store {self.url}: {exc}") from exc

    @contextlib.contextmanager
    def _begin(self, mode: str) -> Iterator[Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(f"BEGIN {mode}")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the state store {self.url} is unavailable: {exc}") from exc
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            try:
                cur.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._conn.rollback()
                raise StoreUnavailable(f"the state store {self.url} is unavailable: {exc}") from exc
            finally:
                cur.close()

    def _tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._begin("IMMEDIATE")

    def _migration_tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._begin("EXCLUSIVE")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
