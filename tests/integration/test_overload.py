"""Overload, deadlines and concurrency correctness through the real server (checks L3, D1, C1)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.support import region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

SIZE = 32


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    a = np.zeros((SIZE, SIZE), bool)
    a[2:12, 2:12] = True
    b = np.zeros((SIZE, SIZE), bool)
    b[18:30, 16:30] = True
    write_model_folder(
        region_logit_model(SIZE, SIZE, [a, b], gain=0.05),
        tmp_path / "repo",
        height=SIZE,
        width=SIZE,
        name="m",
    )
    return tmp_path / "repo"


def image_msg(seed: int) -> pb.Image:
    img = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[SIZE, SIZE, 3], data=img.tobytes()))


def slow_request(seed: int = 0, samples: int = 40) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model="m",
        image=image_msg(seed),
        target=pb.ClassRef(index=0),
        method=pb.MethodParams(
            pixelwise_prediction_difference=pb.PixelwisePredictionDifferenceParams(
                stride=1, samples=samples, seed=1
            )
        ),
    )


DEADLINE_SAMPLES = 300
FULL_COST = (SIZE - 10 + 1) ** 2 * DEADLINE_SAMPLES
HOLD_SAMPLES = 3000
"""A request ten times longer than ``DEADLINE_SAMPLES`` (≈ 35 s here, 1.6 M passes): it holds a
runner until its deadline on any machine (300 samples took 3.3 s, close to a 3 s deadline)."""


def images_done(server) -> float:  # type: ignore[no-untyped-def]
    return (
        server.metrics.registry.get_sample_value(
            "xaiserve_inference_images_total", {"model": "m", "version": "1"}
        )
        or 0.0
    )


def test_concurrency_limit_refuses_exactly_the_overflow(
    start_server, channel_to, repo: Path
) -> None:  # type: ignore[no-untyped-def]
    server, port = start_server(repo, max_concurrent_requests=2)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    # Long enough to be running on any machine while the overflow is refused; cancelled after.
    holders = [
        stub.Explain.future(slow_request(samples=DEADLINE_SAMPLES), timeout=120) for _ in range(2)
    ]
    deadline = time.monotonic() + 30
    while server.admission.active < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    refused = 0
    for i in range(5):
        try:
            stub.Explain(slow_request(seed=i + 1), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_concurrent_requests" in exc.details()
            refused += 1
    # cheap calls have their own pool (#18): the explanation overflow never starves Predict
    assert stub.Predict(pb.PredictRequest(model="m", image=image_msg(8)), timeout=10).classes
    still_busy = server.admission.active == 2
    for h in holders:
        h.cancel()
    assert still_busy and refused == 5
    assert (
        server.metrics.registry.get_sample_value(
            "xaiserve_rejected_requests_total", {"reason": "concurrency"}
        )
        == 5
    )
    # load gone: served again at once
    assert stub.Predict(pb.PredictRequest(model="m", image=image_msg(9)), timeout=10).classes


def test_deadline_stops_work_at_the_next_batch(start_server, channel_to, repo: Path) -> None:  # type: ignore[no-untyped-def]
    server, port = start_server(repo)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    before = images_done(server)
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(slow_request(samples=DEADLINE_SAMPLES), timeout=0.3)
    at_deadline = images_done(server)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.0)
    after = images_done(server)
    max_batch = 32
    assert after - at_deadline <= 2 * max_batch, (
        before,
        at_deadline,
        after,
    )  # ≤ the pieces in flight
    assert after - before < FULL_COST / 2  # far from the full request
    assert (
        server.metrics.registry.get_sample_value("xaiserve_inflight_requests", {"rpc": "Explain"})
        == 0
    )
    ok = stub.Predict(
        pb.PredictRequest(model="m", image=image_msg(1)), timeout=10
    )  # not delayed by the dead one
    assert ok.classes


def test_concurrent_requests_get_the_same_maps_as_sequential(
    start_server, channel_to, repo: Path
) -> None:  # type: ignore[no-untyped-def]
    _, port = start_server(repo)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    requests = []
    for i in range(4):
        for params in (
            pb.MethodParams(
                regional_prediction_difference=pb.RegionalPredictionDifferenceParams(seed=i)
            ),
            pb.MethodParams(contextual_importance=pb.ContextualImportanceParams(seed=i)),
            pb.MethodParams(lrp=pb.LrpParams(composite="epsilon_plus" if i % 2 else "lrp_z")),
            pb.MethodParams(integrated_gradients=pb.IntegratedGradientsParams(steps=8)),
        ):
            requests.append(
                pb.ExplainRequest(
                    model="m", image=image_msg(i), target=pb.ClassRef(index=i % 2), method=params
                )
            )

    def run(r: pb.ExplainRequest) -> np.ndarray:
        return np.frombuffer(stub.Explain(r, timeout=120).heatmap.data, "<f4")

    sequential = [run(r) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(run, requests))
    for r, a, b in zip(requests, sequential, concurrent, strict=True):
        np.testing.assert_allclose(
            a, b, rtol=1e-5, atol=1e-7, err_msg=r.method.WhichOneof("method")
        )


def sample(server, name: str, labels: dict[str, str] | None = None) -> float:  # type: ignore[no-untyped-def]
    return server.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_admitted_calls_beyond_the_runners_wait_their_turn(
    start_server, channel_to, repo: Path
) -> None:  # type: ignore[no-untyped-def]
    """#18: with one runner, a second admitted Explain waits (it is not refused) and runs when
    the first ends; one whose deadline passes while it waits never starts."""
    server, port = start_server(
        repo, max_concurrent_requests=3, max_running_requests=1, max_forward_passes=2_000_000
    )
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    holder_error: list[grpc.StatusCode] = []

    def hold() -> None:
        try:
            stub.Explain(slow_request(samples=HOLD_SAMPLES), timeout=3.0)
        except grpc.RpcError as exc:
            holder_error.append(exc.code())

    holder = threading.Thread(target=hold)
    holder.start()
    deadline = time.monotonic() + 30
    while images_done(server) == 0:  # the holder runs on the only runner
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started_before = sample(server, "xaiserve_run_wait_seconds_count")

    waiting_seen: list[float] = []

    def watch() -> None:
        time.sleep(0.5)
        waiting_seen.append(sample(server, "xaiserve_requests_waiting_to_run"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(slow_request(seed=1, samples=2), timeout=1.0)
    watcher.join()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert waiting_seen == [1.0]  # it waited, admitted, while the holder ran
    assert sample(server, "xaiserve_run_wait_seconds_count") == started_before  # never started

    queued_at = time.monotonic()
    reply = stub.Explain(slow_request(seed=2, samples=2), timeout=60)  # waits, then runs
    waited = time.monotonic() - queued_at
    holder.join(30)
    assert holder_error == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert reply.heatmap.data and waited > 0.5  # the holder still had > 1 s to go
    assert sample(server, "xaiserve_requests_waiting_to_run") == 0.0
    assert sample(server, "xaiserve_run_wait_seconds_count") == started_before + 1
    assert sample(server, "xaiserve_rejected_requests_total", {"reason": "concurrency"}) == 0
    expired = [  # the holder, and the call that never started (its method is not read yet)
        s.labels["method"]
        for m in server.metrics.registry.collect()
        for s in m.samples
        if s.name == "xaiserve_requests_total"
        and s.labels.get("rpc") == "Explain"
        and s.labels.get("code") == "DEADLINE_EXCEEDED"
        for _ in range(int(s.value))
    ]
    assert sorted(expired) == ["none", "pixelwise_prediction_difference"]
