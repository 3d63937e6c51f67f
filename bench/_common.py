"""Shared benchmark helpers: cached ONNX exports, a server subprocess, timing utilities."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / ".cache"
SERVE = (
    "from xaiserve.config import Settings; from xaiserve.api.server import serve_and_exit; "
    "serve_and_exit(Settings.from_env())"
)


def torchvision_onnx(arch: str, size: int = 224) -> Path:
    """Export a torchvision architecture (random weights, seed 0) once and cache it."""
    path = CACHE / f"{arch}_{size}.onnx"
    if path.exists():
        return path
    import torch
    import torchvision

    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(
        model,
        x,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def model_repo(name: str, onnx_path: Path, size: int, labels: int, max_batch: int = 32) -> Path:
    """A one-model repository under the cache (config for ImageNet-style normalisation)."""
    folder = CACHE / "repos" / name / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    if not target.exists():
        target.symlink_to(onnx_path.resolve())
    label_list = ", ".join(f'"c{i}"' for i in range(labels))
    (folder / "config.toml").write_text(
        f"[input]\nheight = {size}\nwidth = {size}\nmean = [0.485, 0.456, 0.406]\n"
        f"std = [0.229, 0.224, 0.225]\n[output]\nlabels = [{label_list}]\n"
        f"[batching]\nmax_batch_size = {max_batch}\nmax_queue_delay_ms = 2.0\n"
    )
    return folder.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``xaiserve`` in its own process (so client threads do not share its GIL)."""

    def __init__(self, models_dir: Path, **env: str) -> None:
        self.port = free_port()
        environ = {
            **os.environ,
            "XAISERVE_MODELS_DIR": str(models_dir),
            "XAISERVE_PORT": str(self.port),
            "XAISERVE_HOST": "127.0.0.1",
            "XAISERVE_METRICS_PORT": "0",
            "XAISERVE_LOG_LEVEL": "WARNING",
            "OMP_WAIT_POLICY": "PASSIVE",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    channel.close()
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def best_batch_time(
    session_run: Callable[[np.ndarray], object],
    x1: np.ndarray,
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    repeats: int = 3,
) -> tuple[float, int]:
    """Best per-image forward time over batch sizes (the physical floor) and its batch size."""
    best, best_n = float("inf"), 1
    for n in sizes:
        x = np.repeat(x1, n, axis=0)
        per_image = median_time(lambda x=x: session_run(x), repeats, warmup=1) / n
        if per_image < best:
            best, best_n = per_image, n
    return best, best_n


def ort_session(path: Path, threads: int = 0):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
