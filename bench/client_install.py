"""What a caller pays to install the client: wheel sizes, install time, packages installed.

Builds both wheels (``pip wheel --no-deps``), then times ``pip install`` of the client wheel
alone into a fresh venv, at the CPU lock's versions. Without ``--quick`` it also times the
server's install (client + ``xaiserve[cpu]``, torch included) into another fresh venv and
prints the ratio of the two, measured in the same run. pip reads wheels from the local disk
and its cache here, so the times are installs, not downloads.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "cpu.txt"


def build(out: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tools"))
    from build_wheels import build as build_wheels  # tools/build_wheels.py (`make wheels`)

    return build_wheels(out)


def timed_install(venv: Path, *requirements: str) -> tuple[float, int]:
    """Seconds for venv creation + ``pip install``, and the number of distributions installed."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "-c", str(LOCK), *requirements],
        check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "freeze"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return seconds, len(listed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the client only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wheels = build(root / "dist")
        print("| wheel | size (kB) |\n|---|---|")
        for path in wheels.values():
            print(f"| {path.name} | {path.stat().st_size / 1000:.0f} |")
        client_s, client_n = timed_install(root / "client", str(wheels["xaiserve-client"]))
        print("\n| install into a fresh venv | seconds | distributions |\n|---|---|---|")
        print(f"| xaiserve-client | {client_s:.1f} | {client_n} |")
        if not args.quick:
            server_s, server_n = timed_install(
                root / "server", str(wheels["xaiserve-client"]), f"{wheels['xaiserve']}[cpu]"
            )
            print(f"| xaiserve[cpu] (server) | {server_s:.1f} | {server_n} |")
            print(f"\nclient install / server install: {client_s / server_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
