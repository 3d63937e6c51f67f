"""Long-running operations of the fleet: records in the state store, work in leased chunks.

An operation is a record in the :class:`~xaiserve.jobs.store.StateStore` every replica shares
plus its *chunks*. Starting one (:meth:`OperationStore.start`) writes the record, its chunks
and any client-streamed items in one transaction and returns; the :class:`WorkerPool` of every
replica claims chunks, runs them with the :class:`ChunkRunner` registered for the operation's
kind, heartbeats while running, and stores each chunk's result; the completion of the last
chunk aggregates the results and ends the operation in the same transaction. So any replica
answers Get/List/Watch/Cancel, a cancel sent anywhere stops the work wherever it runs (the
running chunk's heartbeat sees the operation ended and cancels its work), and the work of a
replica that dies is claimed again when its leases run out.

Every change a client can cause is an atomic compare-and-set on the record: a cancelled
operation never succeeds, a finished one is never cancelled.

Kinds: ``evaluate_dataset`` (chunks of items, :mod:`xaiserve.jobs.dataset_evaluation`) and
``fit_gad`` (one chunk: one training run, :mod:`xaiserve.jobs.gad_fitting`).
:meth:`OperationStore.start_local` runs a function in a thread of this process instead
(programmatic use and tests): its record is shared like any other, but it cannot resume
elsewhere and ends FAILED ("interrupted by shutdown") if this process stops first.

Ownership: with auth on, each record carries its owner (a hash of the caller's token); an
``owner`` passed to get/list/watch/cancel hides other owners' operations (NOT_FOUND), and
``None`` (auth off, or an admin token) sees all.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from xaiserve.errors import Cancelled, InvalidInput, NotFound, Overloaded, XaiserveError
from xaiserve.jobs.chunk_sizing import ChunkSizer
from xaiserve.jobs.store import (
    ACTIVE,
    STATES,
    TERMINAL,
    Chunk,
    ChunkSpec,
    OperationRecord,
    Outcome,
    Page,
    StagedItem,
    StateStore,
    StoreUnavailable,
    json_safe,
    open_store,
)
from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

_ID_CHARS = set("0123456789abcdef")
MAX_ATTEMPTS = 5
"""A chunk started this many times without finishing fails its operation (it kills replicas)."""
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
WATCH_POLL_S = 0.2
SHUTDOWN_MESSAGE = "interrupted by shutdown"

# The record as code outside jobs/ sees it.
OperationState = OperationRecord


class ProgressHandle(Protocol):
    """What a job or chunk runner reports through."""

    cancelled: threading.Event

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        progress: dict[str, float] | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> None: ...

    def check_cancelled(self) -> None: ...


class ChunkRunner(Protocol):
    """How one kind of operation runs: a chunk at a time, then one aggregation."""

    def run(self, chunk: Chunk, handle: ProgressHandle) -> Any:
        """Items ``[chunk.start, chunk.end)`` → a JSON-compatible result. ``handle.update(
        done=k)`` counts items done *within* the chunk."""

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        """Every chunk's result, in chunk order → the operation's result."""

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        """A result that was not used (a twin run stored first, or the operation ended)."""


def check_id(op_id: str) -> None:
    if len(op_id) != 32 or not set(op_id) <= _ID_CHARS:
        raise InvalidInput("operation id must be the 32-character hex id the server returned")


class _Throttle:
    """At most one call per ``every`` seconds (the first always passes)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last = -1e18

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        return False


class ChunkHandle:
    """A running chunk's view. Progress inside the chunk (``done``, the per-item result) is
    kept here and carried to the store by the worker's heartbeat thread, coalesced: the
    computation never waits for the store to report progress. Cancellation comes back the
    same way (the heartbeat learns the operation ended, or that the lease was lost)."""

    def __init__(self, store: StateStore, chunk: Chunk, worker: str) -> None:
        self.store = store
        self.chunk = chunk
        self.worker = worker
        self.cancelled = threading.Event()
        self.reason = ""
        self.finished = threading.Event()  # set by the worker when the runner returned
        self.wake = threading.Event()  # progress to report, or finished: the heartbeat looks
        self._lock = threading.Lock()
        self._done: int | None = None
        self._item_result: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.chunk.operation_id

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        progress: dict[str, float] | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> None:
        if done is not None or item_result is not None:
            with self._lock:
                if done is not None:
                    self._done = done
                if item_result is not None:
                    self._item_result = item_result
            self.wake.set()
        if total is not None or message is not None or progress:
            try:  # rare (a job's phases): written at once
                self.store.update_progress(
                    self.chunk.operation_id, total=total, message=message, progress=progress
                )
            except StoreUnavailable as exc:  # progress is best effort; the result is not
                log.warning("progress of %s not stored: %s", self.id, exc.message)

    @property
    def has_progress(self) -> bool:
        with self._lock:
            return self._done is not None or self._item_result is not None

    def take_progress(self) -> tuple[int | None, dict[str, Any] | None]:
        """The progress not yet reported (and forget it)."""
        with self._lock:
            out = (self._done, self._item_result)
            self._done = self._item_result = None
        return out

    def restore_progress(self, done: int | None, item_result: dict[str, Any] | None) -> None:
        """Progress that could not be reported (store unreachable), unless newer came since."""
        with self._lock:
            if self._done is None:
                self._done = done
            if self._item_result is None:
                self._item_result = item_result

    def finish(self) -> None:
        self.finished.set()
        self.wake.set()

    def cancel(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.cancelled.set()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"operation {self.id}: {self.reason or 'cancelled'}")


