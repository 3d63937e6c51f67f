"""The workers of one replica: claim a chunk, heartbeat, run it, store its result.

Each of ``workers`` threads loops: claim a chunk (lease ``lease_seconds``, database clock), run
it with the :class:`~xaiserve.jobs.operations.ChunkRunner` of its kind while a heartbeat thread
extends the lease every ``heartbeat_seconds`` and reads the operation's state, then store the
result (first result wins) — the last chunk's completion ends the operation in the same
transaction. The heartbeat cancels the chunk's work when the operation has ended (a cancel from
any replica) or the lease was lost, so a cancel stops work within about one heartbeat.

The computation never waits for the store between claim and completion: progress inside the
chunk is handed to the heartbeat thread, which writes it (coalesced, at most every
:data:`PROGRESS_S`) in the same statement that extends the lease, and the chunk's last per-item
result travels with its completion.

Failure behaviour:

* the store unreachable while a chunk runs: the work goes on; heartbeats and progress are
  retried (a chunk that cannot read its staged items is handed back and retried, never failed); the result is kept and stored, with backoff, once the store is back. If the lease ran
  out meanwhile and another replica ran the chunk too, the first stored result wins and the
  other is discarded — the chunk counts once either way;
* a replica killed: its leases run out and other replicas claim its chunks;
* shutdown (:meth:`WorkerPool.stop`): running chunks are cancelled and released at once (lease
  given back), the operation's message says "interrupted by shutdown", and any replica — or
  this one after a restart — resumes it;
* a chunk started :data:`~xaiserve.jobs.operations.MAX_ATTEMPTS` times without finishing fails
  its operation instead of taking down replica after replica.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from xaiserve.errors import Cancelled, XaiserveError
from xaiserve.jobs.operations import (
    MAX_ATTEMPTS,
    SHUTDOWN_MESSAGE,
    ChunkHandle,
    ChunkRunner,
    backoff,
)
from xaiserve.jobs.store import Chunk, Outcome, StateStore, StoreUnavailable
from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

PROGRESS_S = 0.5
"""Progress inside a chunk reaches the store at most this often, riding on the heartbeat (a
watcher polls every 0.2 s, so it sees progress made on any replica within 0.7 s)."""


def replica_name() -> str:
    """Host name and pid: which replica holds a lease (shown in logs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerPool:
    def __init__(
        self,
        store: StateStore,
        runners: Mapping[str, ChunkRunner],
        metrics: Metrics,
        *,
        workers: int = 2,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float = 0.5,
        progress_seconds: float = PROGRESS_S,
        poll_seconds: float = 0.25,
        housekeeping: Callable[[], None] | None = None,
        housekeeping_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.runners = dict(runners)
        self.metrics = metrics
        self.workers = workers
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = min(heartbeat_seconds, lease_seconds / 3)
        self.progress_seconds = min(progress_seconds, self.heartbeat_seconds)
        self.poll_seconds = poll_seconds
        self.replica = replica_name()
        self._housekeeping = housekeeping
        self._housekeeping_seconds = housekeeping_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, ChunkHandle] = {}
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        for i in range(self.workers):
            worker = f"{self.replica}/{i}/{uuid.uuid4().hex[:6]}"
            t = threading.Thread(target=self._loop, args=(worker,), name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self._housekeeping is not None:
            t = threading.Thread(target=self._housekeeping_loop, name="housekeeping", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel and release running chunks (they resume elsewhere), then join."""
        self._stopping.set()
        with self._lock:
            handles = list(self._running.values())
        for handle in handles:
            handle.cancel(SHUTDOWN_MESSAGE)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- loops ---------------------------------------------------------------------------------
    def _housekeeping_loop(self) -> None:
        assert self._housekeeping is not None
        while not self._stopping.wait(self._housekeeping_seconds):
            try:
                self._housekeeping()
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("housekeeping failed")

    def _loop(self, worker: str) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                chunk = self.store.claim_chunk(worker, self.lease_seconds)
                failures = 0
            except StoreUnavailable as exc:
                if failures == 0:
                    log.warning("cannot claim chunks: %s", exc.message)
                self._stopping.wait(backoff(failures))
                failures += 1
                continue
            except Exception:
                log.exception("claiming a chunk failed")
                self._stopping.wait(1.0)
                continue
            if chunk is None:
                self._stopping.wait(self.poll_seconds)
                continue
            self._run(chunk, worker)

    def _run(self, chunk: Chunk, worker: str) -> None:
        runner = self.runners.get(chunk.kind)
        if runner is None:
            self._fail(chunk, "UNIMPLEMENTED", f"this server cannot run {chunk.kind!r} operations")
            return
        if chunk.attempts > MAX_ATTEMPTS:
            self._fail(
                chunk,
                "ABORTED",
                f"chunk {chunk.index} (items {chunk.start}–{chunk.end - 1}) was started "
                f"{MAX_ATTEMPTS} times without finishing: the replicas running it stopped "
                "(out of memory?)",
            )
            return
        log.info(
            "chunk claimed",
            extra={"operation": chunk.operation_id, "chunk": chunk.index,
                   "attempt": chunk.attempts, "worker": worker},
        )
        handle = ChunkHandle(self.store, chunk, worker)
        with self._lock:
            self._running[f"{chunk.operation_id}/{chunk.index}"] = handle
        beat = threading.Thread(
            target=self._heartbeat, args=(chunk, worker, handle), name="heartbeat", daemon=True
        )
        beat.start()
        outcome: str
        try:
            result = runner.run(chunk, handle)
        except Cancelled:
            result, outcome = None, "cancelled"
        except StoreUnavailable as exc:
            # The chunk could not read its inputs (staged items) from the store: not the
            # operation's fault. Hand the chunk back (or let its lease run out) and retry later.
            log.warning("chunk %d of %s interrupted: %s", chunk.index, chunk.operation_id,
                        exc.message)
            result, outcome = None, "interrupted"
        except XaiserveError as exc:
            result, outcome = None, "failed"
            self._fail(chunk, exc.status.value, exc.message)
        except Exception as exc:
            log.exception("chunk %d of %s failed", chunk.index, chunk.operation_id)
            result, outcome = None, "failed"
            self._fail(chunk, "INTERNAL", f"internal error: {type(exc).__name__}")
        else:
            outcome = "done"
        finally:
            handle.finish()
            beat.join()
            with self._lock:
                self._running.pop(f"{chunk.operation_id}/{chunk.index}", None)
        if outcome == "done":
            self._complete(chunk, worker, runner, result, handle.take_progress()[1])
        elif outcome == "cancelled" and handle.reason == SHUTDOWN_MESSAGE:
            self._release(chunk, worker)
        elif outcome == "interrupted":
            with contextlib.suppress(StoreUnavailable):  # else the lease runs out instead
                self.store.release_chunk(chunk, worker)
            self._stopping.wait(backoff(2))
        self.metrics.chunks_total.labels(outcome=outcome).inc()

    def _heartbeat(self, chunk: Chunk, worker: str, handle: ChunkHandle) -> None:
        """Extend the lease every ``heartbeat_seconds`` and carry the chunk's progress (at most
        every ``progress_seconds``) in the same statement; cancel the work when the operation
        ended or the lease was lost. Waits on an event, so the worker joins this thread as soon
        as its chunk is done."""
        last = time.monotonic()
        while True:
            due = last + self.heartbeat_seconds
            if handle.has_progress:
                due = min(due, last + self.progress_seconds)
            handle.wake.wait(max(0.0, due - time.monotonic()))
            handle.wake.clear()
            if handle.finished.is_set():
                return
            if time.monotonic() < due:
                continue  # woken by new progress: wait until it is due
            done, item_result = handle.take_progress()
            last = time.monotonic()
            try:
                beat = self.store.heartbeat(chunk, worker, self.lease_seconds, done, item_result)
            except StoreUnavailable:
                handle.restore_progress(done, item_result)
                continue  # keep working; the result is stored once the store is back
            if not beat.held:
                handle.cancel("the chunk's lease ran out and another worker took it")
            elif beat.state not in ("PENDING", "RUNNING"):
                handle.cancel(f"the operation is {beat.state}")

    def _complete(
        self,
        chunk: Chunk,
        worker: str,
        runner: ChunkRunner,
        result: Any,
        item_result: dict[str, Any] | None = None,
    ) -> None:
        def finalize(results: list[Any]) -> Outcome:
            try:
                return Outcome("SUCCEEDED", runner.finalize(chunk.operation_id, chunk.spec, results), message="done")
            except XaiserveError as exc:
                return Outcome("FAILED", None, exc.status.value, exc.message)
            except Exception as exc:
                log.exception("aggregating %s failed", chunk.operation_id)
                return Outcome("FAILED", None, "INTERNAL", f"internal error: {type(exc).__name__}")

        attempt = 0
        while True:
            try:
                completion = self.store.complete_chunk(
                    chunk, worker, result, finalize, item_result
                )
                break
            except StoreUnavailable as exc:
                if attempt == 0:
                    log.warning("chunk result kept until the store is back: %s", exc.message)
                time.sleep(backoff(attempt))
                attempt += 1
        if not completion.stored or (completion.finished and completion.state != "SUCCEEDED") or (
            not completion.finished and completion.state not in ("PENDING", "RUNNING")
        ):
            try:
                runner.discard(chunk.spec, result)
            except Exception:
                log.exception("discarding an unused chunk result failed")

    def _release(self, chunk: Chunk, worker: str) -> None:
        try:
            self.store.release_chunk(chunk, worker)
            self.store.update_progress(
                chunk.operation_id,
                message=f"{SHUTDOWN_MESSAGE}; another replica resumes it",
            )
        except StoreUnavailable:
            pass  # the lease runs out instead

    def _fail(self, chunk: Chunk, code: str, message: str) -> None:
        attempt = 0
        while attempt < 20:
            try:
                self.store.transition(
                    chunk.operation_id, "FAILED", error_code=code, error_message=message
                )
                return
            except StoreUnavailable:
                time.sleep(backoff(attempt))
                attempt += 1
