#!/usr/bin/env python3
"""Build the two wheels, ``xaiserve-client`` and ``xaiserve``, into a folder: ``make wheels``.

    python tools/build_wheels.py --out dist

Each project is copied to a temporary folder first (only what its wheel is made of), so the
build leaves no ``build/`` or ``*.egg-info`` behind in the checkout and no stale file from an
earlier build can slip into a wheel. Builds with the running interpreter's setuptools
(``--no-build-isolation``): no index is needed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "clients" / "python"
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")


def build(out: Path) -> dict[str, Path]:
    """``{"xaiserve-client": wheel, "xaiserve": wheel}`` built into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        client, server = Path(tmp, "client"), Path(tmp, "server")
        shutil.copytree(CLIENT, client, ignore=SKIP)  # LICENSE: the link's target is copied
        server.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(REPO / name, server / name)
        shutil.copytree(REPO / "service", server / "service", ignore=SKIP)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(out), str(client), str(server)],
            check=True,
        )  # fmt: skip
    return {
        "xaiserve-client": max(out.glob("xaiserve_client-*.whl"), key=lambda p: p.stat().st_mtime),
        "xaiserve": max(out.glob("xaiserve-*.whl"), key=lambda p: p.stat().st_mtime),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    args = parser.parse_args(argv)
    for path in build(args.out).values():
        print(f"{path}  {path.stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
