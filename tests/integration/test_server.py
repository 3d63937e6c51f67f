"""The real server on a loopback port, over raw stubs: contract, errors, metrics, health."""

from __future__ import annotations

import io
import random
import string
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client import generate_latest

from tests.support import region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

TRAVERSAL = [
    "../etc",
    "a/../b",
    "../../etc/passwd",
    "/etc/passwd",
    "model/subdir",
    "..",
    " ..",
    ".. ",
    "model/",
    "%2e%2e%2f",
    "mo\x00del",
    "x" * 10_000,
    ".hidden",
    "",
]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def repo(tmp_path: Path, region_masks: tuple[np.ndarray, np.ndarray]) -> Path:
    root = tmp_path / "repo"
    a, b = region_masks
    write_model_folder(
        region_logit_model(16, 16, [a, b], gain=0.05),
        root,
        height=16,
        width=16,
        labels=["left", "right"],
        name="regions",
    )
    write_model_folder(
        region_logit_model(16, 16, [b, a], gain=0.05),
        root,
        height=16,
        width=16,
        labels=["right", "left"],
        name="regions",
        version="2",
    )
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not onnx")
    (broken / "config.toml").write_text(
        '[input]\nheight = 4\nwidth = 4\n[output]\nlabels = ["a"]\n'
    )
    return root


@pytest.fixture
def stub(start_server, channel_to, repo: Path):  # type: ignore[no-untyped-def]
    server, port = start_server(repo)
    return pb_grpc.ExplainServiceStub(channel_to(port)), server, port


