"""Predict through gRPC vs the onnxruntime session in-process.

1. Per-image latency of one ``Predict`` RPC ÷ one in-process ``session.run`` at batch 1.
2. Throughput of 16 concurrent clients through the server (dynamic batching) ÷ the session's
   throughput at its best batch size (the physical floor: forward passes × best per-image time).
Both ratios come from the same run. ``--quick`` uses the demo model only.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from _common import (
    DEMO,
    MODELS,
    ServerProcess,
    best_batch_time,
    median_time,
    model_repo,
    ort_session,
    print_table,
    torchvision_onnx,
)


def measure(
    name: str, models_dir: Path, model: str, onnx_path: Path, size: int, seconds: float
) -> list[object]:
    import grpc

    from xaiserve_client.v1 import explain_pb2 as pb
    from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    x1 = (
        ((image.astype(np.float32) / 255.0 - 0.5) / 0.25)
        .transpose(2, 0, 1)[None]
        .astype(np.float32)
    )
    session = ort_session(onnx_path)
    inp = session.get_inputs()[0].name
    run = lambda x: session.run(None, {inp: x})  # noqa: E731
    t_session_1 = median_time(lambda: run(x1), 20)
    t_best, n_best = best_batch_time(run, x1)

    server = ServerProcess(models_dir)
    try:
        request = pb.PredictRequest(
            model=model,
            image=pb.Image(
                tensor=pb.Tensor(dtype="uint8", shape=[size, size, 3], data=image.tobytes())
            ),
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.ExplainServiceStub(channel)
        t_rpc = median_time(lambda: stub.Predict(request, timeout=60), 20, warmup=3)
        done = [0] * 16
        stop = time.perf_counter() + seconds

        def client(i: int) -> None:
            ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
            s = pb_grpc.ExplainServiceStub(ch)
            while time.perf_counter() < stop:
                s.Predict(request, timeout=60)
                done[i] += 1
            ch.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        throughput = sum(done) / (time.perf_counter() - t0)
        channel.close()
    finally:
        server.close()
    floor_throughput = 1.0 / t_best
    return [
        name,
        t_session_1 * 1e3,
        t_rpc * 1e3,
        t_rpc / t_session_1,
        n_best,
        floor_throughput,
        throughput,
        throughput / floor_throughput,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="demo model only, short windows")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 15.0
    rows = [
        measure(
            "demo shapes 64×64",
            MODELS,
            "shapes",
            DEMO / "model.onnx",
            64,
            seconds,
        )
    ]
    if not args.quick:
        onnx_path = torchvision_onnx("resnet18")
        rows.append(
            measure(
                "resnet18 224×224",
                model_repo("resnet18", onnx_path, 224, 1000),
                "resnet18",
                onnx_path,
                224,
                seconds,
            )
        )
    print_table(
        "Predict overhead (gRPC vs in-process onnxruntime; same run)",
        [
            "model",
            "session b=1 ms",
            "Predict RPC ms",
            "RPC ÷ session",
            "best batch",
            "floor img/s",
            "16 clients img/s",
            "16 clients ÷ floor",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