class LocalHandle:
    """Handle of a :meth:`OperationStore.start_local` job: progress into the store; a cancel
    from any replica is seen by polling the record (at most every ``poll`` seconds)."""

    def __init__(self, store: StateStore, op_id: str, poll: float = 0.25) -> None:
        self.store = store
        self._id = op_id
        self.cancelled = threading.Event()
        self.shutdown = False  # set when this process stops: the job ends FAILED, not CANCELLED
        self._poll = _Throttle(poll)

    @property
    def id(self) -> str:
        return self._id

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        progress: dict[str, float] | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> None:
        try:
            if not self.store.update_progress(
                self._id,
                done=done,
                total=total,
                message=message,
                progress=progress,
                item_result=item_result,
            ):
                self.cancelled.set()
        except StoreUnavailable as exc:
            log.warning("progress of %s not stored: %s", self._id, exc.message)

    def check_cancelled(self) -> None:
        if not self.cancelled.is_set() and self._poll():
            try:
                record = self.store.get_operation(self._id)
            except StoreUnavailable:
                record = None
            if record is not None and record.terminal:
                self.cancelled.set()
        if self.cancelled.is_set():
            raise Cancelled("the operation was cancelled")


Job = Callable[[LocalHandle], dict[str, Any]]
OperationHandle = LocalHandle


@dataclass(frozen=True)
class Retention:
    """Ended operations kept: at most ``max_count`` (newest first) and none older than
    ``max_age_seconds`` (0 = no limit)."""

    max_count: int = 10_000
    max_age_seconds: float = 30 * 24 * 3600.0


