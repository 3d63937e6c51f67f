"""The model repository refuses what could leave its folder or was tampered with (check M2, M4)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from tests.support import region_logit_model, write_model_folder
from xaiserve.config import Settings
from xaiserve.models.repository import ModelRepository, file_sha256
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc


def repository(root: Path) -> ModelRepository:
    return ModelRepository(root, Settings(models_dir=str(root)), Metrics(), ImageBudget(1000))


def good_model() -> onnx.ModelProto:
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    return region_logit_model(8, 8, [mask, ~mask])


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    folder = write_model_folder(good_model(), root, height=8, width=8, name="ext")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(3 * 64 * 2, np.float32).tobytes())
    model = onnx.load(str(folder / "model.onnx"))
    weight = next(t for t in model.graph.initializer if t.name == "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../secret.bin")
    onnx.save(model, str(folder / "model.onnx"))
    repo = repository(root)
    entry = repo.load_version("ext", "1")
    assert entry.model is None and "outside the model folder" in entry.error
    repo.close()


def test_symlinked_model_escaping_the_root_is_refused(tmp_path: Path) -> None:
    outside = write_model_folder(good_model(), tmp_path / "elsewhere", height=8, width=8, name="x")
    root = tmp_path / "repo"
    (root / "link").mkdir(parents=True)
    os.symlink(outside, root / "link" / "1")
    repo = repository(root)
    entry = repo.load_version("link", "1")
    assert entry.model is None and "outside the repository" in entry.error
    repo.close()


def test_sha256_pin(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    folder = write_model_folder(good_model(), root, height=8, width=8, name="pinned")
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(f'sha256 = "{"0" * 64}"\n' + config)
    repo = repository(root)
    entry = repo.load_version("pinned", "1")
    assert entry.model is None and "does not match the pin" in entry.error
    (folder / "config.toml").write_text(
        f'sha256 = "{file_sha256(folder / "model.onnx")}"\n' + config
    )
    assert repo.load_version("pinned", "1").model is not None
    repo.close()


def test_bad_names_never_touch_the_file_system(start_server, channel_to, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    write_model_folder(good_model(), root, height=8, width=8, name="m")
    _, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    events: list[tuple[str, str]] = []
    recording = threading.Event()

    def audit(event: str, args: tuple[object, ...]) -> None:
        if recording.is_set() and event in ("open", "os.listdir", "os.scandir", "os.stat") and args:
            path = str(args[0])
            if str(tmp_path) in path or "etc" in path or ".." in path:
                events.append((event, path))

    sys.addaudithook(audit)
    recording.set()
    try:
        for name in ["../etc", "a/../b", "../../etc/passwd", "/etc/passwd", "model..1", "m/../m"]:
            with pytest.raises(grpc.RpcError):
                stub.Predict(pb.PredictRequest(model=name), timeout=5)
    finally:
        recording.clear()
    assert events == []


def test_cancelled_clients_leave_nothing_behind(start_server, channel_to, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Clients that give up mid-request (check S2): in-flight back to 0, queued work dropped."""
    a = np.zeros((32, 32), bool)
    a[:10, :10] = True
    root = tmp_path / "repo"
    write_model_folder(region_logit_model(32, 32, [a, ~a]), root, height=32, width=32, name="m")
    server, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    image = pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[32, 32, 3], data=bytes(32 * 32 * 3)))
    request = pb.ExplainRequest(
        model="m",
        image=image,
        target=pb.ClassRef(index=0),
        method=pb.MethodParams(
            pixelwise_prediction_difference=pb.PixelwisePredictionDifferenceParams(
                stride=1, samples=40
            )
        ),
    )
    futures = [stub.Explain.future(request, timeout=120) for _ in range(10)]
    reg = server.metrics.registry
    deadline = time.monotonic() + 30
    while (reg.get_sample_value("xaiserve_inflight_requests", {"rpc": "Explain"}) or 0) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for f in futures:
        f.cancel()
    deadline = time.monotonic() + 10
    while (reg.get_sample_value("xaiserve_inflight_requests", {"rpc": "Explain"}) or 0) > 0:
        assert time.monotonic() < deadline, "in-flight requests did not end"
        time.sleep(0.02)
    assert server.admission.active == 0
    assert server.repository.budget.used == 0
    assert stub.Predict(pb.PredictRequest(model="m", image=image), timeout=10).classes


class _Payload:
    """Unpickling this would create the sentinel file (what a malicious checkpoint does)."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.sentinel, "w"))


def test_weights_with_a_pickle_payload_are_refused(start_server, channel_to, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An operator-registered module loads its weights with ``weights_only=True`` (check M4)."""
    import torch

    root = tmp_path / "repo"
    folder = write_model_folder(good_model(), root, height=8, width=8, name="m")
    sentinel = tmp_path / "pwned"
    torch.save({"weight": _Payload(str(sentinel))}, folder / "weights.pt")
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(
        config + '[torch]\nentry_point = "torch.nn:Identity"\nweights = "weights.pt"\n'
    )
    _, port = start_server(root)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    image = pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[8, 8, 3], data=bytes(8 * 8 * 3)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(pb.ExplainRequest(model="m", image=image, method=pb.MethodParams(
            saliency=pb.SaliencyParams())), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "could not be built" in info.value.details()
    assert not sentinel.exists()
    # the black-box path of the same model is unaffected
    assert stub.Predict(pb.PredictRequest(model="m", image=image), timeout=10).classes
