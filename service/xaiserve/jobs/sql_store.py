"""The SQL shared by both state stores (see :mod:`xaiserve.jobs.store` for the contract).

A dialect supplies a transaction (``_tx``), the database clock (``NOW``, seconds since the
epoch as a double: leases use the database's clock, never a replica's), the row-lock suffixes
(``FOR UPDATE … SKIP LOCKED`` on PostgreSQL, nothing on SQLite, whose write transactions hold the
database lock) and how migrations are serialised. Statements use ``?`` placeholders.
"""

from __future__ import annotations

import abc
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

from xaiserve.jobs import migrations
from xaiserve.jobs.store import (
    ACTIVE,
    TERMINAL,
    Chunk,
    ChunkSpec,
    Completion,
    Finalizer,
    Heartbeat,
    OperationRecord,
    Page,
    StagedItem,
    StateStore,
    decode_page_token,
    dumps,
    encode_page_token,
)

_OP_COLUMNS = (
    "id, kind, state, owner, spec, done, total, message, progress, item_result, result, "
    "error_code, error_message, created, updated, revision"
)
# An operation's ``done`` as read: while it runs, its own column (operations run in one
# process) plus the items done in its chunks, summed on read so no write has to re-sum them;
# once it has ended, the column alone (the sum is folded in by the ending transition, so a
# chunk finishing after a cancel does not move it).
_CHUNKS_DONE = (
    "COALESCE((SELECT SUM(c.items_done) FROM chunks c WHERE c.operation_id = operations.id), 0)"
)
_OP_SELECT = _OP_COLUMNS.replace(
    " done,",
    f" CASE WHEN state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN done "
    f"ELSE done + {_CHUNKS_DONE} END,",
)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _record(row: Sequence[Any]) -> OperationRecord:
    return OperationRecord(
        id=row[0],
        kind=row[1],
        state=row[2],
        owner=row[3],
        spec=json.loads(row[4]),
        done=int(row[5]),
        total=int(row[6]),
        message=row[7],
        progress=json.loads(row[8]),
        item_result=_loads(row[9]),
        result=_loads(row[10]),
        error_code=row[11],
        error_message=row[12],
        created=float(row[13]),
        updated=float(row[14]),
        revision=int(row[15]),
    )


