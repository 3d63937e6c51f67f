"""Worker pools (one per "replica", each with its own store connection) over one store:
exactly-once aggregation, cancel from another replica, shutdown hand-over, database loss.

The runner here is a real :class:`ChunkRunner` of a test kind: item ``i`` is worth ``i²``
(known by construction), so the aggregate is checkable exactly; it sleeps a little per item so
chunks overlap and cancellation has something to stop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from tests.postgres import PostgresServer
from xaiserve.jobs.operations import SHUTDOWN_MESSAGE, OperationStore, ProgressHandle
from xaiserve.jobs.store import ChunkSpec, open_store
from xaiserve.jobs.workers import WorkerPool
from xaiserve.observability import Metrics

KIND = "squares"


class Squares:
    def __init__(self, per_item: float = 0.01) -> None:
        self.per_item = per_item
        self.ran: Counter[int] = Counter()  # items run, counting re-runs
        self.lock = threading.Lock()
        self.last_item_at = 0.0

    def run(self, chunk: Any, handle: ProgressHandle) -> Any:
        out = []
        for k, i in enumerate(range(chunk.start, chunk.end), start=1):
            handle.check_cancelled()
            time.sleep(self.per_item)
            with self.lock:
                self.ran[i] += 1
                self.last_item_at = time.monotonic()
            out.append([i, i * i])
            handle.update(done=k, item_result={"item": i})
        return out

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        items = [i for chunk in results for i, _ in chunk]
        return {"count": len(items), "distinct": len(set(items)),
                "sum": sum(v for chunk in results for _, v in chunk)}

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        return None


def _pools(url: str, runner: Squares, n: int, **kw: Any) -> list[WorkerPool]:
    pools = []
    for _ in range(n):
        store = open_store(url)
        pool = WorkerPool(store, {KIND: runner}, Metrics(), workers=2,
                          lease_seconds=kw.get("lease", 30.0), heartbeat_seconds=0.2,
                          poll_seconds=0.05)
        pool.start()
        pools.append(pool)
    return pools


def _start(url: str, total: int, chunk: int) -> tuple[OperationStore, str]:
    ops = OperationStore(open_store(url), Metrics())
    ops.store.migrate()
    chunks = [ChunkSpec(i, min(i + chunk, total)) for i in range(0, total, chunk)]
    record = ops.start(KIND, {"n": total}, chunks, total=total)
    return ops, record.id


def test_three_replicas_count_every_item_once(store_url: str) -> None:
    runner = Squares()
    ops, op_id = _start(store_url, 60, 4)
    pools = _pools(store_url, runner, 3)
    try:
        done = ops.wait(op_id, 60)
    finally:
        for p in pools:
            p.stop()
    assert done.state == "SUCCEEDED", done.error_message
    assert done.result == {"count": 60, "distinct": 60, "sum": sum(i * i for i in range(60))}
    assert done.done == done.total == 60
    ops.refresh_metrics()
    assert ops.metrics.chunks_pending._value.get() == 0  # type: ignore[attr-defined]


def test_a_cancel_on_another_replica_stops_the_work_within_two_seconds(store_url: str) -> None:
    runner = Squares(per_item=0.05)
    ops, op_id = _start(store_url, 400, 50)
    pools = _pools(store_url, runner, 2)
    try:
        while ops.get(op_id).done < 4:
            time.sleep(0.02)
        elsewhere = OperationStore(open_store(store_url), Metrics())  # a third replica
        cancelled = elsewhere.cancel(op_id)
        t0 = time.monotonic()
        assert cancelled.state == "CANCELLED" and cancelled.error_message == "cancelled by request"
        time.sleep(2.5)
        assert runner.last_item_at - t0 < 2.0  # no item finished later than 2 s after the cancel
        assert sum(p.running for p in pools) == 0
        assert elsewhere.get(op_id).state == "CANCELLED"  # and it never turns SUCCEEDED
    finally:
        for p in pools:
            p.stop()


def test_shutdown_hands_running_chunks_to_another_replica(store_url: str) -> None:
    runner = Squares(per_item=0.05)
    ops, op_id = _start(store_url, 40, 20)
    leaving = _pools(store_url, runner, 1)[0]
    while ops.get(op_id).done < 3:
        time.sleep(0.02)
    leaving.stop()
    record = ops.get(op_id)
    assert record.state == "RUNNING" and record.message.startswith(SHUTDOWN_MESSAGE)
    staying = _pools(store_url, runner, 1, lease=30.0)[0]  # lease 30 s: only release can explain
    try:
        done = ops.wait(op_id, 20)
    finally:
        staying.stop()
    assert done.state == "SUCCEEDED"
    assert done.result == {"count": 40, "distinct": 40, "sum": sum(i * i for i in range(40))}
    assert any(n > 1 for n in runner.ran.values())  # the released chunk really ran twice


def test_losing_the_database_mid_run_loses_and_double_counts_nothing(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    runner = Squares(per_item=0.05)
    ops, op_id = _start(postgres_url, 40, 10)
    pools = _pools(postgres_url, runner, 2, lease=5.0)
    try:
        while ops.get(op_id).done < 5:
            time.sleep(0.02)
        postgres_server.stop()
        time.sleep(1.5)  # chunks keep computing; heartbeats and progress fail
        postgres_server.start()
        done = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                done = ops.get(op_id)
                if done.terminal:
                    break
            except Exception:
                pass
            time.sleep(0.2)
    finally:
        for p in pools:
            p.stop()
    assert done is not None and done.state == "SUCCEEDED", done
    assert done.result == {"count": 40, "distinct": 40, "sum": sum(i * i for i in range(40))}


def test_a_failing_chunk_fails_the_operation_with_its_status(store_url: str) -> None:
    from xaiserve.errors import InvalidInput

    class Broken(Squares):
        def run(self, chunk: Any, handle: ProgressHandle) -> Any:
            if chunk.index == 1:
                raise InvalidInput("item 3 is not an image")
            return super().run(chunk, handle)

    runner = Broken()
    ops, op_id = _start(store_url, 6, 3)
    pools = _pools(store_url, runner, 1)
    try:
        done = ops.wait(op_id, 20)
    finally:
        for p in pools:
            p.stop()
    assert (done.state, done.error_code, done.error_message) == (
        "FAILED", "INVALID_ARGUMENT", "item 3 is not an image"
    )
