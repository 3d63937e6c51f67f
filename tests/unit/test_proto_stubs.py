"""The committed gRPC stubs and shipped protos are exactly what ``make proto`` generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "clients" / "python" / "xaiserve_client"


def _client_files(root: Path) -> dict[str, bytes]:
    found = [p for p in (root / "v1").glob("*") if p.suffix in (".py", ".pyi")]
    found += list((root / "protos").rglob("*.proto"))
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in found
        if p.name != "__init__.py" and p.is_file()
    }


def _service_stubs(root: Path) -> dict[str, bytes]:
    """Generated modules under a service tree (protoc names them *_pb2*.py / .pyi)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*_pb2*.py*")
        if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }


def test_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_proto.py"), "--out", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    for fresh, committed in (
        (_client_files(tmp_path / "client"), _client_files(PACKAGE)),
        (_service_stubs(tmp_path / "service"), _service_stubs(REPO / "service")),
    ):
        assert sorted(fresh) == sorted(committed), "run `make proto`: generated files differ"
        for name, content in fresh.items():
            assert committed[name] == content, f"{name} is stale: run `make proto`"
    # the API's stubs import each other from their own package, never the proto's package path
    grpc_stub = (PACKAGE / "v1" / "explain_pb2_grpc.py").read_text()
    assert "from xaiserve_client.v1 import explain_pb2" in grpc_stub
    assert "from xaiserve.v1 import" not in grpc_stub


def test_protos_ship_with_the_client() -> None:
    import xaiserve_client
    from xaiserve_client.v1 import explain_pb2

    shipped = xaiserve_client.protos_dir() / "xaiserve" / "v1" / "explain.proto"
    assert shipped.read_bytes() == (REPO / "protos" / "xaiserve" / "v1" / "explain.proto").read_bytes()
    # the descriptor keeps the proto's own path, so reflection and other languages agree
    assert explain_pb2.DESCRIPTOR.name == "xaiserve/v1/explain.proto"
    assert explain_pb2.DESCRIPTOR.package == "xaiserve.v1"