def _dumps_or_none(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join("?" for _ in values) + ")"


class SqlStateStore(StateStore):
    NOW: str
    LOCK_OP: str = ""  # suffix locking the selected operation row until commit
    SKIP_LOCKED: str = ""  # suffix for the claim sub-select
    BLOB: str = "BLOB"

    @abc.abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Cursor]:
        """A transaction; errors reaching the database raise StoreUnavailable."""

    @abc.abstractmethod
    def _migration_tx(self) -> contextlib.AbstractContextManager[Cursor]:
        """A transaction holding the migration lock."""

    def _stmt(self) -> contextlib.AbstractContextManager[Cursor]:
        """For one statement, atomic by itself: PostgreSQL runs it in autocommit (no BEGIN and
        COMMIT round trips); SQLite in a transaction like any other."""
        return self._tx()

    # -- lifecycle -----------------------------------------------------------------------------
    def migrate(self) -> int:
        with self._migration_tx() as cur:
            cur.execute(migrations.CREATE_TABLE)
            cur.execute("SELECT version FROM schema_migrations")
            applied = {int(r[0]) for r in cur.fetchall()}
            migrations.check_not_newer(applied)
            for version, name, statements in migrations.MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    cur.execute(statement.replace("{blob}", self.BLOB))
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
        return migrations.LATEST

    def schema_versions(self) -> list[int]:
        with self._tx() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            return [int(r[0]) for r in cur.fetchall()]

    def ping(self) -> None:
        with self._stmt() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    # -- operations ----------------------------------------------------------------------------
    def create_operation(
        self,
        record: OperationRecord,
        chunks: Sequence[ChunkSpec] = (),
        items: Sequence[StagedItem] = (),
    ) -> OperationRecord:
        with self._tx() as cur:
            cur.execute(
                f"INSERT INTO operations ({_OP_COLUMNS}) VALUES "
                f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {self.NOW}, 0)",
                (
                    record.id,
                    record.kind,
                    record.state,
                    record.owner,
                    dumps(record.spec),
                    record.done,
                    record.total,
                    record.message,
                    dumps(record.progress),
                    None if record.item_result is None else dumps(record.item_result),
                    None if record.result is None else dumps(record.result),
                    record.error_code,
                    record.error_message,
                    # The creating replica's clock at µs resolution: listing order only.
                    time.time(),
                ),
            )
            for item in items:
                cur.execute(
                    "INSERT INTO staged_items (operation_id, idx, name, label, image, mask) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (record.id, item.index, item.name, item.label, item.image, item.mask),
                )
            for i, chunk in enumerate(chunks):
                cur.execute(
                    "INSERT INTO chunks (operation_id, idx, start_item, end_item) "
                    "VALUES (?, ?, ?, ?)",
                    (record.id, i, chunk.start, chunk.end),
                )
            cur.execute(f"SELECT {_OP_SELECT} FROM operations WHERE id = ?", (record.id,))
            return _record(cur.fetchone())

    def get_operation(self, op_id: str) -> OperationRecord | None:
        with self._stmt() as cur:
            cur.execute(f"SELECT {_OP_SELECT} FROM operations WHERE id = ?", (op_id,))
            row = cur.fetchone()
        return None if row is None else _record(row)

    def revision(self, op_id: str) -> int | None:
        with self._stmt() as cur:
            cur.execute("SELECT revision FROM operations WHERE id = ?", (op_id,))
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def list_operations(self, owner: str | None, page_size: int, page_token: str = "") -> Page:
        where: list[str] = []
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if page_token:
            created, last = decode_page_token(page_token)
            where.append("(created > ? OR (created = ? AND id > ?))")
            params += [created, created, last]
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self._stmt() as cur:
            cur.execute(
                f"SELECT {_OP_SELECT} FROM operations {clause} ORDER BY created, id LIMIT ?",
                (*params, page_size + 1),
            )
            rows = [_record(r) for r in cur.fetchall()]
        more = len(rows) > page_size
        rows = rows[:page_size]
        token = encode_page_token(rows[-1].created, rows[-1].id) if more and rows else ""
        return Page(rows, token)

    def update_progress(
        self,
        op_id: str,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        progress: dict[str, float] | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> bool:
        sets, params = self._progress_sets(done, total, message, item_result)
        with self._tx() if progress is not None else self._stmt() as cur:
            if progress is not None:
                cur.execute(f"SELECT progress FROM operations WHERE id = ?{self.LOCK_OP}", (op_id,))
                row = cur.fetchone()
                if row is None:
                    return False
                merged = {**json.loads(row[0]), **progress}
                sets.append("progress = ?")
                params.append(dumps(merged))
            cur.execute(
                f"UPDATE operations SET {', '.join(sets)}, state = 'RUNNING', "
                f"updated = {self.NOW}, revision = revision + 1 "
                f"WHERE id = ? AND state IN {_in(ACTIVE)}",
                (*params, op_id, *ACTIVE),
            )
            return bool(cur.rowcount)

    @staticmethod
    def _progress_sets(
        done: int | None,
        total: int | None,
        message: str | None,
        item_result: dict[str, Any] | None,
    ) -> tuple[list[str], list[Any]]:
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (("done", done), ("total", total), ("message", message)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if item_result is not None:
            sets.append("item_result = ?")
            params.append(dumps(item_result))
        if not sets:
            sets.append("done = done")
        return sets, params

    def transition(
        self,
        op_id: str,
        to_state: str,
        *,
        from_states: Sequence[str] = ACTIVE,
        result: dict[str, Any] | None = None,
        error_code: str = "",
        error_message: str = "",
        message: str | None = None,
    ) -> bool:
        with self._stmt() as cur:
            return self._transition(
                cur, op_id, to_state, from_states, result, error_code, error_message, message
            )

    def _transition(
        self,
        cur: Cursor,
        op_id: str,
        to_state: str,
        from_states: Sequence[str],
        result: dict[str, Any] | None,
        error_code: str,
        error_message: str,
        message: str | None,
    ) -> bool:
        extra, params = "", []
        if message is not None:
            extra = ", message = ?"
            params.append(message)
        if to_state in TERMINAL and not set(from_states) & set(TERMINAL):
            extra += f", done = done + {_CHUNKS_DONE}"  # frozen from now on (see _OP_SELECT)
        cur.execute(
            f"UPDATE operations SET state = ?, result = ?, error_code = ?, error_message = ?"
            f"{extra}, updated = {self.NOW}, revision = revision + 1 "
            f"WHERE id = ? AND state IN {_in(from_states)}",
            (
                to_state,
                None if result is None else dumps(result),
                error_code,
                error_message,
                *params,
                op_id,
                *from_states,
            ),
        )
        return bool(cur.rowcount)

    def count_active(self) -> int:
        with self._stmt() as cur:
            cur.execute(f"SELECT COUNT(*) FROM operations WHERE state IN {_in(ACTIVE)}", ACTIVE)
            return int(cur.fetchone()[0])

    def counts(self) -> dict[tuple[str, str], int]:
        with self._stmt() as cur:
            cur.execute("SELECT kind, state, COUNT(*) FROM operations GROUP BY kind, state")
            return {(r[0], r[1]): int(r[2]) for r in cur.fetchall()}

    def delete_expired(self, max_count: int, max_age_seconds: float) -> int:
        deleted = 0
        with self._tx() as cur:
            if max_age_seconds > 0:
                cur.execute(
                    f"DELETE FROM operations WHERE state IN {_in(TERMINAL)} "
                    f"AND updated < {self.NOW} - ?",
                    (*TERMINAL, max_age_seconds),
                )
                deleted += max(cur.rowcount, 0)
            if max_count > 0:
                cur.execute(
                    f"SELECT created, id FROM operations WHERE state IN {_in(TERMINAL)} "
                    "ORDER BY created DESC, id DESC LIMIT 1 OFFSET ?",
                    (*TERMINAL, max_count - 1),
                )
                row = cur.fetchone()
                if row is not None:
                    cur.execute(
                        f"DELETE FROM operations WHERE state IN {_in(TERMINAL)} "
                        "AND (created < ? OR (created = ? AND id < ?))",
                        (*TERMINAL, row[0], row[0], row[1]),
                    )
                    deleted += max(cur.rowcount, 0)
        return deleted

    # -- chunks --------------------------------------------------------------------------------
    # An operation's ``done`` is the sum of its chunks' ``items_done``, computed on read
    # (``_OP_SELECT``); a chunk change bumps the operation's ``revision`` so watchers see it.
    def claim_chunk(self, worker: str, lease_seconds: float) -> Chunk | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT c.operation_id, c.idx, c.items_done FROM chunks c "
                "JOIN operations o ON o.id = c.operation_id "
                f"WHERE o.state IN {_in(ACTIVE)} AND (c.status = 'pending' OR "
                f"(c.status = 'running' AND c.lease_expires < {self.NOW})) "
                f"ORDER BY o.created, c.operation_id, c.idx LIMIT 1{self.SKIP_LOCKED}",
                ACTIVE,
            )
            row = cur.fetchone()
            if row is None:
                return None
            op_id, idx, before = row[0], int(row[1]), int(row[2])
            cur.execute(
                f"UPDATE chunks SET status = 'running', lease_owner = ?, "
                f"lease_expires = {self.NOW} + ?, attempts = attempts + 1, items_done = 0 "
                "WHERE operation_id = ? AND idx = ?",
                (worker, lease_seconds, op_id, idx),
            )
            cur.execute(
                "SELECT c.start_item, c.end_item, c.attempts, o.kind, o.spec FROM chunks c "
                "JOIN operations o ON o.id = c.operation_id "
                "WHERE c.operation_id = ? AND c.idx = ?",
                (op_id, idx),
            )
            start, end, attempts, kind, spec = cur.fetchone()
            # PENDING → RUNNING; a re-claimed chunk's progress went back to 0 (a change).
            cur.execute(
                f"UPDATE operations SET state = 'RUNNING', updated = {self.NOW}, "
                "revision = revision + 1 WHERE id = ? AND (state = 'PENDING' OR "
                f"(? > 0 AND state IN {_in(ACTIVE)}))",
                (op_id, before, *ACTIVE),
            )
        return Chunk(op_id, idx, int(start), int(end), int(attempts), kind, json.loads(spec))

    def heartbeat(
        self,
        chunk: Chunk,
        worker: str,
        lease_seconds: float | None,
        items_done: int | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> Heartbeat:
        moved = items_done is not None or item_result is not None
        with self._tx() as cur:
            cur.execute(
                f"UPDATE chunks SET lease_expires = COALESCE({self.NOW} + ?, lease_expires), "
                "items_done = COALESCE(?, items_done) WHERE operation_id = ? "
                "AND idx = ? AND lease_owner = ? AND status = 'running'",
                (lease_seconds, items_done, chunk.operation_id, chunk.index, worker),
            )
            held = bool(cur.rowcount)
            if held and moved:
                cur.execute(
                    "UPDATE operations SET item_result = COALESCE(?, item_result), "
                    f"updated = {self.NOW}, revision = revision + 1 "
                    f"WHERE id = ? AND state IN {_in(ACTIVE)}",
                    (_dumps_or_none(item_result), chunk.operation_id, *ACTIVE),
                )
            cur.execute("SELECT state FROM operations WHERE id = ?", (chunk.operation_id,))
            row = cur.fetchone()
        return Heartbeat(held=held, state=row[0] if row else "DELETED")

    def chunk_progress(
        self, chunk: Chunk, worker: str, items_done: int, item_result: dict[str, Any] | None
    ) -> bool:
        return self.heartbeat(chunk, worker, None, items_done, item_result).held

    def release_chunk(self, chunk: Chunk, worker: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE chunks SET status = 'pending', lease_owner = '', lease_expires = 0, "
                "items_done = 0 WHERE operation_id = ? AND idx = ? AND lease_owner = ? "
                "AND status = 'running'",
                (chunk.operation_id, chunk.index, worker),
            )
            if cur.rowcount:
                self._bump(cur, chunk.operation_id)

    def _bump(self, cur: Cursor, op_id: str, item_result: dict[str, Any] | None = None) -> None:
        cur.execute(
            f"UPDATE operations SET item_result = COALESCE(?, item_result), "
            f"updated = {self.NOW}, revision = revision + 1 "
            f"WHERE id = ? AND state IN {_in(ACTIVE)}",
            (_dumps_or_none(item_result), op_id, *ACTIVE),
        )

    def complete_chunk(
        self,
        chunk: Chunk,
        worker: str,
        result: Any,
        finalize: Finalizer | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> Completion:
        with self._completion_tx() as cur:
            state, stored, remaining = self._lock_and_store(cur, chunk, result, item_result)
            if state is None:
                return Completion(False, False, "DELETED")
            if not stored or remaining or state not in ACTIVE or finalize is None:
                return Completion(stored, False, state)
            # The last chunk: aggregate and end the operation in this same transaction, so a
            # crash here leaves the chunk undone (re-claimed after its lease), never a
            # finished-but-RUNNING operation.
            cur.execute(
                "SELECT result FROM chunks WHERE operation_id = ? ORDER BY idx",
                (chunk.operation_id,),
            )
            outcome = finalize([json.loads(r[0]) for r in cur.fetchall()])
            self._transition(
                cur,
                chunk.operation_id,
                outcome.state,
                ACTIVE,
                outcome.result,
                outcome.error_code,
                outcome.error_message,
                outcome.message,
            )
        return Completion(stored, True, outcome.state)

    def _completion_tx(self) -> contextlib.AbstractContextManager[Cursor]:
        return self._tx()

    def _lock_and_store(
        self, cur: Cursor, chunk: Chunk, result: Any, item_result: dict[str, Any] | None
    ) -> tuple[str | None, bool, int]:
        """Lock the operation row first, in its own statement: completions of one operation
        are serialised, and the statements after it see every completion committed before
        (READ COMMITTED takes a snapshot per statement), so exactly one of them sees the last
        chunk done. Then store the result unless the chunk is done already (first wins) and
        bump the operation. Returns (the operation's state or None if it is gone, stored,
        chunks of the operation still not done)."""
        cur.execute(
            f"SELECT state FROM operations WHERE id = ?{self.LOCK_OP}", (chunk.operation_id,)
        )
        row = cur.fetchone()
        if row is None:
            return None, False, 0
        cur.execute(
            "UPDATE chunks SET status = 'done', result = ?, "
            "items_done = end_item - start_item, lease_owner = '' "
            "WHERE operation_id = ? AND idx = ? AND status <> 'done'",
            (dumps(result), chunk.operation_id, chunk.index),
        )
        stored = bool(cur.rowcount)
        cur.execute(
            "SELECT COUNT(*) FROM chunks WHERE operation_id = ? AND status <> 'done'",
            (chunk.operation_id,),
        )
        remaining = int(cur.fetchone()[0])
        if stored:
            self._bump(cur, chunk.operation_id, item_result)
        return str(row[0]), stored, remaining

    def chunk_results(self, op_id: str) -> list[Any]:
        with self._stmt() as cur:
            cur.execute(
                "SELECT result FROM chunks WHERE operation_id = ? AND status = 'done' ORDER BY idx",
                (op_id,),
            )
            return [json.loads(r[0]) for r in cur.fetchall()]

    def pending_chunks(self) -> int:
        with self._stmt() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM chunks c JOIN operations o ON o.id = c.operation_id "
                f"WHERE c.status <> 'done' AND o.state IN {_in(ACTIVE)}",
                ACTIVE,
            )
            return int(cur.fetchone()[0])

    def staged_items(self, op_id: str, start: int, end: int) -> list[StagedItem]:
        with self._stmt() as cur:
            cur.execute(
                "SELECT idx, name, label, image, mask FROM staged_items WHERE operation_id = ? "
                "AND idx >= ? AND idx < ? ORDER BY idx",
                (op_id, start, end),
            )
            rows = cur.fetchall()
        return [
            StagedItem(
                int(r[0]), r[1], None if r[2] is None else int(r[2]), bytes(r[3]),
                None if r[4] is None else bytes(r[4]),
            )
            for r in rows
        ]
