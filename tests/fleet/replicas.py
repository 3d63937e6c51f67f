"""Real server processes forming a fleet: one PostgreSQL database, one artifact folder.

Each :class:`Replica` is ``xaiserve`` in its own Python process (``serve_and_exit``, the same
entry point as the image), bound to port 0 on loopback; its port is read from the line it
prints. ``kill9()`` is a real SIGKILL; ``terminate()`` a real SIGTERM (drain, release chunks).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import DEMO_MODEL_DIR, REPO_ROOT
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

LAUNCH = (
    "from xaiserve.config import Settings\n"
    "from xaiserve.api.server import serve_and_exit\n"
    "serve_and_exit(Settings.from_env())\n"
)
_LISTENING = re.compile(rb"xaiserve listening on [^:]+:(\d+)")


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._channel: grpc.Channel | None = None

    def spawn(self) -> Replica:
        """Start the process without waiting (start several, then :meth:`start` each)."""
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LAUNCH],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        return self

    def start(self, wait_serving: bool = True, timeout: float = 240.0) -> Replica:
        """Spawn (unless spawned), read the port it bound, optionally wait for SERVING."""
        if self.process is None or self.process.poll() is not None or self._channel is not None:
            self.spawn()
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            m = _LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                break
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
        else:
            raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-3000:]}")
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        if wait_serving:
            self.wait_health("SERVING", deadline - time.monotonic())
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stub(self) -> pb_grpc.ExplainServiceStub:
        assert self._channel is not None
        return pb_grpc.ExplainServiceStub(self._channel)

    def health(self) -> str:
        assert self._channel is not None
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            status = stub.Check(
                health_pb2.HealthCheckRequest(service="xaiserve.v1.ExplainService"), timeout=2
            ).status
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def wait_health(self, want: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() == want:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not {want}: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._close()

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._close()
        return code

    def send_terminate(self) -> None:
        """SIGTERM without waiting (stop several at once, then :meth:`reap`)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def reap(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(Exception):
                self.terminate(30)
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self._close()


def replica_env(
    state_url: str, artifacts: Path, data_dir: Path, datasets_dir: Path | None = None, **extra: str
) -> dict[str, str]:
    env = {
        "XAISERVE_HOST": "127.0.0.1",
        "XAISERVE_PORT": "0",
        "XAISERVE_METRICS_PORT": "0",
        "XAISERVE_MODELS_DIR": str(DEMO_MODEL_DIR),
        "XAISERVE_STATE_URL": state_url,
        "XAISERVE_ARTIFACTS": str(artifacts),
        "XAISERVE_DATA_DIR": str(data_dir),
        "XAISERVE_LEASE_SECONDS": "2",
        "XAISERVE_CHUNK_ITEMS": "2",
        "XAISERVE_OPERATION_WORKERS": "1",
        "XAISERVE_DRAIN_SECONDS": "2",
        "XAISERVE_INTRA_OP_THREADS": "1",
        "XAISERVE_TORCH_COPIES": "1",
        "XAISERVE_LOG_FORMAT": "text",
        "XAISERVE_REFLECTION": "false",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    if datasets_dir is not None:
        env["XAISERVE_DATASETS_DIR"] = str(datasets_dir)
    env.update(extra)
    return env
