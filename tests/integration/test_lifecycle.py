"""SIGTERM on a real server process under load: no accepted request is lost.

Health flips to NOT_SERVING at once, new RPCs get UNAVAILABLE, every in-flight request
finishes with a correct answer, and the process exits 0 (reliability check S1).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

SERVE = "from xaiserve.config import Settings; from xaiserve.api.server import serve_and_exit; serve_and_exit(Settings.from_env())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def inflight(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
        text = r.read().decode()
    match = re.search(r'^xaiserve_inflight_requests\{rpc="Explain"\} ([0-9.]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def health_status(stub: health_pb2_grpc.HealthStub) -> int | None:
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status  # type: ignore[no-any-return]
    except grpc.RpcError:
        return None


@pytest.fixture
def server_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    mask = np.zeros((32, 32), bool)
    mask[2:12, 2:12] = True
    write_model_folder(
        region_logit_model(32, 32, [mask, ~mask], gain=0.05),
        tmp_path / "repo",
        height=32,
        width=32,
        name="region",
    )
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "XAISERVE_MODELS_DIR": str(tmp_path / "repo"),
        "XAISERVE_PORT": str(port),
        "XAISERVE_HOST": "127.0.0.1",
        "XAISERVE_METRICS_PORT": str(metrics_port),
        "XAISERVE_DRAIN_SECONDS": "60",
        "XAISERVE_LOG_FORMAT": "text",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc, port, metrics_port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_drains_in_flight_work_and_exits_zero(server_process) -> None:  # type: ignore[no-untyped-def]
    proc, port, metrics_port = server_process
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.ExplainServiceStub(channel)
    wait_for(lambda: health_status(health) == health_pb2.HealthCheckResponse.SERVING, 90, "SERVING")

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    request = pb.ExplainRequest(
        model="region",
        image=pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[32, 32, 3], data=image.tobytes())),
        target=pb.ClassRef(index=0),
        method=pb.MethodParams(
            pixelwise_prediction_difference=pb.PixelwisePredictionDifferenceParams(
                stride=1, samples=20, seed=3
            )
        ),
    )
    results: list[object] = [None] * 6

    def call(i: int) -> None:
        try:
            results[i] = stub.Explain(request, timeout=120)
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: inflight(metrics_port) == 6, 60, "six requests in flight")
    assert all(r is None for r in results), "requests finished before the signal: make them slower"
    proc.send_signal(signal.SIGTERM)
    wait_for(
        lambda: health_status(health) != health_pb2.HealthCheckResponse.SERVING, 5, "NOT_SERVING"
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(pb.PredictRequest(model="region", image=request.image), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    for t in threads:
        t.join(120)
    maps = []
    for r in results:
        assert isinstance(r, pb.ExplainResponse), r
        maps.append(np.frombuffer(r.heatmap.data, "<f4"))
    assert all(np.array_equal(maps[0], m) for m in maps)  # same seed → identical maps
    assert proc.wait(timeout=10) == 0
    channel.close()
