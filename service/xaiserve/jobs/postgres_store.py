"""The fleet's state store: PostgreSQL through psycopg 3 and a psycopg_pool connection pool.

Chunks are claimed with the standard lease pattern, ``SELECT … FOR UPDATE OF c SKIP LOCKED``:
concurrent workers never wait for or claim the same row, and a claim is one short transaction.
Migrations take ``pg_advisory_xact_lock`` first, so replicas starting together apply each one
once. Every time in the schema is the database's clock (``clock_timestamp()``), so replicas with
skewed clocks agree on when a lease runs out.

Connections are checked when taken from the pool; any connection or pool error becomes
:class:`~xaiserve.jobs.store.StoreUnavailable` (gRPC UNAVAILABLE) with a message naming the
server (password removed). The pool reconnects by itself once the database is back.

Round trips are what a worker waits for, so the hot path keeps them few: connections are in
autocommit and a statement that is atomic by itself runs without BEGIN/COMMIT; a claim, and a
heartbeat carrying the chunk's progress, are each one statement (data-modifying CTEs); a
completion is its lock plus one statement. Taking a connection from the pool checks it without a
round trip (:func:`_idle_check`).
"""

from __future__ import annotations

import contextlib
import json
import select
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from xaiserve.jobs.sql_store import Cursor, SqlStateStore, _dumps_or_none, _in
from xaiserve.jobs.store import ACTIVE, Chunk, Heartbeat, StoreUnavailable, dumps, redact

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

    def sibling(self) -> _PgCursor:
        """Another cursor on the same connection (in a pipeline, each keeps its results)."""
        return _PgCursor(self._cur.connection.cursor())


def _idle_check(conn: psycopg.Connection[Any]) -> None:
    """A pooled connection is usable unless closed, or unless its socket has something to read:
    an idle connection in autocommit receives nothing, so readable data is the server's
    goodbye (a restart or shutdown sends an error and closes) or EOF. One ``poll`` system call
    instead of psycopg_pool's ``check_connection`` round trip on every checkout; a connection
    that fails is closed, so the pool drops it, takes another and refills itself."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        conn.close()  # closed, the pool discards it and connects anew (open, it would reuse it)
        raise psycopg.OperationalError("the server closed the connection")


_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"

# One statement: pick a claimable chunk (skipping rows other workers hold), lease it, and mark
# its operation RUNNING (or bump its revision when a re-claim resets progress).
_CLAIM = f"""
WITH pick AS (
    SELECT c.operation_id, c.idx, c.items_done FROM chunks c
    JOIN operations o ON o.id = c.operation_id
    WHERE o.state IN {_in(ACTIVE)} AND (c.status = 'pending'
        OR (c.status = 'running' AND c.lease_expires < {_NOW}))
    ORDER BY o.created, c.operation_id, c.idx LIMIT 1 FOR UPDATE OF c SKIP LOCKED
), claimed AS (
    UPDATE chunks c SET status = 'running', lease_owner = ?, lease_expires = {_NOW} + ?,
        attempts = c.attempts + 1, items_done = 0
    FROM pick p WHERE c.operation_id = p.operation_id AND c.idx = p.idx
    RETURNING c.operation_id, c.idx, c.start_item, c.end_item, c.attempts, p.items_done AS before
), started AS (
    UPDATE operations o SET state = 'RUNNING', updated = {_NOW}, revision = o.revision + 1
    FROM claimed cl WHERE o.id = cl.operation_id
        AND (o.state = 'PENDING' OR (cl.before > 0 AND o.state IN {_in(ACTIVE)}))
)
SELECT cl.operation_id, cl.idx, cl.start_item, cl.end_item, cl.attempts, o.kind, o.spec
FROM claimed cl JOIN operations o ON o.id = cl.operation_id
"""

# One statement: extend the lease (unless NULL), record the progress while the lease is ours
# (bumping the operation's revision for watchers), and read the operation's state.
_BEAT = f"""
WITH beat AS (
    UPDATE chunks SET lease_expires = COALESCE({_NOW} + ?, lease_expires),
        items_done = COALESCE(?, items_done)
    WHERE operation_id = ? AND idx = ? AND lease_owner = ? AND status = 'running'
    RETURNING idx
), moved AS (
    UPDATE operations SET item_result = COALESCE(?, item_result), updated = {_NOW},
        revision = revision + 1
    WHERE id = ? AND ? AND state IN {_in(ACTIVE)} AND EXISTS (SELECT 1 FROM beat)
)
SELECT EXISTS (SELECT 1 FROM beat), (SELECT state FROM operations WHERE id = ?)
"""

# After the operation's row lock (its own statement, see SqlStateStore._lock_and_store): store
# the result unless done already, bump the operation, count its other chunks not done.
_STORE_RESULT = f"""
WITH stored AS (
    UPDATE chunks SET status = 'done', result = ?, items_done = end_item - start_item,
        lease_owner = ''
    WHERE operation_id = ? AND idx = ? AND status <> 'done'
    RETURNING idx
), bumped AS (
    UPDATE operations SET item_result = COALESCE(?, item_result), updated = {_NOW},
        revision = revision + 1
    WHERE id = ? AND state IN {_in(ACTIVE)} AND EXISTS (SELECT 1 FROM stored)
)
SELECT (SELECT COUNT(*) FROM stored),
    (SELECT COUNT(*) FROM chunks WHERE operation_id = ? AND status <> 'done' AND idx <> ?)
