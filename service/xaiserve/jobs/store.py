"""The state store: one interface over the operation records every replica shares.

A fleet of replicas is one service because everything an operation is lives here, not in a
process: the operation record (id, kind, state, progress, result, error, timestamps, owner,
the *spec* it can be resumed from), its *chunks* (units of work any replica's workers claim
with a lease and a heartbeat), and the client-streamed items a chunk reads.

Two implementations pass the same test suite (``tests/fleet/test_store_contract.py``):

* :class:`xaiserve.jobs.sqlite_store.SqliteStateStore` — an embedded SQLite file under a data
  directory, the default, so one process (and ``make demo``) needs nothing else;
* :class:`xaiserve.jobs.postgres_store.PostgresStateStore` — PostgreSQL for a fleet
  (``XAISERVE_STATE_URL=postgresql://…``).

Invariants every implementation keeps:

* **Atomic transitions.** A state change is one compare-and-set (``UPDATE … WHERE state IN
  (…)``): an operation ends exactly once, and is never both CANCELLED and SUCCEEDED.
* **Leases.** A chunk is claimed with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) or under SQLite's
  single writer lock; it stays with its worker while the worker heartbeats, and is claimable
  again once ``lease_expires`` (database clock) has passed, e.g. after a kill -9.
* **Results once.** A chunk's result is written only while the chunk is not yet done; the
  aggregate is computed from the stored chunk results in item order, so every item counts
  exactly once even if a chunk ran twice.
* **Versioned migrations** (:mod:`xaiserve.jobs.migrations`) run at start-up under a lock, so
  replicas starting together do not race.
"""

from __future__ import annotations

