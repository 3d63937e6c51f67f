"""The fleet's state store: PostgreSQL through psycopg 3 and a psycopg_pool connection pool.

Chunks are claimed with the standard lease pattern, ``SELECT … FOR UPDATE OF c SKIP LOCKED``:
concurrent workers never wait for or claim the same row, and a claim is one short transaction.
Migrations take ``pg_advisory_xact_lock`` first, so replicas starting together apply each one
once. Every time in the schema is the database's clock (``clock_timestamp()``), so replicas with
skewed clocks agree on when a lease runs out.

Connections are checked when taken from the pool; any connection or pool error becomes
:class:`~xaiserve.jobs.store.StoreUnavailable` (gRPC UNAVAILABLE) with a message naming the
server (password removed). The pool reconnects by itself once the database is back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from xaiserve.jobs.sql_store import Cursor, SqlStateStore
from xaiserve.jobs.store import StoreUnavailable, redact

MIGRATION_LOCK_KEY = 0x78616973  # "xais": the advisory lock every replica takes to migrate
POOL_SIZE = 8
CONNECT_TIMEOUT_S = 3
POOL_TIMEOUT_S = 5.0
RECONNECT_TIMEOUT_S = 8.0


class _PgCursor:
    """``?`` placeholders → psycopg's ``%s``."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))  # type: ignore[arg-type]

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


class PostgresStateStore(SqlStateStore):
    NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
    LOCK_OP = " FOR UPDATE"
    SKIP_LOCKED = " FOR UPDATE OF c SKIP LOCKED"
    BLOB = "BYTEA"

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = redact(url)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=POOL_TIMEOUT_S,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "xaiserve"},
            check=ConnectionPool.check_connection,
            # Give up a reconnection attempt after this (its backoff doubles from 1 s): new
            # requests start fresh attempts, so a database that comes back is used within
            # seconds instead of after a long backoff.
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            open=False,
            name="xaiserve-state",
        )
        self._pool.open(wait=False)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(
            f"the operation store ({self.url}) is unreachable: {detail}. Operations are "
            "unavailable until it is back; Explain, Predict and Score still work"
        )

    @contextlib.contextmanager
    def _connection(self, lock: bool) -> Iterator[Cursor]:
        try:
            with self._pool.connection() as conn, conn.cursor() as raw:
                cur = _PgCursor(raw)
                if lock:
                    cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
                yield cur
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise self._unavailable(exc) from exc

    def _tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._connection(lock=False)

    def _migration_tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._connection(lock=True)

    def close(self) -> None:
        self._pool.close(timeout=2.0)
