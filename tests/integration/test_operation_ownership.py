"""Operations belong to their caller (auth on), are listed a page at a time, and are kept
within the retention limits, with the stored count exported — each against a real server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import DEMO_MODEL_DIR
from xaiserve.demo import shapes
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789", "admin-token-0123456789"
TERMINAL = (pb.Operation.SUCCEEDED, pb.Operation.FAILED, pb.Operation.CANCELLED)


def _auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def _start(stub: Any, token: str | None = None, images: int = 1) -> pb.Operation:
    config = pb.EvaluateDatasetConfig(
        model="shapes",
        methods=[pb.MethodParams(saliency=pb.SaliencyParams())],
        morf=pb.MorfParams(steps=2, repeats=1, seed=1),
        dataset="ds",
        limit=images,
    )
    metadata = _auth(token) if token else None
    return stub.EvaluateDataset(iter([pb.EvaluateDatasetRequest(config=config)]), metadata=metadata)


def _wait(stub: Any, op_id: str, token: str | None = None) -> pb.Operation:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        op = stub.GetOperation(pb.OperationRequest(id=op_id), metadata=_auth(token) if token else None)
        if op.state in TERMINAL:
            return op
        time.sleep(0.05)
    raise AssertionError("operation did not end")


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    shapes.save_folder(shapes.heldout(4), tmp_path / "datasets" / "ds")
    return tmp_path / "datasets"


def test_an_operation_is_visible_only_to_its_owner_and_admins(
    start_server: Any, channel_to: Any, tmp_path: Path, datasets: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ALICE}\n{BOB}\n")
    admins = tmp_path / "admins"
    admins.write_text(f"# operators\n{ADMIN}\n")
    _, port = start_server(
        DEMO_MODEL_DIR, auth_tokens_file=str(tokens), admin_tokens_file=str(admins),
        datasets_dir=str(datasets),
    )
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    mine = _start(stub, ALICE)
    theirs = _start(stub, BOB)
    request = pb.OperationRequest(id=mine.id)
    for call in (stub.GetOperation, stub.CancelOperation):
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=_auth(BOB))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stub.WatchOperation(request, metadata=_auth(BOB))))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = {
        token: [o.id for o in stub.ListOperations(pb.ListOperationsRequest(), metadata=_auth(token)).operations]
        for token in (ALICE, BOB, ADMIN)
    }
    assert listed == {ALICE: [mine.id], BOB: [theirs.id], ADMIN: [mine.id, theirs.id]}
    assert _wait(stub, mine.id, ALICE).state == pb.Operation.SUCCEEDED  # Bob's cancel did nothing
    admin_view = stub.CancelOperation(pb.OperationRequest(id=theirs.id), metadata=_auth(ADMIN))
    assert admin_view.id == theirs.id  # an admin may cancel anyone's (it may have finished)


def test_list_operations_pages(start_server: Any, channel_to: Any, datasets: Path) -> None:
    _, port = start_server(DEMO_MODEL_DIR, datasets_dir=str(datasets))
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    ids = []
    for _ in range(5):
        ids.append(_start(stub).id)
        _wait(stub, ids[-1])
    pages, token = [], ""
    while True:
        page = stub.ListOperations(pb.ListOperationsRequest(page_size=2, page_token=token))
        pages.append([o.id for o in page.operations])
        token = page.next_page_token
        if not token:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    assert [o.id for o in stub.ListOperations(pb.ListOperationsRequest()).operations] == ids
    with pytest.raises(grpc.RpcError) as info:
        stub.ListOperations(pb.ListOperationsRequest(page_token="garbage"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (info.value.details() or "")


def test_retention_by_count_and_the_stored_metric(
    start_server: Any, channel_to: Any, datasets: Path
) -> None:
    server, port = start_server(
        DEMO_MODEL_DIR, datasets_dir=str(datasets), operations_retention_count=2
    )
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    ids = []
    for _ in range(4):
        ids.append(_start(stub).id)
        _wait(stub, ids[-1])
    deadline = time.monotonic() + 20
    listed: list[str] = []
    while time.monotonic() < deadline:
        listed = [o.id for o in stub.ListOperations(pb.ListOperationsRequest()).operations]
        if len(listed) == 2:
            break
        time.sleep(0.2)
    assert listed == ids[2:]  # the newest two are kept
    with pytest.raises(grpc.RpcError) as info:
        stub.GetOperation(pb.OperationRequest(id=ids[0]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    stored = server.metrics.registry.get_sample_value("xaiserve_operations_stored")
    assert stored == 2


def test_retention_by_age(start_server: Any, channel_to: Any, datasets: Path) -> None:
    age_days = 3.0 / 86400  # three seconds
    _, port = start_server(
        DEMO_MODEL_DIR, datasets_dir=str(datasets), operations_retention_days=age_days
    )
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    old = _start(stub).id
    _wait(stub, old)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not stub.ListOperations(pb.ListOperationsRequest()).operations:
            break
        time.sleep(0.5)
    assert list(stub.ListOperations(pb.ListOperationsRequest()).operations) == []