class OperationStore:
    """The operations API every replica serves, over a shared :class:`StateStore`.

    ``store`` is a store, a store URL, or ``None`` for a private in-memory SQLite database.
    """

    def __init__(
        self,
        store: StateStore | str | None,
        metrics: Metrics,
        max_active: int = 16,
        retention: Retention | None = None,
        chunk_sizer: ChunkSizer | None = None,
    ) -> None:
        if store is None or isinstance(store, str):
            store = open_store(store or "")
            store.migrate()
        self.store = store
        self.metrics = metrics
        self.max_active = max_active
        self.retention = retention or Retention()
        self.chunk_sizer = chunk_sizer or ChunkSizer()
        self._local: dict[str, tuple[threading.Thread, LocalHandle]] = {}
        self._lock = threading.Lock()
        self._known_kinds: set[str] = set()

    # -- starting --------------------------------------------------------------------------------
    def _admit(self) -> None:
        active = self.store.count_active()
        if active >= self.max_active:
            raise Overloaded(
                f"{active} operations are pending or running across the fleet (limit "
                f"{self.max_active}, max_active_operations); retry later",
                reason="operations",
            )

    def start(
        self,
        kind: str,
        spec: dict[str, Any],
        chunks: Sequence[ChunkSpec],
        *,
        items: Sequence[StagedItem] = (),
        total: int = 0,
        message: str = "",
        owner: str = "",
    ) -> OperationRecord:
        """Record an operation whose chunks any replica's workers will run."""
        if not chunks:
            raise InvalidInput("an operation needs at least one chunk of work")
        self._admit()
        record = OperationRecord(
            id=uuid.uuid4().hex, kind=kind, owner=owner, spec=spec, total=total, message=message
        )
        created = self.store.create_operation(record, chunks, items)
        self.refresh_metrics()
        return created

    def start_local(
        self, kind: str, job: Job, total: int = 0, message: str = "", owner: str = ""
    ) -> OperationRecord:
        """Run ``job`` in a thread of this process (see module docs)."""
        self._admit()
        record = self.store.create_operation(
            OperationRecord(
                id=uuid.uuid4().hex, kind=kind, owner=owner, total=total, message=message
            )
        )
        handle = LocalHandle(self.store, record.id)
        thread = threading.Thread(
            target=self._run_local, args=(record.id, handle, job), name=f"op-{record.id[:8]}",
            daemon=True,
        )
        with self._lock:
            self._local[record.id] = (thread, handle)
        thread.start()
        return record

    def _run_local(self, op_id: str, handle: LocalHandle, job: Job) -> None:
        try:
            self.store.transition(op_id, "RUNNING", from_states=("PENDING",))
            result = job(handle)
            outcome = Outcome("SUCCEEDED", result)
        except Cancelled:
            outcome = Outcome("CANCELLED", None, "CANCELLED", "cancelled by request")
        except XaiserveError as exc:
            outcome = Outcome("FAILED", None, exc.status.value, exc.message)
        except Exception as exc:
            log.exception("operation %s failed", op_id)
            outcome = Outcome("FAILED", None, "INTERNAL", f"internal error: {type(exc).__name__}")
        try:
            if handle.shutdown and outcome.state == "CANCELLED":
                outcome = Outcome("FAILED", None, "ABORTED", SHUTDOWN_MESSAGE)
            self.store.transition(
                op_id,
                outcome.state,
                result=outcome.result,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
            )
        except StoreUnavailable as exc:
            log.error("operation %s ended %s but the store is unreachable: %s",
                      op_id, outcome.state, exc.message)
        finally:
            with self._lock:
                self._local.pop(op_id, None)
        self.refresh_metrics()

    # -- reading -------------------------------------------------------------------------------
    def _find(self, op_id: str, owner: str | None) -> OperationRecord:
        check_id(op_id)
        record = self.store.get_operation(op_id)
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound(f"operation {op_id!r} does not exist")
        return record

    def get(self, op_id: str, owner: str | None = None) -> OperationRecord:
        return self._find(op_id, owner)

    snapshot = get

    def list(
        self, owner: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> Page:
        if page_size < 0:
            raise InvalidInput("page_size must be ≥ 0 (0 = the default of 100)")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        return self.store.list_operations(owner, size, page_token)

    def cancel(self, op_id: str, owner: str | None = None) -> OperationRecord:
        """End the operation CANCELLED unless it has already ended (idempotent)."""
        self._find(op_id, owner)
        if self.store.transition(
            op_id, "CANCELLED", error_code="CANCELLED", error_message="cancelled by request"
        ):
            with self._lock:
                local = self._local.get(op_id)
            if local is not None:
                local[1].cancelled.set()
            self.refresh_metrics()
        return self._find(op_id, owner)

    def watch(
        self,
        op_id: str,
        active: Callable[[], bool],
        owner: str | None = None,
        poll: float = WATCH_POLL_S,
    ) -> Iterator[OperationRecord]:
        """The record on every change (polled every ``poll`` s, from whichever replica made it)
        until it ends or the watcher goes away."""
        record = self._find(op_id, owner)
        yield record
        seen = record.revision
        while not record.terminal and active():
            time.sleep(poll)
            revision = self.store.revision(op_id)
            if revision is None:
                raise NotFound(f"operation {op_id!r} was deleted (retention)")
            if revision != seen:
                record = self._find(op_id, owner)
                seen = record.revision
                yield record

    def wait(self, op_id: str, timeout: float, poll: float = 0.05) -> OperationRecord:
        deadline = time.monotonic() + timeout
        record = self._find(op_id, None)
        while not record.terminal and time.monotonic() < deadline:
            time.sleep(poll)
            record = self._find(op_id, None)
        return record

    # -- housekeeping ----------------------------------------------------------------------------
    def refresh_metrics(self) -> int:
        """Fleet-wide gauges from the store (every replica exports the same values); returns
        the number of ended operations stored."""
        try:
            counts = self.store.counts()
            pending = self.store.pending_chunks()
        except StoreUnavailable:
            self.metrics.state_store_up.set(0)
            return 0
        self.metrics.state_store_up.set(1)
        self._known_kinds |= {kind for kind, _ in counts}
        for kind in self._known_kinds:
            for state in STATES:
                self.metrics.operations.labels(kind=kind, state=state).set(
                    counts.get((kind, state), 0)
                )
        self.metrics.operations_stored.set(sum(counts.values()))
        self.metrics.chunks_pending.set(pending)
        return sum(n for (_, state), n in counts.items() if state in TERMINAL)

    def apply_retention(self) -> int:
        deleted = self.store.delete_expired(
            self.retention.max_count, self.retention.max_age_seconds
        )
        if deleted:
            log.info("retention deleted %d ended operations", deleted)
            self.refresh_metrics()
        return deleted

    def shutdown(self, timeout: float = 5.0) -> None:
        """Local jobs end FAILED "interrupted by shutdown" (they cannot resume elsewhere)."""
        with self._lock:
            local = list(self._local.values())
        for _, handle in local:
            handle.shutdown = True
            handle.cancelled.set()
        for thread, _ in local:
            thread.join(timeout)


def backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))


__all__ = [
    "ACTIVE",
    "SHUTDOWN_MESSAGE",
    "TERMINAL",
    "ChunkHandle",
    "ChunkRunner",
    "LocalHandle",
    "OperationState",
    "OperationStore",
    "ProgressHandle",
    "Retention",
    "backoff",
    "check_id",
    "json_safe",
]
