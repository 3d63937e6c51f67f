"""Versioned schema migrations of the state store, applied at start-up.

Each migration is ``(version, name, statements)``; ``{blob}`` in a statement is the dialect's
binary type (``BYTEA`` / ``BLOB``). Applied versions are recorded in ``schema_migrations``. The
whole check-and-apply runs in one transaction under a lock that every replica takes first
(PostgreSQL: ``pg_advisory_xact_lock``; SQLite: ``BEGIN EXCLUSIVE``), so replicas starting
together apply each migration once, and the others wait, then find nothing to do. PostgreSQL
DDL is transactional: a failed migration leaves the schema as it was.

A database whose schema is newer than this code knows (a rollback to an older image after a
newer one migrated) is refused with a message instead of being written to.

Add a migration by appending to :data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "operations, chunks, staged items",
        (
            """CREATE TABLE operations (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                state TEXT NOT NULL,
                owner TEXT NOT NULL DEFAULT '',
                spec TEXT NOT NULL DEFAULT '{}',
                done BIGINT NOT NULL DEFAULT 0,
                total BIGINT NOT NULL DEFAULT 0,
                message TEXT NOT NULL DEFAULT '',
                progress TEXT NOT NULL DEFAULT '{}',
                item_result TEXT,
                result TEXT,
                error_code TEXT NOT NULL DEFAULT '',
                error_message TEXT NOT NULL DEFAULT '',
                created DOUBLE PRECISION NOT NULL,
                updated DOUBLE PRECISION NOT NULL,
                revision BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX operations_owner_created ON operations (owner, created, id)",
            "CREATE INDEX operations_created ON operations (created, id)",
            "CREATE INDEX operations_state ON operations (state)",
            """CREATE TABLE chunks (
                operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
                idx INTEGER NOT NULL,
                start_item INTEGER NOT NULL,
                end_item INTEGER NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                lease_owner TEXT NOT NULL DEFAULT '',
                lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                items_done INTEGER NOT NULL DEFAULT 0,
                result TEXT,
                PRIMARY KEY (operation_id, idx)
            )""",
            "CREATE INDEX chunks_status ON chunks (status, lease_expires)",
            """CREATE TABLE staged_items (
                operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
                idx INTEGER NOT NULL,
                name TEXT NOT NULL,
                label INTEGER,
                image {blob} NOT NULL,
                mask {blob},
                PRIMARY KEY (operation_id, idx)
            )""",
        ),
    ),
    (
        2,
        "a running operation's done is summed from its chunks on read",
        (
            # Before: the column held the chunks' sum while running; now it holds only what
            # the operation counts itself, and reads add the chunks (jobs/sql_store.py).
            "UPDATE operations SET done = 0 WHERE state IN ('PENDING', 'RUNNING') "
            "AND EXISTS (SELECT 1 FROM chunks c WHERE c.operation_id = operations.id)",
        ),
    ),
)

LATEST = MIGRATIONS[-1][0]

CREATE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied DOUBLE PRECISION NOT NULL
)"""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer xaiserve than this one."""


def check_not_newer(applied: set[int]) -> None:
    newer = sorted(v for v in applied if v > LATEST)
    if newer:
        raise SchemaTooNew(
            f"the state store's schema is at version {max(newer)}, newer than this xaiserve "
            f"knows ({LATEST}): run the newer image, or restore the database it had"
        )
