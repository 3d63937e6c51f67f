"""The state-store contract: every test runs on SQLite and on a real PostgreSQL server.

A new store implementation must pass this file unchanged (docs/architecture.md).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from xaiserve.errors import InvalidInput
from xaiserve.jobs import migrations
from xaiserve.jobs.store import (
    ChunkSpec,
    OperationRecord,
    Outcome,
    StagedItem,
    StateStore,
    open_store,
)


def _op(kind: str = "evaluate_dataset", owner: str = "", **spec: object) -> OperationRecord:
    return OperationRecord(id=uuid.uuid4().hex, kind=kind, owner=owner, spec=dict(spec))


def _sum_finalizer(calls: list[int]):
    def finalize(results: list) -> Outcome:
        calls.append(1)
        return Outcome("SUCCEEDED", {"sum": sum(r["sum"] for r in results)})

    return finalize


def test_migrations_are_versioned_and_idempotent(store: StateStore) -> None:
    assert store.migrate() == migrations.LATEST
    assert store.migrate() == migrations.LATEST
    assert store.schema_versions() == [v for v, _, _ in migrations.MIGRATIONS]  # type: ignore[attr-defined]


def test_replicas_migrating_together_do_not_race(store_url: str) -> None:
    """Eight stores (separate connections, as eight replicas) migrate a fresh database at once."""
    stores = [open_store(store_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))

    def migrate(s: StateStore) -> int:
        barrier.wait()
        return s.migrate()

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            assert list(pool.map(migrate, stores)) == [migrations.LATEST] * len(stores)
        assert stores[0].schema_versions() == [v for v, _, _ in migrations.MIGRATIONS]  # type: ignore[attr-defined]
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused(store: StateStore) -> None:
    with store._tx() as cur:  # type: ignore[attr-defined]
        cur.execute(
            "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
            (migrations.LATEST + 1, "from the future", 0.0),
        )
    with pytest.raises(migrations.SchemaTooNew, match="newer than this xaiserve"):
        store.migrate()


def test_records_round_trip_and_revisions_grow(store: StateStore) -> None:
    op = _op(owner="alice", model="demo", methods=[{"name": "lrp", "params": {"eps": 0.25}}])
    created = store.create_operation(op)
    assert (created.id, created.state, created.owner, created.spec) == (
        op.id, "PENDING", "alice", op.spec
    )
    assert created.created > 0 and created.revision == 0
    assert store.update_progress(
        op.id, done=3, total=10, message="evaluating", progress={"epoch": 1.0},
        item_result={"name": "a", "x": float("nan")},
    )
    assert store.update_progress(op.id, progress={"loss": 0.5})
    got = store.get_operation(op.id)
    assert got is not None
    assert (got.state, got.done, got.total, got.message) == ("RUNNING", 3, 10, "evaluating")
    assert got.progress == {"epoch": 1.0, "loss": 0.5}
    assert got.item_result == {"name": "a", "x": None}  # NaN is stored as null
    assert store.revision(op.id) == got.revision == 2
    assert store.get_operation("f" * 32) is None and store.revision("f" * 32) is None


def test_a_transition_happens_once_under_a_race(store: StateStore) -> None:
    """Eight threads try to cancel while eight try to succeed: exactly one wins."""
    for _ in range(5):
        op = store.create_operation(_op())
        barrier = threading.Barrier(16)

        def end(state: str, op_id: str = op.id, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return store.transition(op_id, state, result={"by": state})

        with ThreadPoolExecutor(16) as pool:
            wins = list(pool.map(end, ["CANCELLED"] * 8 + ["SUCCEEDED"] * 8))
        assert sum(wins) == 1
        final = store.get_operation(op.id)
        assert final is not None and final.result == {"by": final.state}
        assert not store.update_progress(op.id, done=1)  # ended: progress is refused


def test_listing_pages_and_owners(store: StateStore) -> None:
    ids = {"alice": [], "bob": []}
    for i in range(7):
        owner = "alice" if i % 3 else "bob"
        ids[owner].append(store.create_operation(_op(owner=owner)).id)
    seen, token = [], ""
    while True:
        page = store.list_operations("alice", page_size=2, page_token=token)
        assert len(page.operations) <= 2
        seen += [o.id for o in page.operations]
        token = page.next_token
        if not token:
            break
    assert seen == ids["alice"]  # creation order, each once, only alice's
    everyone = store.list_operations(None, page_size=100)
    assert len(everyone.operations) == 7 and everyone.next_token == ""
    with pytest.raises(InvalidInput, match="page_token"):
        store.list_operations(None, 10, "not-a-token!")


def test_each_chunk_is_claimed_by_one_worker(store: StateStore) -> None:
    op = store.create_operation(_op(), chunks=[ChunkSpec(i, i + 1) for i in range(30)])
    barrier = threading.Barrier(6)

    def worker(name: str) -> list[int]:
        barrier.wait()
        got = []
        while (chunk := store.claim_chunk(name, lease_seconds=60)) is not None:
            got.append(chunk.index)
        return got

    with ThreadPoolExecutor(6) as pool:
        claimed = list(pool.map(worker, [f"w{i}" for i in range(6)]))
    flat = sorted(i for got in claimed for i in got)
    assert flat == list(range(30))
    assert store.get_operation(op.id).state == "RUNNING"  # type: ignore[union-attr]
    assert store.pending_chunks() == 30  # claimed but not done


def test_an_expired_lease_is_claimed_again_and_the_old_holder_loses_it(store: StateStore) -> None:
    op = store.create_operation(_op(), chunks=[ChunkSpec(0, 4)])
    first = store.claim_chunk("dead", lease_seconds=0.3)
    assert first is not None and first.attempts == 1 and (first.start, first.end) == (0, 4)
    assert store.claim_chunk("other", lease_seconds=0.3) is None  # leased
    assert store.heartbeat(first, "dead", 0.3).keep_going
    time.sleep(0.5)  # the holder stops heartbeating (kill -9)
    second = store.claim_chunk("other", lease_seconds=30)
    assert second is not None and second.index == 0 and second.attempts == 2
    beat = store.heartbeat(first, "dead", 30)
    assert not beat.held and not beat.keep_going
    assert not store.chunk_progress(first, "dead", 2, None)  # its progress no longer counts
    assert store.chunk_progress(second, "other", 3, {"name": "x"})
    got = store.get_operation(op.id)
    assert got is not None and got.done == 3 and got.item_result == {"name": "x"}


def test_a_chunk_result_is_stored_once_and_the_operation_ends_once(store: StateStore) -> None:
    op = store.create_operation(_op(), chunks=[ChunkSpec(0, 2), ChunkSpec(2, 5)])
    a = store.claim_chunk("a", 0.2)
    b = store.claim_chunk("b", 60)
    assert a is not None and b is not None
    time.sleep(0.3)
    a2 = store.claim_chunk("c", 60)  # a's lease ran out: c runs the same chunk again
    assert a2 is not None and a2.index == a.index
    calls: list[int] = []
    fin = _sum_finalizer(calls)
    first = store.complete_chunk(a2, "c", {"sum": 1}, fin)
    late = store.complete_chunk(a, "a", {"sum": 1000}, fin)  # the slow twin finishes late
    assert first.stored and not late.stored and not first.finished
    last = store.complete_chunk(b, "b", {"sum": 2}, fin)
    assert last.stored and last.finished and last.state == "SUCCEEDED"
    again = store.complete_chunk(b, "b", {"sum": 2}, fin)
    assert not again.stored and not again.finished
    assert calls == [1]
    done = store.get_operation(op.id)
    assert done is not None and done.result == {"sum": 3} and done.done == 5
    assert store.chunk_results(op.id) == [{"sum": 1}, {"sum": 2}]
    assert store.pending_chunks() == 0


def test_the_last_completions_race_and_one_finalises(store: StateStore) -> None:
    for _ in range(3):
        op = store.create_operation(_op(), chunks=[ChunkSpec(i, i + 1) for i in range(8)])
        chunks = [store.claim_chunk(f"w{i}", 60) for i in range(8)]
        calls: list[int] = []
        barrier = threading.Barrier(8)

        def complete(i: int, op_chunks=chunks, calls=calls, barrier=barrier) -> bool:
            barrier.wait()
            chunk = op_chunks[i]
            assert chunk is not None
            return store.complete_chunk(chunk, f"w{i}", {"sum": i}, _sum_finalizer(calls)).finished

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(complete, range(8))) == 1
        assert calls == [1]
        assert store.get_operation(op.id).result == {"sum": 28}  # type: ignore[union-attr]


def test_cancel_stops_claims_and_heartbeats_tell_the_worker(store: StateStore) -> None:
    op = store.create_operation(_op(), chunks=[ChunkSpec(0, 1), ChunkSpec(1, 2)])
    running = store.claim_chunk("w", 60)
    assert running is not None
    assert store.transition(op.id, "CANCELLED", error_code="CANCELLED", error_message="by test")
    assert store.claim_chunk("w2", 60) is None
    beat = store.heartbeat(running, "w", 60)
    assert beat.held and beat.state == "CANCELLED" and not beat.keep_going
    calls: list[int] = []
    done = store.complete_chunk(running, "w", {"sum": 1}, _sum_finalizer(calls))
    assert not done.finished and calls == []
    assert store.get_operation(op.id).state == "CANCELLED"  # type: ignore[union-attr]
    assert store.pending_chunks() == 0


def test_a_released_chunk_is_claimable_at_once(store: StateStore) -> None:
    store.create_operation(_op(), chunks=[ChunkSpec(0, 3)])
    chunk = store.claim_chunk("leaving", 600)
    assert chunk is not None
    assert store.chunk_progress(chunk, "leaving", 2, None)
    store.release_chunk(chunk, "leaving")
    again = store.claim_chunk("staying", 600)
    assert again is not None and again.index == chunk.index and again.attempts == 2
    assert store.get_operation(chunk.operation_id).done == 0  # type: ignore[union-attr]


def test_staged_items_are_read_back_by_range(store: StateStore) -> None:
    items = [
        StagedItem(i, f"img{i}", i % 2 if i else None, bytes([i]) * 100, b"mask" if i == 2 else None)
        for i in range(5)
    ]
    op = store.create_operation(_op(), chunks=[ChunkSpec(0, 5)], items=items)
    assert store.staged_items(op.id, 1, 4) == items[1:4]
    assert store.staged_items(op.id, 0, 5)[0].label is None


def test_retention_by_count_and_age(store: StateStore) -> None:
    ended = []
    for _ in range(5):
        op = store.create_operation(_op())
        store.transition(op.id, "SUCCEEDED", result={})
        ended.append(op.id)
    running = store.create_operation(_op(), chunks=[ChunkSpec(0, 1)], items=[
        StagedItem(0, "x", None, b"x", None)
    ])
    assert store.delete_expired(max_count=2, max_age_seconds=0) == 3
    left = [o.id for o in store.list_operations(None, 100).operations]
    assert left == [*ended[3:], running.id]  # the newest two ended ones and the running one
    time.sleep(0.2)
    assert store.delete_expired(max_count=0, max_age_seconds=0.1) == 2
    assert [o.id for o in store.list_operations(None, 100).operations] == [running.id]
    assert store.counts() == {("evaluate_dataset", "PENDING"): 1}
    assert store.count_active() == 1


def test_progress_stops_counting_when_the_operation_ends(store: StateStore) -> None:
    """``done`` is the chunks' progress while the operation runs, frozen once it has ended: a
    chunk that finishes (or reports) after a cancel does not move it; a revision marks every
    progress change for watchers."""
    op = store.create_operation(_op(), chunks=[ChunkSpec(0, 4), ChunkSpec(4, 7)])
    first, second = store.claim_chunk("a", 60), store.claim_chunk("b", 60)
    assert first is not None and second is not None
    before = store.revision(op.id)
    beat = store.heartbeat(first, "a", 60, items_done=3, item_result={"name": "img2"})
    assert beat.keep_going
    got = store.get_operation(op.id)
    assert got is not None and got.done == 3 and got.item_result == {"name": "img2"}
    assert got.revision > before  # type: ignore[operator]
    quiet = store.revision(op.id)
    assert store.heartbeat(first, "a", 60).keep_going  # a bare heartbeat is no change
    assert store.revision(op.id) == quiet
    assert store.transition(op.id, "CANCELLED", error_code="CANCELLED", error_message="by test")
    store.heartbeat(first, "a", 60, items_done=4)
    store.complete_chunk(second, "b", {"sum": 1}, _sum_finalizer([]))
    store.release_chunk(first, "a")
    ended = store.get_operation(op.id)
    assert ended is not None and (ended.state, ended.done) == ("CANCELLED", 3)
