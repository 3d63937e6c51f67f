"""Shared benchmark helpers: constants, cached ONNX exports, models behind the service facade,
onnxruntime sessions for the physical floor, a server subprocess, timing and tables.

Run a benchmark as a script (``.venv/bin/python bench/NAME.py --quick``): its folder is then on
``sys.path`` and ``from _common import ...`` finds this module.

- Models: :func:`model_repo` writes a one-model repository (``model.onnx`` hard-linked, a
  ``config.toml``); :func:`load_model` loads a version through the service's
  ``ModelRepository`` (onnxruntime session, dynamic batcher, ``Model`` facade) — what the server
  serves; :func:`load_onnx` does both for an ONNX file.
- Exports: :func:`torchvision_module` (``weights=None`` after ``torch.manual_seed(0)``),
  :func:`export_onnx` (in memory) and :func:`torchvision_onnx` (cached on disk under
  ``$XAISERVE_BENCH_CACHE``, default ``~/.cache/xaiserve/bench``, shared by worktrees).
- Floors: :func:`ort_session` (onnxruntime, spinning off) and :func:`best_batch_time`.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xaiserve.models.model import Model

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DEMO = MODELS / "shapes" / "1"  # the bundled demo model (64×64 shapes)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SERVE = (
    "from xaiserve.config import Settings; from xaiserve.api.server import serve_and_exit; "
    "serve_and_exit(Settings.from_env())"
)


# ---------------------------------------------------------------------------------------------
# exports


def cache_dir() -> Path:
    """Where ONNX exports are cached: ``$XAISERVE_BENCH_CACHE`` or ``~/.cache/xaiserve/bench``."""
    return Path(os.environ.get("XAISERVE_BENCH_CACHE", Path.home() / ".cache/xaiserve/bench"))


def torchvision_module(arch: str) -> Any:
    """torchvision ``arch`` with ``weights=None`` after ``torch.manual_seed(0)``, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).eval()


def export_onnx(module: Any, size: int = 224) -> bytes:
    """ONNX (opset 17, dynamic batch, input ``input``, output ``logits``) of an image module."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, size, size),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def torchvision_onnx(arch: str, size: int = 224) -> Path:
    """The cached ONNX export of :func:`torchvision_module` ``(arch)`` at ``size``×``size``."""
    path = cache_dir() / f"{arch}-seed0-{size}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs: last rename wins
        tmp.write_bytes(export_onnx(torchvision_module(arch), size))
        tmp.rename(path)
    return path


def natural_images(n: int, size: int) -> np.ndarray:
    """scikit-image's bundled photographs, resized to ``size``×``size`` (float32, 0..255)."""
    from skimage import data
    from skimage.transform import resize

    names = ("astronaut", "coffee", "chelsea", "rocket")
    if n > len(names):
        raise SystemExit(f"at most {len(names)} natural images")
    return np.stack(
        [255.0 * resize(getattr(data, nm)(), (size, size), anti_aliasing=True) for nm in names[:n]]
    ).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# models behind the service facade


def model_repo(
    name: str,
    onnx_path: Path,
    size: int,
    labels: int = 1000,
    max_batch: int = 32,
    *,
    root: Path | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    value_range: Sequence[float] = (0.0, 1.0),
    delay_ms: float = 2.0,
    execution: tuple[int, int] | None = None,
) -> Path:
    """A one-model repository ``root/name/1`` (``model.onnx`` + ``config.toml``); returns ``root``.

    ``root`` defaults to ``cache_dir()/repos/name``. The config is ImageNet-style unless told.
    ``execution`` = (``intra_op_threads``, ``workers``) writes the model's ``[execution]``.
    """
    root = root if root is not None else cache_dir() / "repos" / name
    folder = root / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    if target.exists() and not os.path.samefile(target, onnx_path):
        # another network under the same repository name (the concurrency tables serve every
        # light model as "light"): serve the one asked for, not the first one linked here
        target.unlink()
    if not target.exists():
        try:  # a hard link, not a symlink: the repository confines model files to its root
            os.link(onnx_path, target)
        except OSError:
            shutil.copyfile(onnx_path, target)
    label_list = ", ".join(f'"c{i}"' for i in range(labels))
    (folder / "config.toml").write_text(
        f'[input]\nheight = {size}\nwidth = {size}\nlayout = "NCHW"\n'
        f"value_range = {list(value_range)}\nmean = {list(mean)}\nstd = {list(std)}\n"
        f'[output]\nkind = "logits"\nlabels = [{label_list}]\n'
        f"[batching]\nmax_batch_size = {max_batch}\nmax_queue_delay_ms = {delay_ms}\n"
        + (
            f"[execution]\nintra_op_threads = {execution[0]}\nworkers = {execution[1]}\n"
            if execution
            else ""
        ),
        encoding="utf-8",
    )
    return root


def load_model(root: Path, name: str, version: str = "1") -> Model:
    """``root/name/version`` through the service's repository; the caller ``close()``s it."""
    from xaiserve.config import Settings
    from xaiserve.models.repository import ModelRepository
    from xaiserve.observability import Metrics
    from xaiserve.runtime.batcher import ImageBudget

    repo = ModelRepository(root, Settings(models_dir=str(root)), Metrics(), ImageBudget(100_000))
    entry = repo.load_version(name, version)
    if entry.model is None:
        raise RuntimeError(f"{name} failed to load: {entry.error}")
    return entry.model


def load_onnx(workdir: Path, name: str, onnx_path: Path, size: int, **config: Any) -> Model:
    """An ONNX file through the facade (:func:`model_repo` in ``workdir``, then load)."""
    return load_model(model_repo(name, onnx_path, size, root=workdir, **config), name)


# ---------------------------------------------------------------------------------------------
# the physical floor: onnxruntime in-process


def ort_session(path: Path, threads: int = 0):  # type: ignore[no-untyped-def]
    """A CPU onnxruntime session with spinning off (the service's setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# timing and tables


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Smallest wall seconds of ``fn`` over ``repeats`` calls (the least disturbed run)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def best_batch_time(
    run: Callable[[np.ndarray], object],
    x1: np.ndarray,
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    repeats: int = 3,
    timer: Callable[..., float] = median_time,
) -> tuple[float, int]:
    """Best per-image time of ``run`` over batch sizes (the physical floor) and its batch size.

    ``x1`` is one input with a leading batch dim of 1 (a session's NCHW tensor or a model's
    NHWC image); ``timer`` is :func:`median_time` or :func:`best_time`.
    """
    best, best_n = float("inf"), 1
    for n in sizes:
        x = np.repeat(x1, n, axis=0)
        per_image = timer(lambda x=x: run(x), repeats, warmup=1) / n
        if per_image < best:
            best, best_n = per_image, n
    return best, best_n


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    """A markdown table under a ``###`` title; floats with 4 significant digits."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")


# ---------------------------------------------------------------------------------------------
# a server in its own process


def free_port() -> int:
    """An ephemeral loopback port (for a subprocess that needs its port up front)."""
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

    def _wait_ready(self, timeout: float = 600) -> None:
        """Until grpc.health.v1 says SERVING (imports alone take minutes on a loaded machine)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        # retry the connection every second, not with gRPC's backoff of up to two minutes
        options = [
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=options)
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
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
