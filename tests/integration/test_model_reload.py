"""A model replaced on disk reloads atomically; a broken replacement keeps the last good one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from tests.support import region_logit_model, write_model_folder
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc


def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_broken_replacement_keeps_serving_then_good_one_swaps(
    start_server, channel_to, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    a = np.zeros((8, 8), bool)
    a[:4] = True
    root = tmp_path / "repo"
    folder = write_model_folder(
        region_logit_model(8, 8, [a, ~a], gain=0.05), root, height=8, width=8, name="m"
    )
    server, port = start_server(root, model_poll_seconds=0.1)
    stub = pb_grpc.ExplainServiceStub(channel_to(port))
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4] = 255
    request = pb.PredictRequest(
        model="m",
        image=pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[8, 8, 3], data=image.tobytes())),
    )
    before = stub.Predict(request, timeout=10)
    assert before.classes[0].index == 0

    failures: list[Exception] = []
    stop = threading.Event()

    def load() -> None:  # background traffic during the swaps
        while not stop.is_set():
            try:
                r = stub.Predict(request, timeout=10)
                assert r.classes[0].probability > 0.5
            except Exception as exc:
                failures.append(exc)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    (folder / "model.onnx").write_bytes(b"truncated garbage")
    wait_until(
        lambda: (
            "reload failed"
            in stub.GetModel(pb.GetModelRequest(model="m"), timeout=5).versions[0].error
        )
    )
    info = stub.GetModel(pb.GetModelRequest(model="m"), timeout=5).versions[0]
    assert info.state == pb.ModelVersionInfo.READY
    assert (
        server.metrics.registry.get_sample_value(
            "xaiserve_model_load_failures_total", {"model": "m"}
        )
        == 1
    )
    same = stub.Predict(request, timeout=10)
    assert same.classes[0].probability == before.classes[0].probability

    # a good replacement that swaps the classes' regions takes over
    replacement = region_logit_model(8, 8, [~a, a], gain=0.05)
    tmp = folder / "model.onnx.tmp"
    import onnx

    onnx.save(replacement, str(tmp))
    os.replace(tmp, folder / "model.onnx")
    wait_until(lambda: stub.Predict(request, timeout=10).classes[0].index == 1)
    stop.set()
    for w in workers:
        w.join()
    assert failures == []
    assert stub.GetModel(pb.GetModelRequest(model="m"), timeout=5).versions[0].error == ""