"""


class PostgresStateStore(SqlStateStore):
    NOW = _NOW
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
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "application_name": "xaiserve",
                "autocommit": True,
            },
            check=_idle_check,
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
    def _connection(
        self, transaction: bool, lock: bool = False, pipeline: bool = False
    ) -> Iterator[_PgCursor]:
        try:
            with (
                self._pool.connection() as conn,
                conn.pipeline() if pipeline else contextlib.nullcontext(),
                conn.transaction() if transaction else contextlib.nullcontext(),
                conn.cursor() as raw,
            ):
                cur = _PgCursor(raw)
                if lock:
                    cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
                yield cur
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise self._unavailable(exc) from exc

    def _tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._connection(transaction=True)

    def _stmt(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._connection(transaction=False)

    def _migration_tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._connection(transaction=True, lock=True)

    def _completion_tx(self) -> contextlib.AbstractContextManager[Cursor]:
        # Pipeline mode: BEGIN, the row lock and the store statement go out together and come
        # back in one round trip (statements still run in order, each with its own snapshot).
        return self._connection(transaction=True, pipeline=True)

    # -- the hot path in fewer round trips (same semantics as SqlStateStore's) --------------------
    def claim_chunk(self, worker: str, lease_seconds: float) -> Chunk | None:
        with self._stmt() as cur:
            cur.execute(_CLAIM, (*ACTIVE, worker, lease_seconds, *ACTIVE))
            row = cur.fetchone()
        if row is None:
            return None
        op_id, idx, start, end, attempts, kind, spec = row
        return Chunk(op_id, int(idx), int(start), int(end), int(attempts), kind, json.loads(spec))

    def heartbeat(
        self,
        chunk: Chunk,
        worker: str,
        lease_seconds: float | None,
        items_done: int | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> Heartbeat:
        moved = items_done is not None or item_result is not None
        with self._stmt() as cur:
            cur.execute(
                _BEAT,
                (
                    lease_seconds, items_done, chunk.operation_id, chunk.index, worker,
                    _dumps_or_none(item_result), chunk.operation_id, moved, *ACTIVE,
                    chunk.operation_id,
                ),
            )
            held, state = cur.fetchone()
        return Heartbeat(held=bool(held), state=state or "DELETED")

    def _lock_and_store(
        self, cur: Cursor, chunk: Chunk, result: Any, item_result: dict[str, Any] | None
    ) -> tuple[str | None, bool, int]:
        assert isinstance(cur, _PgCursor)
        cur.execute(
            f"SELECT state FROM operations WHERE id = ?{self.LOCK_OP}", (chunk.operation_id,)
        )
        store = cur.sibling()
        store.execute(
            _STORE_RESULT,
            (
                dumps(result), chunk.operation_id, chunk.index, _dumps_or_none(item_result),
                chunk.operation_id, *ACTIVE, chunk.operation_id, chunk.index,
            ),
        )
        row = cur.fetchone()  # the round trip: both statements' results
        stored, remaining = store.fetchone()
        if row is None:
            return None, False, 0
        return str(row[0]), bool(stored), int(remaining)

    def close(self) -> None:
        self._pool.close(timeout=2.0)
