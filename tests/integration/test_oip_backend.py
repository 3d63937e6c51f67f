"""The remote backend against a real OIP server (KServe's, hosting the demo ONNX model).

The server runs with TLS and a bearer token, as it would in production; xaiserve's own server
runs on loopback with one local copy of the demo model ("local") beside the remote one
("remote"), so every comparison is local vs remote inside one running service.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from tests.oip_support import DEMO_VERSION, OipServer, write_remote_model
from xaiserve.demo.shapes import render_sample
from xaiserve.runtime.context import CLIENT_DEADLINE_SLACK
from xaiserve.runtime.oip_config import OipConfig
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

DEMO_ONNX = DEMO_VERSION / "model.onnx"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def array(t: pb.Tensor) -> np.ndarray:
    dtype = np.uint8 if t.dtype == "uint8" else np.dtype("<f4")
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))


@pytest.fixture(scope="module")
def image() -> bytes:
    return png(render_sample(seed=7, index=3).image)


@pytest.fixture
def service(start_server, channel_to, tmp_path: Path, oip_server: OipServer):  # type: ignore[no-untyped-def]
    """xaiserve with the demo model locally ("local") and through the OIP server ("remote")."""
    root = tmp_path / "repo"
    (root / "local").mkdir(parents=True)
    import shutil

    shutil.copytree(DEMO_VERSION, root / "local" / "1")
    write_remote_model(root, oip_server, name="remote", max_batch_size=16, local_onnx=True)
    write_remote_model(root, oip_server, name="blackbox-only", max_batch_size=16)
    write_remote_model(root, oip_server, name="faulty", remote_model="shapes-faulty")
    oip_server.set_mode("shapes-faulty", "normal")
    server, port = start_server(root)
    return pb_grpc.ExplainServiceStub(channel_to(port)), server


def explain(stub: Any, model: str, image: bytes, method: pb.MethodParams, **kw: Any) -> Any:
    return stub.Explain(
        pb.ExplainRequest(
            model=model,
            image=pb.Image(encoded=image),
            method=method,
            target=pb.ClassRef(index=1),
        ),
        **kw,
    )


BLACK_BOX = {
    "regional_prediction_difference": pb.MethodParams(
        regional_prediction_difference=pb.RegionalPredictionDifferenceParams(scales=3, seed=5)
    ),
    "pixelwise_prediction_difference": pb.MethodParams(
        pixelwise_prediction_difference=pb.PixelwisePredictionDifferenceParams(
            inner_size=8, outer_size=12, samples=3, stride=8, seed=5
        )
    ),
    "contextual_importance": pb.MethodParams(
        contextual_importance=pb.ContextualImportanceParams(seed=5)
    ),
}


@pytest.mark.parametrize("method", sorted(BLACK_BOX))
def test_oip_black_box_maps_match_local(service: Any, image: bytes, method: str) -> None:
    stub, _ = service
    local = explain(stub, "local", image, BLACK_BOX[method])
    remote = explain(stub, "remote", image, BLACK_BOX[method])
    assert remote.provenance.backend == local.provenance.backend
    assert remote.forward_passes == local.forward_passes > 1
    np.testing.assert_allclose(array(remote.heatmap), array(local.heatmap), atol=1e-5)
    assert set(remote.maps) == set(local.maps)
    for key in local.maps:
        np.testing.assert_allclose(array(remote.maps[key]), array(local.maps[key]), atol=1e-5)
    assert remote.target.probability == pytest.approx(local.target.probability, abs=1e-5)


def test_oip_score_matches_local(service: Any, image: bytes) -> None:
    stub, _ = service
    request = dict(
        image=pb.Image(encoded=image),
        target=pb.ClassRef(index=1),
        method=BLACK_BOX["regional_prediction_difference"],
        morf=pb.MorfParams(window=16, steps=8, repeats=2, seed=3),
    )
    local = stub.Score(pb.ScoreRequest(model="local", **request))
    remote = stub.Score(pb.ScoreRequest(model="remote", **request))
    for field in ("morf_curve", "lerf_curve", "random_curve"):
        np.testing.assert_allclose(getattr(remote, field), getattr(local, field), atol=1e-5)
    assert remote.aopc_morf == pytest.approx(local.aopc_morf, abs=1e-5)
    np.testing.assert_allclose(array(remote.heatmap), array(local.heatmap), atol=1e-5)


def test_oip_each_batch_is_one_model_infer_within_the_bound(
    service: Any, image: bytes, oip_server: OipServer
) -> None:
    stub, _ = service
    oip_server.clear_calls()
    five_scales = pb.MethodParams(
        regional_prediction_difference=pb.RegionalPredictionDifferenceParams(scales=5, seed=5)
    )
    response = explain(stub, "remote", image, five_scales)
    calls = [c for c in oip_server.calls() if c["model"] == "shapes"]
    sizes = [c["shape"][0][0] for c in calls]
    # Every image went through one of these calls, each a batch of ≤ 16 (the configured bound)
    # with the batch dimension first: far fewer calls than images.
    assert sum(sizes) == response.forward_passes
    assert max(sizes) == 16 and len(calls) < response.forward_passes / 4
    assert all(c["shape"][0][1:] == [3, 64, 64] for c in calls)
    assert all(c["authorization"] == "Bearer test-token-0123456789" for c in calls)


def test_oip_get_model_shows_the_remote(service: Any, oip_server: OipServer) -> None:
    stub, _ = service
    info = stub.GetModel(pb.GetModelRequest(model="remote")).versions[0]
    assert info.state == pb.ModelVersionInfo.READY
    assert list(info.backends) == ["oip", "torch"]
    assert list(info.providers) == [f"oip:{oip_server.url}"]
    assert info.input.input_name == "input"  # filled from the remote's ModelMetadata
    assert "lrp" in info.methods and "regional_prediction_difference" in info.methods
    # Its batches run as backend.max_concurrency calls in flight (the default), no local threads.
    default = OipConfig(url="localhost:1", model_name="m").max_concurrency
    assert (info.inference_workers, info.intra_op_threads) == (default, 0)
    only = stub.GetModel(pb.GetModelRequest(model="blackbox-only")).versions[0]
    assert list(only.backends) == ["oip"]
    assert "lrp" not in only.methods


def test_oip_predict_matches_local(service: Any, image: bytes) -> None:
    stub, _ = service
    local = stub.Predict(pb.PredictRequest(model="local", image=pb.Image(encoded=image)))
    remote = stub.Predict(pb.PredictRequest(model="remote", image=pb.Image(encoded=image)))
    assert [c.index for c in remote.classes] == [c.index for c in local.classes]
    np.testing.assert_allclose(
        [c.probability for c in remote.classes], [c.probability for c in local.classes], atol=1e-6
    )


def test_oip_white_box_needs_a_local_copy(service: Any, image: bytes) -> None:
    stub, _ = service
    lrp = pb.MethodParams(lrp=pb.LrpParams())
    with pytest.raises(grpc.RpcError) as err:
        explain(stub, "blackbox-only", image, lrp)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.onnx" in err.value.details() and "remote OIP server" in err.value.details()
    # With the pinned local copy the white-box map is the local model's.
    remote = explain(stub, "remote", image, lrp)
    local = explain(stub, "local", image, lrp)
    np.testing.assert_allclose(array(remote.heatmap), array(local.heatmap), atol=1e-5)


def test_oip_unpinned_or_different_local_copy_disables_white_box(
    start_server, channel_to, tmp_path: Path, oip_server: OipServer, image: bytes
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_remote_model(root, oip_server, name="unpinned", local_onnx=True, pin=False)
    # A pinned local file that is another model: the demo graph with its last bias changed.
    other = write_remote_model(root, oip_server, name="other", local_onnx=True, pin=False)
    import hashlib

    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(other / "model.onnx"))
    init = graph.graph.initializer[-1]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
    onnx.save(graph, str(other / "model.onnx"))
    sha = hashlib.sha256((other / "model.onnx").read_bytes()).hexdigest()
    cfg = other / "config.toml"
    cfg.write_text(f'sha256 = "{sha}"\n' + cfg.read_text())
    _, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    for name, needle in (("unpinned", "set sha256"), ("other", "does not compute what")):
        with pytest.raises(grpc.RpcError) as err:
            explain(stub, name, image, pb.MethodParams(lrp=pb.LrpParams()))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert needle in err.value.details()


@pytest.mark.parametrize(
    ("mode", "needle"),
    [("wrong_shape", "answered shape [1, 4]"), ("wrong_dtype", "answered datatype INT64")],
)
def test_oip_wrong_answer_is_failed_precondition_naming_the_remote(
    service: Any, image: bytes, oip_server: OipServer, mode: str, needle: str
) -> None:
    stub, _ = service
    oip_server.set_mode("shapes-faulty", mode)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb.PredictRequest(model="faulty", image=pb.Image(encoded=image)))
    finally:
        oip_server.set_mode("shapes-faulty", "normal")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "remote OIP server grpcs://127.0.0.1:" in err.value.details()
    assert "'shapes-faulty'" in err.value.details() and needle in err.value.details()
    # A configuration mismatch says nothing about availability: the circuit stays closed.
    info = stub.GetModel(pb.GetModelRequest(model="faulty")).versions[0]
    assert info.state == pb.ModelVersionInfo.READY


def test_oip_wrong_answer_at_load_fails_the_version(
    start_server, channel_to, tmp_path: Path, oip_server: OipServer
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_remote_model(root, oip_server, name="faulty", remote_model="shapes-faulty")
    write_remote_model(root, oip_server, name="no-token", token=False)
    wrong_size = write_remote_model(root, oip_server, name="wrong-size") / "config.toml"
    wrong_size.write_text(wrong_size.read_text().replace("height = 64", "height = 32"))
    oip_server.set_mode("shapes-faulty", "wrong_shape")
    try:
        _, port = start_server(root)
    finally:
        oip_server.set_mode("shapes-faulty", "normal")
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    faulty = stub.GetModel(pb.GetModelRequest(model="faulty")).versions[0]
    assert faulty.state == pb.ModelVersionInfo.FAILED
    assert "remote OIP server" in faulty.error and "answered shape" in faulty.error
    no_token = stub.GetModel(pb.GetModelRequest(model="no-token")).versions[0]
    assert no_token.state == pb.ModelVersionInfo.FAILED
    assert "UNAUTHENTICATED" in no_token.error and "remote OIP server" in no_token.error
    # ModelMetadata's declared input shape is checked against [input] at load.
    size = stub.GetModel(pb.GetModelRequest(model="wrong-size")).versions[0]
    assert size.state == pb.ModelVersionInfo.FAILED
    assert "declares input 'input' of shape [-1, 3, 64, 64]" in size.error
    assert "[batch, 3, 32, 64]" in size.error


def test_oip_deadline_reaches_the_remote(service: Any, image: bytes, oip_server: OipServer) -> None:
    stub, _ = service
    oip_server.clear_calls()
    oip_server.set_mode("shapes-faulty", "slow 4")
    try:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(
                pb.PredictRequest(model="faulty", image=pb.Image(encoded=image)), timeout=1.0
            )
        elapsed = time.monotonic() - start
    finally:
        oip_server.set_mode("shapes-faulty", "normal")
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 3.0  # not the remote's 4 s, nor the 30 s timeout_ms
    (call,) = [c for c in oip_server.calls() if c["model"] == "shapes-faulty"]
    # The remote was told how long the client would wait: the client's 1 s, not our 30 s
    # timeout_ms. gRPC rounds the grpc-timeout header up and takes it from a cached clock on
    # each hop, so under load the remote may see a few milliseconds more than the client set.
    assert call["time_remaining"] is not None
    assert 0 < call["time_remaining"] < 1.0 + CLIENT_DEADLINE_SLACK


def metric(server: Any, name: str, **labels: str) -> float | None:
    return server.metrics.registry.get_sample_value(name, labels)  # type: ignore[no-any-return]


def test_oip_forward_pass_latency_is_labelled_by_backend(service: Any, image: bytes) -> None:
    stub, server = service
    for model in ("local", "remote"):
        stub.Predict(pb.PredictRequest(model=model, image=pb.Image(encoded=image)))
    name = "xaiserve_forward_pass_seconds_count"
    local = metric(server, name, model="local", version="1", runtime="onnxruntime", batch_size="1")
    remote = metric(server, name, model="remote", version="1", runtime="oip", batch_size="1")
    assert local and remote and local >= 1 and remote >= 1
    calls = metric(server, "xaiserve_remote_calls_total", model="remote", version="1", code="OK")
    assert calls is not None and calls >= 1


def test_oip_remote_stopped_mid_request(
    start_server, channel_to, tmp_path: Path, own_remote: OipServer, image: bytes
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_remote_model(root, own_remote, max_attempts=3, backoff_ms=20.0)
    _, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    own_remote.set_mode("shapes", "slow 1.5")
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            explain(stub, "remote", image, BLACK_BOX["regional_prediction_difference"], timeout=30)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call)
    start = time.monotonic()
    worker.start()
    time.sleep(0.5)  # the request is now waiting on the remote's first ModelInfer
    own_remote.stop()
    worker.join(timeout=20)
    assert not worker.is_alive()
    error = outcome["error"]
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"remote OIP server grpc://127.0.0.1:{own_remote.port}" in error.details()
    assert "after 3 attempts" in error.details()
    assert time.monotonic() - start < 15


def wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_oip_circuit_opens_and_closes(
    start_server, channel_to, tmp_path: Path, own_remote: OipServer, image: bytes
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_remote_model(
        root,
        own_remote,
        max_attempts=1,
        circuit_failures=2,
        circuit_reset_ms=5000.0,  # no half-open trial during the test: the probe closes it
        probe_interval_ms=100.0,
        timeout_ms=2000.0,
    )
    server, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    predict = pb.PredictRequest(model="remote", image=pb.Image(encoded=image))
    state = lambda: metric(server, "xaiserve_remote_circuit_state", model="remote", version="1")  # noqa: E731
    info = lambda: stub.GetModel(pb.GetModelRequest(model="remote")).versions[0]  # noqa: E731
    assert stub.Predict(predict).classes and state() == 0
    own_remote.stop()
    for _ in range(2):  # two failed batches open the circuit
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(predict)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert state() == 1
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(predict)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit open" in err.value.details() and "remote OIP server" in err.value.details()
    failed = info()
    assert failed.state == pb.ModelVersionInfo.FAILED and "circuit open" in failed.error
    own_remote.start()  # the same port: the remote recovers
    assert wait_for(lambda: state() == 0), "the circuit did not close by itself"
    assert wait_for(lambda: info().state == pb.ModelVersionInfo.READY)
    assert stub.Predict(predict).classes


def test_oip_readiness_follows_model_ready(
    start_server, channel_to, tmp_path: Path, own_remote: OipServer, image: bytes
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_remote_model(root, own_remote, probe_interval_ms=100.0)
    server, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    info = lambda: stub.GetModel(pb.GetModelRequest(model="remote")).versions[0]  # noqa: E731
    health = health_pb2_grpc.HealthStub(channel_to(port))
    status = lambda: health.Check(health_pb2.HealthCheckRequest(service="model/remote")).status  # noqa: E731
    serving = health_pb2.HealthCheckResponse.SERVING
    assert info().state == pb.ModelVersionInfo.READY and status() == serving
    own_remote.set_mode("shapes", "not_ready")
    assert wait_for(lambda: info().state == pb.ModelVersionInfo.FAILED)
    assert "ModelReady = false" in info().error
    assert metric(server, "xaiserve_remote_ready", model="remote", version="1") == 0
    assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model="remote", image=pb.Image(encoded=image)))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in err.value.details()
    # The server as a whole stays SERVING: one remote model down is not a reason to drop the pod.
    assert health.Check(health_pb2.HealthCheckRequest()).status == serving
    own_remote.set_mode("shapes", "normal")
    assert wait_for(lambda: info().state == pb.ModelVersionInfo.READY)
    assert wait_for(lambda: status() == serving)


def test_oip_warm_up_and_torch_budget_of_a_remote_model(  # type: ignore[no-untyped-def]
    start_server, tmp_path: Path, oip_server: OipServer
) -> None:
    """A remote model with its pinned local ONNX warms up before it is ready (black-box methods
    through the remote, white-box ones on the local copy, which takes the server's torch batch
    budget); without a local copy only the black-box paths are warmed."""
    from xaiserve.methods import registered_methods

    root = tmp_path / "repo"
    write_remote_model(root, oip_server, name="remote", max_batch_size=16, local_onnx=True)
    write_remote_model(root, oip_server, name="blackbox-only", max_batch_size=16)
    budget = 96 * 2**20
    server, _ = start_server(root, warmup=True, torch_batch_bytes=budget)
    registry = server.metrics.registry

    def runs(model: str, path: str) -> dict[str, float]:
        return {
            outcome: registry.get_sample_value(
                "xaiserve_model_warmup_runs_total",
                {"model": model, "version": "1", "path": path, "outcome": outcome},
            )
            or 0.0
            for outcome in ("ok", "failed", "skipped")
        }

    methods = registered_methods()
    for name, spec in methods.items():
        if name == "gad":
            continue
        path = f"method:{name}"
        assert runs("remote", path) == {"ok": 1, "failed": 0, "skipped": 0}, path
        expected = 1 if spec.backend == "blackbox" else 0
        assert runs("blackbox-only", path)["ok"] == expected, path
    assert runs("blackbox-only", "torch_pool") == {"ok": 0, "failed": 0, "skipped": 0}
    remote = server.repository.get("remote")
    with remote.torch_backend() as lease:
        assert lease.batch_bytes == budget
