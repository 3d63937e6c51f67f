"""Shared fixtures: a real server on a loopback port over a repository built in the test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Servers built from default Settings keep their state store and artifacts under the default
# data directory ($XDG_DATA_HOME/xaiserve): a throw-away folder for this test run.
_DATA_HOME = tempfile.mkdtemp(prefix="xaiserve-tests-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME
atexit.register(shutil.rmtree, _DATA_HOME, True)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL_DIR = REPO_ROOT / "models"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow end-to-end checks (marked ``slow``) after everything else."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.fixture(autouse=True)
def _private_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each test's servers get their own default data directory (state store + artifacts):
    two servers sharing one would form a fleet and run each other's operations."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture
def region_masks() -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint regions of a 16×16 grid: top-left 6×6 (class 0) and bottom-right 5×5."""
    a = np.zeros((16, 16), bool)
    a[1:7, 1:7] = True
    b = np.zeros((16, 16), bool)
    b[10:15, 9:14] = True
    return a, b


ServerFactory = Callable[..., tuple[object, int]]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real servers (``create_server``) and stop them after the test."""
    from xaiserve.api.server import create_server
    from xaiserve.config import Settings

    started: list[object] = []

    def start(models_dir: Path | str | None = None, **overrides: object) -> tuple[object, int]:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            models_dir=str(models_dir if models_dir is not None else tmp_path / "repo"),
            data_dir=str(tmp_path / f"data-{len(started)}"),
            log_format="text",
            warmup=False,  # the suite starts many servers; tests/unit/test_gpu_path.py covers it
        ).replace(**overrides)
        server, port = create_server(settings)
        started.append(server)
        return server, port

    yield start
    for server in started:
        server.stop(grace=1.0)  # type: ignore[attr-defined]


@pytest.fixture
def channel_to() -> Iterator[Callable[[int], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def make(port: int) -> grpc.Channel:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(ch)
        return ch

    yield make
    for ch in channels:
        ch.close()


@pytest.fixture(scope="session")
def demo_server() -> Iterator[tuple[object, int]]:
    """One real server on the bundled demo model for the whole session (read-only use)."""
    from xaiserve.api.server import create_server
    from xaiserve.config import Settings

    server, port = create_server(
        Settings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            models_dir=str(DEMO_MODEL_DIR),
            log_format="text",
            log_level="WARNING",
        )
    )
    yield server, port
    server.stop(grace=1.0)  # type: ignore[attr-defined]
