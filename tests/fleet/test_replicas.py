"""Three real server processes on one PostgreSQL and one artifact folder: one service.

Every client-caused state change is made through a replica other than the one running the
work; results are checked against a single-process run of the same items and seeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest

from tests.fleet.replicas import Replica, replica_env
from tests.postgres import PostgresServer
from xaiserve_client import ExplainClient
from xaiserve_client.v1 import explain_pb2 as pb

pytestmark = pytest.mark.slow  # server processes: seconds each to start

MODEL = "shapes"
METHODS = {"saliency": {}}
MORF = {"steps": 24, "repeats": 2, "seed": 3}
WATCHED_METHODS = {"saliency": {}, "integrated_gradients": {"steps": 64}}


@pytest.fixture(scope="module")
def fleet_db(postgres_server: PostgresServer) -> str:
    postgres_server.start()
    return postgres_server.database()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="module")
def replicas(fleet_db: str, shared: Path) -> Iterator[list[Replica]]:
    (shared / "artifacts").mkdir(exist_ok=True)
    started = []
    try:
        for name in "abc":
            env = replica_env(fleet_db, shared / "artifacts", shared / f"data-{name}")
            started.append(Replica(name, env, shared).spawn())
        for r in started:
            r.start(wait_serving=False)
        for r in started:
            r.wait_health("SERVING", 240)
        yield started
    finally:
        for r in started:
            r.stop()


def _items(n: int, start: int = 0) -> list[tuple[Any, ...]]:
    from xaiserve.demo.shapes import heldout

    data = heldout(start + n)
    return [
        (data.images[i], int(data.labels[i]), data.masks[i], f"img{i}")
        for i in range(start, start + n)
    ]


def _client(r: Replica) -> ExplainClient:
    return ExplainClient(r.address, timeout=60.0)


def _running_holders(url: str, op_id: str) -> set[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT lease_owner FROM chunks WHERE operation_id = %s AND status = 'running'",
            (op_id,),
        ).fetchall()
    return {int(r[0].split("/")[0].rsplit(":", 1)[1]) for r in rows if r[0]}


def _wait(stub: Any, op_id: str, timeout: float) -> pb.Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = stub.GetOperation(pb.OperationRequest(id=op_id), timeout=10)
        if op.state in (pb.Operation.SUCCEEDED, pb.Operation.FAILED, pb.Operation.CANCELLED):
            return op
        time.sleep(0.2)
    raise AssertionError(f"operation {op_id} did not end in {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> dict[str, Any]:
    """The same evaluation (items, methods, seeds) on a single process with SQLite."""
    root = tmp_path_factory.mktemp("single")
    env = replica_env("", root / "artifacts", root / "data")
    single = Replica("single", env, shared).start()
    try:
        with _client(single) as client:
            op = client.evaluate_dataset(_items(12), MODEL, methods=METHODS, morf=MORF)
            final = client.wait_operation(op.id, timeout=300)
        assert final.state == "SUCCEEDED", final.error
        return dict(final.result)
    finally:
        single.stop()


def test_start_on_a_watch_on_b_cancel_on_c(replicas: list[Replica]) -> None:
    a, b, c = replicas
    with _client(a) as ca, _client(b) as cb, _client(c) as cc:
        # work that lasts several of B's polls (9 chunks, 3 rounds over the fleet), so B can
        # only see intermediate progress if it reads what the other replicas commit
        op = ca.evaluate_dataset(_items(18), MODEL, methods=WATCHED_METHODS, morf=MORF)
        seen = []
        final = cb.wait_operation(op.id, timeout=300, on_update=seen.append)
        assert final.state == "SUCCEEDED", final.error
        assert final.done == 18 and final.result["images"] == 18
        dones = [u.done for u in seen]
        assert dones == sorted(dones) and len(set(dones)) >= 3, dones  # B saw the fleet progress

        long = ca.evaluate_dataset(_items(40), MODEL, methods=METHODS, morf=MORF)
        while cb.get_operation(long.id).done < 2:
            time.sleep(0.1)
        cancelled = cc.cancel_operation(long.id)
        assert cancelled.state == "CANCELLED"
        time.sleep(2.0)  # every replica has stopped its chunk of it by now
        frozen = cb.get_operation(long.id).done
        time.sleep(1.5)
        after = ca.get_operation(long.id)
        assert after.state == "CANCELLED" and after.done == frozen
        assert "cancelled by request" in str(after.error)
        assert long.id in [o.id for o in cc.list_operations()]


def test_kill_9_mid_run_counts_every_item_once(
    replicas: list[Replica], fleet_db: str, reference: dict[str, Any]
) -> None:
    a = replicas[0]
    with _client(a) as ca:
        op = ca.evaluate_dataset(_items(12), MODEL, methods=METHODS, morf=MORF)
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:
            holders = _running_holders(fleet_db, op.id)
            done = ca.get_operation(op.id).done
            for r in replicas:
                if r.pid in holders and r is not a and done >= 1:
                    victim = r
            time.sleep(0.05)
        assert victim is not None, "no replica other than A held a chunk"
        victim.kill9()
        survivors = [r for r in replicas if r is not victim]
        with _client(survivors[0]) as cs:
            final = cs.wait_operation(op.id, timeout=300)
    assert final.state == "SUCCEEDED", final.error
    assert final.done == 12
    assert dict(final.result) | {"report": None} == reference | {"report": None}
    victim.start()  # back to three for the next tests


def test_fit_gad_via_a_explain_gad_via_b(replicas: list[Replica], shared: Path) -> None:
    a, b, _ = replicas
    from xaiserve.demo.shapes import heldout

    data = heldout(40)
    items = [(data.images[i], int(data.labels[i]), None, f"g{i}") for i in range(40)]
    with _client(a) as ca, _client(b) as cb:
        op = ca.fit_gad(items, MODEL, class_a=0, class_b=1, alphas=[2.0], epochs=1, seed=1)
        final = cb.wait_operation(op.id, timeout=300)
        assert final.state == "SUCCEEDED", final.error
        set_id = final.result["support_set"]
        assert (shared / "artifacts" / "models" / MODEL / "1" / "support_sets" / set_id).is_dir()
        explained = cb.explain(data.images[0], "gad", MODEL, params={"support_set": set_id})
        assert np.isfinite(np.asarray(explained.heatmap)).all()


def test_restart_all_three_resumes_and_keeps_everything(
    replicas: list[Replica], fleet_db: str, shared: Path
) -> None:
    a, c = replicas[0], replicas[2]
    with _client(a) as ca:
        before = {o.id: o.state for o in ca.list_operations()}
        op = ca.evaluate_dataset(_items(10), MODEL, methods=METHODS, morf=MORF)
        while ca.get_operation(op.id).done < 2:
            time.sleep(0.05)
    sets = sorted(p.name for p in (shared / "artifacts").rglob("gad-*"))
    for r in replicas:
        r.send_terminate()
    assert [r.reap() for r in replicas] == [0, 0, 0]
    with psycopg.connect(fleet_db) as conn:
        message = conn.execute(
            "SELECT state, message FROM operations WHERE id = %s", (op.id,)
        ).fetchone()
    assert message[0] == "RUNNING" and "interrupted by shutdown" in message[1]
    for r in replicas:
        r.spawn()
    for r in replicas:
        r.start(wait_serving=False)
    for r in replicas:
        r.wait_health("SERVING", 240)
    with _client(c) as cc:
        final = cc.wait_operation(op.id, timeout=300)
        assert final.state == "SUCCEEDED" and final.done == 10, final.error
        after = {o.id: o.state for o in cc.list_operations()}
        assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(p.name for p in (shared / "artifacts").rglob("gad-*")) == sets


def test_a_replica_without_the_database_is_not_ready_then_recovers(
    postgres_server: PostgresServer, shared: Path, tmp_path: Path
) -> None:
    url = postgres_server.database()
    postgres_server.stop()
    try:
        r = Replica("late", replica_env(url, tmp_path / "art", tmp_path / "d"), shared)
        r.start(wait_serving=False)
        deadline = time.monotonic() + 60
        while "state store" not in r.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.health() == "NOT_SERVING"
        log = r.log.read_text()
        assert "not ready" in log and "unreachable" in log and "retrying" in log
    finally:
        postgres_server.start()
    try:
        r.wait_health("SERVING", 60)
        with _client(r) as client:
            assert client.list_operations() == []
    finally:
        r.stop()


def test_losing_the_database_keeps_explain_and_answers_unavailable(
    postgres_server: PostgresServer, shared: Path, tmp_path: Path
) -> None:
    url = postgres_server.database()
    r = Replica("lonely", replica_env(url, tmp_path / "art", tmp_path / "d"), shared).start()
    try:
        with _client(r) as client:
            image = _items(1)[0][0]
            op = client.evaluate_dataset(_items(8), MODEL, methods=METHODS, morf=MORF)
            while client.get_operation(op.id).done < 1:
                time.sleep(0.05)
            postgres_server.stop()
            try:
                assert client.predict(image, MODEL).top is not None
                assert client.explain(image, "saliency", MODEL).heatmap is not None
                with pytest.raises(Exception) as info:
                    client.get_operation(op.id)
                code = getattr(info.value, "code", None)
                assert "unreachable" in str(info.value)
                assert code is None or code == grpc.StatusCode.UNAVAILABLE or "UNAVAILABLE" in str(code)
                time.sleep(1.0)
            finally:
                postgres_server.start()
            deadline = time.monotonic() + 60  # the pool reconnects within seconds
            while True:
                try:
                    client.get_operation(op.id)
                    break
                except Exception as exc:
                    assert "unreachable" in str(exc) and time.monotonic() < deadline
                    time.sleep(0.5)
            final = client.wait_operation(op.id, timeout=300)
            assert final.state == "SUCCEEDED" and final.done == 8, final.error
            assert final.result["images"] == 8
    finally:
        r.stop()