import abc
import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xaiserve.errors import InvalidInput, Unavailable

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ACTIVE = ("PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class StoreUnavailable(Unavailable):
    """The state store cannot be reached (UNAVAILABLE: the client may retry)."""


@dataclass
class OperationRecord:
    """One operation as stored (``spec`` is what a worker needs to (re)run it)."""

    id: str
    kind: str
    state: str = "PENDING"
    owner: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    total: int = 0
    message: str = ""
    progress: dict[str, float] = field(default_factory=dict)
    item_result: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error_code: str = ""
    error_message: str = ""
    created: float = 0.0
    updated: float = 0.0
    revision: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Chunk:
    """A claimed unit of work: items ``[start, end)`` of operation ``operation_id``."""

    operation_id: str
    index: int
    start: int
    end: int
    attempts: int
    kind: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class ChunkSpec:
    """A chunk to create: items ``[start, end)``."""

    start: int
    end: int


@dataclass(frozen=True)
class StagedItem:
    """A client-streamed item, stored where every replica can read it."""

    index: int
    name: str
    label: int | None
    image: bytes  # the encoded image as the client sent it (PNG/JPEG)
    mask: bytes | None  # ``numpy.save`` bytes of a (h, w) bool mask, or None


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learns: whether the lease is still ours and the operation still runs."""

    held: bool
    state: str

    @property
    def keep_going(self) -> bool:
        return self.held and self.state in ACTIVE


@dataclass(frozen=True)
class Completion:
    """Completing a chunk: was its result stored (first wins), did this completion end the
    operation, and the operation's state afterwards."""

    stored: bool
    finished: bool
    state: str


@dataclass(frozen=True)
class Outcome:
    """How a finished operation ends (what a :data:`Finalizer` returns)."""

    state: str
    result: dict[str, Any] | None = None
    error_code: str = ""
    error_message: str = ""
    message: str | None = None


Finalizer = Callable[[list[Any]], Outcome]
"""Chunk results in chunk order → the operation's outcome (runs inside the completing
transaction of the last chunk)."""


@dataclass(frozen=True)
class Page:
    operations: list[OperationRecord]
    next_token: str


def encode_page_token(created: float, op_id: str) -> str:
    raw = json.dumps([created, op_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[float, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        created, op_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return float(created), str(op_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "page_token is not a token this server returned: pass next_page_token unchanged"
        ) from exc


def json_safe(value: Any) -> Any:
    """JSON-compatible copy: numpy values become Python values, NaN/inf become null (JSON has
    no NaN, and clients parse JSON), anything else unknown becomes its text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(json_safe(value), allow_nan=False, separators=(",", ":"))


class StateStore(abc.ABC):
    """What the operations layer needs of a store (see module docs). Thread-safe."""

    url: str  # for messages; credentials removed

    # -- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> int:
        """Apply pending migrations (under a lock shared by replicas); returns the version."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- operations ----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_operation(
        self,
        record: OperationRecord,
        chunks: Sequence[ChunkSpec] = (),
        items: Sequence[StagedItem] = (),
    ) -> OperationRecord:
        """Insert the record, its chunks and staged items in one transaction."""

    @abc.abstractmethod
    def get_operation(self, op_id: str) -> OperationRecord | None: ...

    @abc.abstractmethod
    def revision(self, op_id: str) -> int | None:
        """The record's revision (bumped on every change), cheap for watchers."""

    @abc.abstractmethod
    def list_operations(
        self, owner: str | None, page_size: int, page_token: str = ""
    ) -> Page:
        """Records in creation order; ``owner=None`` lists every owner's."""

    @abc.abstractmethod
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
        """Update a running operation; False when it has already ended."""

    @abc.abstractmethod
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
        """Compare-and-set the state; True if this call made the change."""

    @abc.abstractmethod
    def count_active(self) -> int:
        """PENDING or RUNNING operations, fleet-wide."""

    @abc.abstractmethod
    def counts(self) -> dict[tuple[str, str], int]:
        """``(kind, state) → count`` over every stored operation."""

    @abc.abstractmethod
    def delete_expired(self, max_count: int, max_age_seconds: float) -> int:
        """Retention: delete ended operations beyond the newest ``max_count`` or older than
        ``max_age_seconds`` (0 = no limit); returns how many were deleted."""

    # -- chunks --------------------------------------------------------------------------------
    @abc.abstractmethod
    def claim_chunk(self, worker: str, lease_seconds: float) -> Chunk | None:
        """Claim one pending chunk (or one whose lease ran out) of an active operation."""

    @abc.abstractmethod
    def heartbeat(
        self,
        chunk: Chunk,
        worker: str,
        lease_seconds: float | None,
        items_done: int | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> Heartbeat:
        """Extend the lease (``None``: leave it) and, while it is ours, record the progress
        inside the chunk (the operation's ``done`` is the sum over its chunks) and the latest
        per-item result; tells whether the lease is still ours and the operation active."""

    @abc.abstractmethod
    def chunk_progress(self, chunk: Chunk, worker: str, items_done: int,
                       item_result: dict[str, Any] | None) -> bool:
        """Record progress inside a chunk (a heartbeat that leaves the lease); False when the
        lease is no longer ours."""

    @abc.abstractmethod
    def release_chunk(self, chunk: Chunk, worker: str) -> None:
        """Give the chunk back at once (shutdown): another worker may claim it now."""

    @abc.abstractmethod
    def complete_chunk(
        self,
        chunk: Chunk,
        worker: str,
        result: Any,
        finalize: Finalizer | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> Completion:
        """Store the chunk's result unless it is already stored (first result wins), with the
        chunk's last per-item result; when it was the last chunk of an active operation, end
        the operation with ``finalize``'s outcome in the same transaction."""

    @abc.abstractmethod
    def chunk_results(self, op_id: str) -> list[Any]:
        """Stored chunk results in chunk order (call once every chunk is done)."""

    @abc.abstractmethod
    def pending_chunks(self) -> int:
        """Chunks of active operations not yet done (claimed or not), fleet-wide."""

    @abc.abstractmethod
    def staged_items(self, op_id: str, start: int, end: int) -> list[StagedItem]: ...


def redact(url: str) -> str:
    """The URL without its password (for logs and client messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"


def open_store(url: str, data_dir: str = "") -> StateStore:
    """The store named by ``url``: ``postgresql://…`` or ``sqlite:///path``; empty → the
    SQLite file ``<data_dir>/state.db`` (``data_dir`` empty → an in-memory database)."""
    if url.startswith(("postgresql://", "postgres://")):
        from xaiserve.jobs.postgres_store import PostgresStateStore

        return PostgresStateStore(url)
    from xaiserve.jobs.sqlite_store import SqliteStateStore

    if url.startswith("sqlite:///"):
        path = url[len("sqlite://") :]
        return SqliteStateStore("" if path == "/:memory:" else path)
    if url:
        raise ValueError(
            f"state store URL {redact(url)!r}: use postgresql://… or sqlite:///path/to/state.db"
        )
    if data_dir:
        from pathlib import Path

        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return SqliteStateStore(str(Path(data_dir) / "state.db"))
    return SqliteStateStore("")
