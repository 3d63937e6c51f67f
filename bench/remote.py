"""Forward passes through a remote OIP server ÷ local onnxruntime, over loopback.

For the demo model and a ResNet-18 (random weights, 224²): the time per image of one
``ModelInfer`` through xaiserve's OIP backend (KServe's server hosting the same ONNX file with
onnxruntime, plain gRPC on 127.0.0.1) divided by one local ``session.run`` of the same batch,
at batch 1 and at each side's best batch. Both sides run with the same onnxruntime thread
count, one after the other, in the same run. Goal: ≤ 1.2 at the best batch for ResNet-18.
``--quick`` uses fewer repeats and batch sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, median_time, ort_session, print_table, torchvision_onnx
from tests.oip_support import OipServer


def measure(
    name: str, onnx_path: Path, size: int, sizes: tuple[int, ...], repeats: int, workdir: Path
) -> list[object]:
    from xaiserve.observability import Metrics
    from xaiserve.runtime.oip_backend import OipBackend
    from xaiserve.runtime.oip_config import OipConfig

    session = ort_session(onnx_path)
    inp = session.get_inputs()[0].name
    num_classes = int(session.get_outputs()[0].shape[1])
    server = OipServer(workdir / name, {name: onnx_path}, tls=False, threads=0).start()
    try:
        cfg = OipConfig(url=server.url, model_name=name, token_file=str(server.token_file))
        backend = OipBackend(
            cfg, folder=workdir, model=name, version="1", num_classes=num_classes, metrics=Metrics()
        )
        backend.connect((3, size, size))
        x1 = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        local: dict[int, float] = {}
        remote: dict[int, float] = {}
        for n in sizes:
            x = np.repeat(x1, n, axis=0)
            np.testing.assert_allclose(backend.run(x), session.run(None, {inp: x})[0], atol=1e-4)
            local[n] = median_time(lambda x=x: session.run(None, {inp: x}), repeats, 1) / n
            remote[n] = median_time(lambda x=x: backend.run(x), repeats, 1) / n
        backend.close()
    finally:
        server.stop()
    best_local = min(local, key=lambda k: local[k])
    best_remote = min(remote, key=lambda k: remote[k])
    return [
        name,
        local[1] * 1e3,
        remote[1] * 1e3,
        remote[1] / local[1],
        f"{local[best_local] * 1e3:.4g} (b={best_local})",
        f"{remote[best_remote] * 1e3:.4g} (b={best_remote})",
        remote[best_remote] / local[best_local],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (1, 8, 32) if args.quick else (1, 2, 4, 8, 16, 32)
    repeats = 3 if args.quick else 7
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append(
            measure("shapes", REPO / "models/shapes/1/model.onnx", 64, sizes, repeats, work)
        )
        rows.append(measure("resnet18", torchvision_onnx("resnet18"), 224, sizes, repeats, work))
    print_table(
        "Per image through the OIP backend (KServe on loopback) vs local onnxruntime",
        [
            "model",
            "local b=1 ms",
            "remote b=1 ms",
            "ratio b=1",
            "local best ms",
            "remote best ms",
            "ratio best",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
