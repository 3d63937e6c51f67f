"""Hostile requests against a real server in a child process with a memory limit (#18).

Run by ``test_hardening.py`` as ``python memory_child.py <models_dir> <allowance_bytes>``. The
child starts the server in-process, then caps its own data segment (``RLIMIT_DATA``: every
heap and anonymous private mapping) at what it already uses plus ``allowance_bytes``. A
regression that lets a request allocate beyond that fails the allocation inside the server
(MemoryError / bad_alloc → INTERNAL, or a crash) instead of taking the machine down, and the
parent test fails on the status or the exit code. Prints one JSON object: scenario → outcome.
"""

from __future__ import annotations

import io
import json
import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from PIL import Image


def vm_data() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def main() -> None:
    models_dir, allowance = sys.argv[1], int(sys.argv[2])
    import torch  # noqa: F401 - imported before the cap, like the server's own start-up

    from xaiserve.api.server import create_server
    from xaiserve.config import Settings
    from xaiserve_client.v1 import explain_pb2 as pb
    from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

    settings = Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        models_dir=models_dir,
        log_format="text",
        log_level="ERROR",
        max_image_pixels=4096 * 4096,
        torch_copies=1,
    )
    server, port = create_server(settings)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    stub = pb_grpc.ExplainServiceStub(channel)
    size = 64
    tensor = pb.Image(
        tensor=pb.Tensor(dtype="uint8", shape=[size, size, 3], data=bytes(size * size * 3))
    )
    # Warm up (torch module built, converter imported) before the cap is measured.
    stub.Explain(
        pb.ExplainRequest(
            model="shapes", image=tensor, method=pb.MethodParams(saliency=pb.SaliencyParams())
        ),
        timeout=120,
    )
    limit = vm_data() + allowance
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    def outcome(call: Callable[[], Any]) -> str:
        try:
            call()
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"

    heatmap = pb.Tensor(dtype="float32", shape=[size, size], data=bytes(4 * size * size))

    def score(repeats: int) -> Any:
        return stub.Score(
            pb.ScoreRequest(
                model="shapes",
                image=tensor,
                heatmap=heatmap,
                morf=pb.MorfParams(repeats=repeats),
            ),
            timeout=60,
        )

    def explain(params: pb.MethodParams, timeout: float = 120) -> Any:
        return stub.Explain(
            pb.ExplainRequest(model="shapes", image=tensor, method=params), timeout=timeout
        )

    big = io.BytesIO()
    Image.new("RGB", (4096, 4096), (120, 30, 200)).save(big, "PNG")
    big_png = pb.Image(encoded=big.getvalue())
    big_results: list[str] = []

    def big_predict() -> None:
        big_results.append(
            outcome(
                lambda: stub.Predict(pb.PredictRequest(model="shapes", image=big_png), timeout=120)
            )
        )

    def twelve_big_predicts() -> str:
        threads = [threading.Thread(target=big_predict) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return ",".join(sorted(set(big_results)))

    def forty_big_items() -> str:
        config = pb.EvaluateDatasetConfig(
            model="shapes",
            methods=[pb.MethodParams(saliency=pb.SaliencyParams())],
            morf=pb.MorfParams(steps=2, repeats=1),
        )
        items = (
            pb.EvaluateDatasetRequest(item=pb.LabelledImage(image=big_png, name=f"big{i}"))
            for i in range(40)
        )
        op = stub.EvaluateDataset(
            iter([pb.EvaluateDatasetRequest(config=config), *items]), timeout=300
        )
        stub.CancelOperation(pb.OperationRequest(id=op.id), timeout=30)
        return "OK"

    results = {
        "morf_repeats_max": outcome(lambda: score(2**32 - 1)),
        "morf_repeats_1e7": outcome(lambda: score(10**7)),
        "smoothgrad_16000": outcome(
            lambda: explain(pb.MethodParams(smoothgrad=pb.SmoothGradParams(samples=16000)))
        ),
        "smoothgrad_400": outcome(
            lambda: explain(pb.MethodParams(smoothgrad=pb.SmoothGradParams(samples=400, seed=1)))
        ),
        "ig_gl_99999": outcome(
            lambda: explain(
                pb.MethodParams(integrated_gradients=pb.IntegratedGradientsParams(steps=99_999))
            )
        ),
        "ig_batch_1000": outcome(
            lambda: explain(
                pb.MethodParams(
                    integrated_gradients=pb.IntegratedGradientsParams(
                        steps=1000, internal_batch_size=1000, integration="riemann_trapezoid"
                    )
                )
            )
        ),
        "big_png_x12": twelve_big_predicts(),
        "dataset_40_big_pngs": outcome(forty_big_items),
        "huge_config": next(
            (v.error for e in server.repository.entries() for v in e.versions.values() if v.error),
            "",
        ),
        "alive": outcome(lambda: stub.Predict(pb.PredictRequest(model="shapes", image=tensor))),
    }
    print(json.dumps(results), flush=True)
    channel.close()
    server.stop(grace=0.5)


if __name__ == "__main__":
    main()