def code_of(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


def test_list_and_get_models_report_ready_and_failed(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    models = {m.name: m for m in s.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"broken", "regions"}
    assert [v.version for v in models["regions"].versions] == ["2", "1"]  # newest first
    v1 = models["regions"].versions[1]
    assert v1.state == pb.ModelVersionInfo.READY and list(v1.labels) == ["left", "right"]
    assert v1.input.height == 16 and v1.output_kind == "logits" and "onnx" in v1.backends
    assert len(v1.sha256) == 64 and "CPUExecutionProvider" in v1.providers
    bad = models["broken"].versions[0]
    assert bad.state == pb.ModelVersionInfo.FAILED and "broken/1" in bad.error
    one = s.GetModel(pb.GetModelRequest(model="regions", version="1"), timeout=10)
    assert [v.version for v in one.versions] == ["1"]


def test_predict_answers_by_construction(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    img = np.zeros((32, 32, 3), np.uint8)
    img[2:14, 2:14] = 255  # the (scaled) left region lights up
    r = s.Predict(
        pb.PredictRequest(model="regions", version="1", image=pb.Image(encoded=png(img))),
        timeout=10,
    )
    assert r.classes[0].label == "left" and r.classes[0].probability > 0.99
    assert abs(sum(c.probability for c in r.classes) - 1.0) < 1e-5
    newest = s.Predict(
        pb.PredictRequest(model="regions", image=pb.Image(encoded=png(img))), timeout=10
    )
    assert newest.version == "2" and newest.classes[0].label == "left"  # v2 swaps the label order


def test_raw_tensor_images(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    arr = np.zeros((16, 16, 3), np.float32)
    arr[10:15, 9:14] = 255.0
    t = pb.Tensor(dtype="float32", shape=[16, 16, 3], data=arr.astype("<f4").tobytes())
    r = s.Predict(
        pb.PredictRequest(model="regions", version="1", image=pb.Image(tensor=t), top_k=1),
        timeout=10,
    )
    assert len(r.classes) == 1 and r.classes[0].label == "right"


@pytest.mark.parametrize("name", TRAVERSAL)
def test_traversal_names_are_invalid(stub, name: str) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    code, details = code_of(s.Predict, pb.PredictRequest(model=name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
    assert len(details) < 300


def test_odd_valid_names_are_not_found(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    assert code_of(s.Predict, pb.PredictRequest(model="model..1"))[0] == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(s.GetModel, pb.GetModelRequest(model="regions", version="9"))[0]
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(s.GetModel, pb.GetModelRequest(model="regions", version="../1"))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_failed_model_is_unavailable_with_its_reason(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    code, details = code_of(
        s.Predict,
        pb.PredictRequest(model="broken", image=pb.Image(encoded=png(np.zeros((4, 4, 3))))),
    )
    assert code == grpc.StatusCode.UNAVAILABLE and "failed" in details


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.PredictRequest(model="regions"), grpc.StatusCode.INVALID_ARGUMENT, "image is missing"),
        (
            pb.PredictRequest(model="regions", image=pb.Image(encoded=b"GIF89a...")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "could not be decoded",
        ),
        (
            pb.PredictRequest(
                model="regions",
                image=pb.Image(tensor=pb.Tensor(dtype="float32", shape=[2, 2, 3], data=b"\0" * 47)),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 48",
        ),
        (
            pb.PredictRequest(
                model="regions",
                image=pb.Image(
                    tensor=pb.Tensor(
                        dtype="float32", shape=[1, 1, 3], data=np.full(3, np.nan, "<f4").tobytes()
                    )
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            pb.PredictRequest(
                model="regions", image=pb.Image(encoded=png(np.zeros((4, 4, 3)))), top_k=0
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k",
        ),
    ],
)
def test_bad_input_gets_a_clear_status(stub, request_, code, fragment) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    got, details = code_of(s.Predict, request_)
    assert got == code and fragment in details


def test_explain_errors(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    image = pb.Image(encoded=png(np.zeros((16, 16, 3))))
    code, details = code_of(s.Explain, pb.ExplainRequest(model="regions", image=image))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "regional_prediction_difference" in details
    code, details = code_of(
        s.Explain,
        pb.ExplainRequest(
            model="regions",
            image=image,
            target=pb.ClassRef(index=7),
            method=pb.MethodParams(saliency=pb.SaliencyParams()),
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "target.index 7 is out of range" in details
    code, details = code_of(
        s.Explain,
        pb.ExplainRequest(
            model="regions",
            image=image,
            target=pb.ClassRef(label="nope"),
            method=pb.MethodParams(gad=pb.GadParams(support_set="x")),
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'nope' is not a label" in details
    code, details = code_of(
        s.Explain,
        pb.ExplainRequest(
            model="regions",
            image=image,
            method=pb.MethodParams(gad=pb.GadParams(support_set="gad-0-1-1")),
        ),
    )
    assert code == grpc.StatusCode.NOT_FOUND and "gad-0-1-1" in details
    code, details = code_of(s.FitGad, iter([pb.FitGadRequest()]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config" in details


def test_unknown_model_names_never_become_labels(stub) -> None:  # type: ignore[no-untyped-def]
    s, server, _ = stub
    before = generate_latest(server.metrics.registry).decode()
    rng = random.Random(0)
    for _ in range(50):
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(12))
        code_of(s.Predict, pb.PredictRequest(model=name))
    after = generate_latest(server.metrics.registry).decode()
    new = _series(after) - _series(before)
    assert all("model=" not in s_ or "regions" in s_ or "broken" in s_ for s_ in new), new
    assert (
        server.metrics.registry.get_sample_value(
            "xaiserve_requests_total", {"rpc": "Predict", "method": "none", "code": "NOT_FOUND"}
        )
        == 50
    )


def test_metrics_count_forward_passes_and_requests(stub) -> None:  # type: ignore[no-untyped-def]
    s, server, _ = stub
    reg = server.metrics.registry
    image = pb.Image(encoded=png(np.zeros((16, 16, 3))))
    for _ in range(3):
        s.Predict(pb.PredictRequest(model="regions", version="1", image=image), timeout=10)
    assert (
        reg.get_sample_value(
            "xaiserve_requests_total", {"rpc": "Predict", "method": "none", "code": "OK"}
        )
        == 3
    )
    assert (
        reg.get_sample_value(
            "xaiserve_inference_images_total", {"model": "regions", "version": "1"}
        )
        == 3
    )
    assert (
        reg.get_sample_value(
            "xaiserve_forward_pass_seconds_count",
            {"model": "regions", "version": "1", "runtime": "onnxruntime", "batch_size": "1"},
        )
        == 3
    )
    assert reg.get_sample_value("xaiserve_models_ready") == 2
    assert reg.get_sample_value("xaiserve_model_load_failures_total", {"model": "broken"}) == 1
    assert reg.get_sample_value("xaiserve_inflight_requests", {"rpc": "Predict"}) == 0


def test_predict_stream_in_order(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    images = []
    for i in range(6):
        arr = np.zeros((16, 16, 3), np.uint8)
        if i % 2:
            arr[10:15, 9:14] = 255
        else:
            arr[1:7, 1:7] = 255
        images.append(
            pb.PredictRequest(
                model="regions", version="1", image=pb.Image(encoded=png(arr)), request_id=str(i)
            )
        )
    out = list(s.PredictStream(iter(images), timeout=20))
    assert [r.request_id for r in out] == [str(i) for i in range(6)]
    assert [r.classes[0].label for r in out] == ["left", "right"] * 3


def test_health_and_reflection(stub, channel_to) -> None:  # type: ignore[no-untyped-def]
    _, _, port = stub
    health = health_pb2_grpc.HealthStub(channel_to(port))
    for service in ("", "xaiserve.v1.ExplainService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(channel_to(port))
    answer = next(
        iter(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert "xaiserve.v1.ExplainService" in names


def test_reflection_off_in_production(start_server, channel_to, repo: Path) -> None:  # type: ignore[no-untyped-def]
    _, port = start_server(repo, reflection=False)
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(channel_to(port))
    with pytest.raises(grpc.RpcError) as info:
        next(
            iter(
                refl.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            )
        )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_oversized_message_refused_and_server_still_serves(
    start_server, channel_to, repo: Path
) -> None:  # type: ignore[no-untyped-def]
    _, port = start_server(repo, max_message_bytes=64 * 1024)
    s = pb_grpc.ExplainServiceStub(channel_to(port))
    big = pb.Image(
        tensor=pb.Tensor(dtype="uint8", shape=[256, 256, 3], data=b"\0" * (256 * 256 * 3))
    )
    code, _ = code_of(s.Predict, pb.PredictRequest(model="regions", image=big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = s.Predict(
        pb.PredictRequest(model="regions", image=pb.Image(encoded=png(np.zeros((16, 16, 3))))),
        timeout=10,
    )
    assert ok.classes


def test_operations_unknown_ids(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    assert code_of(s.GetOperation, pb.OperationRequest(id="0" * 32))[0] == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(s.CancelOperation, pb.OperationRequest(id="../x"))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list(s.ListOperations(pb.ListOperationsRequest(), timeout=5).operations) == []


def _series(text: str) -> set[str]:
    return {ln.split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}


def test_forward_passes_count_white_box_work(stub) -> None:  # type: ignore[no-untyped-def]
    s, _, _ = stub
    image = pb.Image(encoded=png(np.zeros((16, 16, 3))))
    ig = s.Explain(
        pb.ExplainRequest(
            model="regions",
            version="1",
            image=image,
            target=pb.ClassRef(index=0),
            method=pb.MethodParams(integrated_gradients=pb.IntegratedGradientsParams(steps=16)),
        ),
        timeout=60,
    )
    assert ig.forward_passes >= 16  # 16 interpolation points through the torch module
    sal = s.Explain(
        pb.ExplainRequest(
            model="regions",
            version="1",
            image=image,
            target=pb.ClassRef(index=0),
            method=pb.MethodParams(saliency=pb.SaliencyParams()),
        ),
        timeout=60,
    )
    assert 1 <= sal.forward_passes < ig.forward_passes


def test_refused_operation_is_counted_by_its_reason(  # type: ignore[no-untyped-def]
    start_server, channel_to, repo: Path
) -> None:
    """``Overloaded.reason`` reaches ``xaiserve_rejected_requests_total`` (here: "operations",
    the third operation while two are active with ``max_active_operations=2``)."""
    server, port = start_server(repo, max_active_operations=2)
    s = pb_grpc.ExplainServiceStub(channel_to(port))
    image = pb.Image(encoded=png(np.zeros((16, 16, 3))))

    def stream() -> list[pb.EvaluateDatasetRequest]:
        config = pb.EvaluateDatasetConfig(
            model="regions",
            methods=[pb.MethodParams(saliency=pb.SaliencyParams())],
            morf=pb.MorfParams(steps=50, repeats=10),
        )
        items = [pb.EvaluateDatasetRequest(item=pb.LabelledImage(image=image))] * 400
        return [pb.EvaluateDatasetRequest(config=config), *items]

    def rejected() -> float:
        value = server.metrics.registry.get_sample_value(
            "xaiserve_rejected_requests_total", {"reason": "operations"}
        )
        return value or 0.0

    running = [s.EvaluateDataset(iter(stream()), timeout=30) for _ in range(2)]
    before = rejected()
    try:
        with pytest.raises(grpc.RpcError) as info:
            s.EvaluateDataset(iter(stream()), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "operations are pending or running" in str(info.value.details())
        assert rejected() == before + 1
    finally:
        for op in running:
            s.CancelOperation(pb.OperationRequest(id=op.id), timeout=10)
