#!/usr/bin/env python3
"""Generate the gRPC stubs (and the shipped copy of the API's protos): what ``make proto`` runs.

    python tools/gen_proto.py                 # writes into the source tree
    python tools/gen_proto.py --out DIR       # the same files under DIR/client and DIR/service

``protos/`` is the only source. protoc runs once over every ``.proto`` in it; then:

- The service's API, ``xaiserve/v1/*.proto``, belongs to the client distribution: its stubs go
  to ``clients/python/xaiserve_client/v1/`` with the one absolute import protoc writes
  (``from xaiserve.v1 import ...``) pointed at ``xaiserve_client.v1``, and the ``.proto`` files
  are copied verbatim to ``xaiserve_client/protos/`` (shipped in the wheel for other languages,
  ``xaiserve_client.protos_dir()``). Descriptors keep their file names
  (``xaiserve/v1/explain.proto``), so reflection shows the same paths as ``protos/``.
- Every other proto (ones the server itself consumes) is generated under ``service/`` where
  protoc's module paths put it (``xaiserve/<sub>/...`` → ``xaiserve.<sub>``), unchanged, with
  an empty ``__init__.py`` added to folders that lack one.

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
CLIENT_PACKAGE = REPO / "clients" / "python" / "xaiserve_client"
SERVICE = REPO / "service"
API = "xaiserve/v1"  # the service's API: proto folder, and protoc's Python module path
API_MODULE = "xaiserve.v1"
CLIENT_MODULE = "xaiserve_client.v1"  # where the API's stubs live


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def is_api(relative: str) -> bool:
    return Path(relative).parent.as_posix() == API


def generate(client_out: Path, service_out: Path) -> list[Path]:
    """Run protoc over ``protos/`` and place its output; return the files written."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    sources = proto_files()
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *sources]  # fmt: skip
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for src in sorted(Path(tmp).rglob("*")):
            if src.suffix not in (".py", ".pyi"):
                continue
            relative = src.relative_to(tmp)
            if relative.parent.as_posix() == API:
                dest = client_out / "v1" / src.name
                text = src.read_text().replace(
                    f"from {API_MODULE} import ", f"from {CLIENT_MODULE} import "
                )
            else:
                dest = service_out / relative
                text = src.read_text()
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            written.append(dest)
            base = client_out if relative.parent.as_posix() == API else service_out
            for folder in [dest.parent, *dest.parent.parents]:
                if folder == base or base not in folder.parents:
                    break
                init = folder / "__init__.py"
                if not init.exists():
                    init.write_text('"""Generated gRPC stubs (``make proto``; do not edit)."""\n')
    for relative in sources:
        if is_api(relative):
            dest = client_out / "protos" / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROTOS / relative, dest)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="write DIR/client and DIR/service instead")
    args = parser.parse_args(argv)
    if args.out is None:
        client_out, service_out = CLIENT_PACKAGE, SERVICE
    else:
        client_out, service_out = args.out / "client", args.out / "service"
    for path in generate(client_out, service_out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
