"""The committed gRPC stubs are exactly what ``make proto`` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "service" / "xaiserve" / "v1"


def test_stubs_are_fresh(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=REPO,
        check=True,
    )
    fresh = sorted(
        p.name for p in (tmp_path / "xaiserve" / "v1").iterdir() if p.suffix in (".py", ".pyi")
    )
    committed = sorted(
        p.name
        for p in GENERATED.iterdir()
        if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    )
    assert fresh == committed, "run `make proto`: generated files differ"
    for name in fresh:
        new = (tmp_path / "xaiserve" / "v1" / name).read_bytes()
        assert new == (GENERATED / name).read_bytes(), f"{name} is stale: run `make proto`"
