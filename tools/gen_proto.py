#!/usr/bin/env python3
"""Generate the gRPC stubs and the shipped copy of the protos: what ``make proto`` runs.

    python tools/gen_proto.py            # writes into clients/python/xaiserve_client/
    python tools/gen_proto.py --out DIR  # writes the same tree under DIR (the freshness test)

``protos/`` is the only source of the API. From it this writes, inside the client package:

- ``v1/explain_pb2.py``, ``v1/explain_pb2.pyi``, ``v1/explain_pb2_grpc.py``: protoc's output
  for ``xaiserve/v1/*.proto``, with the one absolute import protoc writes
  (``from xaiserve.v1 import ...``) pointed at ``xaiserve_client.v1``. The descriptors keep their
  file names (``xaiserve/v1/explain.proto``), so reflection shows the same paths as ``protos/``.
- ``protos/xaiserve/v1/*.proto``: verbatim copies, shipped in the wheel for other languages
  (``xaiserve_client.protos_dir()``).

Generated files are committed; ``tests/unit/test_proto_stubs.py`` fails when they are stale.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
PACKAGE = REPO / "clients" / "python" / "xaiserve_client"
PROTO_PACKAGE = "xaiserve.v1"  # the proto package, and protoc's Python module path
STUB_PACKAGE = "xaiserve_client.v1"  # where the stubs live


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write ``v1/`` stubs and ``protos/`` copies under ``out``; return the files written."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    sources = [str(p.relative_to(PROTOS)) for p in proto_files()]
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp, *PROTO_PACKAGE.split("."))
        stubs = out / "v1"
        stubs.mkdir(parents=True, exist_ok=True)
        for src in sorted(generated.iterdir()):
            if src.suffix not in (".py", ".pyi"):
                continue
            text = src.read_text()
            text = text.replace(f"from {PROTO_PACKAGE} import ", f"from {STUB_PACKAGE} import ")
            dest = stubs / src.name
            dest.write_text(text)
            written.append(dest)
    init = out / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC stubs for xaiserve.v1 (``make proto``; do not edit)."""\n')
    for rel in sources:
        dest = out / "protos" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROTOS / rel, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE, help="default: %(default)s")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out) if path.is_relative_to(args.out) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
