"""Long-running operations: a thread per job, snapshots to watch, cancel, persisted results.

A job is a function ``run(handle) -> result dict``. It reports progress through its
:class:`OperationHandle` and checks ``handle.check_cancelled()`` between units of work, so
``CancelOperation`` stops it cleanly at the next boundary. Finished operations are written
atomically (temp file + rename) to the operations folder and listed again after a restart; one
that was running when the server stopped is reported FAILED ("interrupted").
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xaiserve.errors import Cancelled, NotFound, XaiserveError
from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
_ID_CHARS = set("0123456789abcdef")


@dataclass
class OperationState:
    id: str
    kind: str
    state: str = "PENDING"
    done: int = 0
    total: int = 0
    message: str = ""
    progress: dict[str, float] = field(default_factory=dict)
    item_result: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error_code: str = ""
    error_message: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    revision: int = 0


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays as lists and numbers, NaN/inf as ``None`` (JSON
    has no NaN, and clients parse JSON), anything else unknown as its text."""
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


class OperationHandle:
    """What a running job sees: progress reporting and cancellation."""

    def __init__(self, store: OperationStore, op: OperationState) -> None:
        self._store = store
        self._op = op
        self.cancelled = threading.Event()

    @property
    def id(self) -> str:
        return self._op.id

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        progress: dict[str, float] | None = None,
        item_result: dict[str, Any] | None = None,
    ) -> None:
        with self._store._cond:
            if done is not None:
                self._op.done = done
            if total is not None:
                self._op.total = total
            if message is not None:
                self._op.message = message
            if progress is not None:
                self._op.progress.update(progress)
            if item_result is not None:
                self._op.item_result = item_result
            self._store._touch(self._op)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the operation was cancelled")


Job = Callable[[OperationHandle], dict[str, Any]]


class OperationStore:
    def __init__(self, directory: Path | None, metrics: Metrics, max_running: int = 2) -> None:
        self.directory = directory
        self.metrics = metrics
        self.max_running = max_running
        self._ops: dict[str, OperationState] = {}
        self._handles: dict[str, OperationHandle] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._cond = threading.Condition()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        assert self.directory is not None
        for path in sorted(self.directory.glob("*.json")):
            try:
                op = OperationState(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable operation file %s: %s", path, exc)
                continue
            if op.state not in TERMINAL:
                op.state = "FAILED"
                op.error_code = "ABORTED"
                op.error_message = "interrupted by a server restart"
            self._ops[op.id] = op
        self._count()

    def start(self, kind: str, job: Job, total: int = 0, message: str = "") -> OperationState:
        with self._cond:
            running = sum(1 for o in self._ops.values() if o.state in ("PENDING", "RUNNING"))
            if running >= self.max_running:
                from xaiserve.errors import Overloaded

                raise Overloaded(
                    f"{running} operations are running (limit {self.max_running}); retry later",
                    reason="operations",
                )
            op = OperationState(id=uuid.uuid4().hex, kind=kind, total=total, message=message)
            self._ops[op.id] = op
            handle = OperationHandle(self, op)
            self._handles[op.id] = handle
            self._persist(op)
            self._count()
        thread = threading.Thread(
            target=self._run, args=(op, handle, job), name=f"op-{op.id[:8]}", daemon=True
        )
        self._threads[op.id] = thread
        thread.start()
        return self.snapshot(op.id)

    def _run(self, op: OperationState, handle: OperationHandle, job: Job) -> None:
        with self._cond:
            op.state = "RUNNING"
            self._touch(op)
        try:
            result = job(handle)
            final, code, message = "SUCCEEDED", "", ""
        except Cancelled:
            result, final, code, message = None, "CANCELLED", "CANCELLED", "cancelled by request"
        except XaiserveError as exc:
            result, final, code, message = None, "FAILED", exc.status.value, exc.message
        except Exception as exc:
            log.exception("operation %s failed", op.id)
            result, final, code, message = (
                None,
                "FAILED",
                "INTERNAL",
                f"internal error: {type(exc).__name__}",
            )
        with self._cond:
            op.state = final
            op.result = result
            op.error_code, op.error_message = code, message
            self._touch(op)
            self._persist(op)
            self._count()

    def _touch(self, op: OperationState) -> None:
        op.updated = time.time()
        op.revision += 1
        self._cond.notify_all()

    def _persist(self, op: OperationState) -> None:
        if self.directory is None:
            return
        path = self.directory / f"{op.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(json_safe(asdict(op))), encoding="utf-8")
        os.replace(tmp, path)

    def _count(self) -> None:
        for kind in {o.kind for o in self._ops.values()}:
            for state in STATES:
                count = sum(1 for o in self._ops.values() if o.state == state and o.kind == kind)
                self.metrics.operations.labels(kind=kind, state=state).set(count)

    def _find(self, op_id: str) -> OperationState:
        if len(op_id) != 32 or not set(op_id) <= _ID_CHARS:
            from xaiserve.errors import InvalidInput

            raise InvalidInput("operation id must be the 32-character hex id the server returned")
        op = self._ops.get(op_id)
        if op is None:
            raise NotFound(f"operation {op_id!r} does not exist")
        return op

    def snapshot(self, op_id: str) -> OperationState:
        with self._cond:
            op = self._find(op_id)
            return OperationState(**{**asdict(op)})

    def get(self, op_id: str) -> OperationState:
        return self.snapshot(op_id)

    def list(self) -> list[OperationState]:
        with self._cond:
            return [
                OperationState(**asdict(o))
                for o in sorted(self._ops.values(), key=lambda o: o.created)
            ]

    def cancel(self, op_id: str) -> OperationState:
        with self._cond:
            op = self._find(op_id)
            handle = self._handles.get(op_id)
            if handle is not None and op.state not in TERMINAL:
                handle.cancelled.set()
                op.message = "cancelling"
                self._touch(op)
        return self.snapshot(op_id)

    def watch(
        self, op_id: str, active: Callable[[], bool], poll: float = 0.5
    ) -> Iterator[OperationState]:
        """Snapshots on every change until the operation ends or the watcher goes away."""
        seen = -1
        while True:
            with self._cond:
                op = self._find(op_id)
                if op.revision == seen and op.state not in TERMINAL:
                    self._cond.wait(poll)
                    op = self._ops[op_id]
                changed = op.revision != seen
                seen = op.revision
                snap = OperationState(**asdict(op))
            if changed:
                yield snap
            if snap.state in TERMINAL or not active():
                return

    def wait(self, op_id: str, timeout: float) -> OperationState:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._find(op_id).state not in TERMINAL:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self.snapshot(op_id)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel running jobs and wait briefly for them to stop."""
        with self._cond:
            for handle in self._handles.values():
                handle.cancelled.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
