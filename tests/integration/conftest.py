"""Fixtures shared by the integration tests that need a real OIP server (``oip`` tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oip_support import DEMO_VERSION, OipServer


@pytest.fixture(scope="session")
def oip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    """KServe's OIP server with TLS and a bearer token, hosting the demo model twice: "shapes"
    (always answers normally) and "shapes-faulty" (tests switch its mode)."""
    demo = DEMO_VERSION / "model.onnx"
    server = OipServer(tmp_path_factory.mktemp("oip"), {"shapes": demo, "shapes-faulty": demo})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _restartable_oip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    server = OipServer(
        tmp_path_factory.mktemp("oip-own"), {"shapes": DEMO_VERSION / "model.onnx"}, tls=False
    )
    yield server
    server.stop()


@pytest.fixture
def own_remote(_restartable_oip: OipServer) -> OipServer:
    """A plain-gRPC OIP server that a test may stop and restart (restarted for the next one)."""
    server = _restartable_oip
    server.set_mode("shapes", "normal")
    if server.process is None or server.process.poll() is not None:
        server.process = None
        server.start()
    return server
