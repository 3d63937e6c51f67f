"""Packaging: the two distributions' metadata, the lock files, and `pip check` of both images.

The images install ``requirements/<variant>.txt`` (``make lock``) with the variant's extra; these
tests check the locks against the pyprojects and against the generated stubs, and resolve each
image's install set from the package index's metadata to run ``pip check``'s rule over it.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
VARIANTS = ("cpu", "gpu")
ORT = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
# What a caller needs: gRPC (with its health-check stubs), protobuf, numpy, Pillow, and tqdm
# (pure Python, no dependencies) for the CLI's progress bars.
CLIENT_DEPENDENCIES = {"grpcio", "grpcio-health-checking", "protobuf", "numpy", "pillow", "tqdm"}


def project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())["project"]


def requirements(meta: dict, extras: tuple[str, ...] = ()) -> list[Requirement]:
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in meta["optional-dependencies"][extra]]
    return reqs


def lock(variant: str) -> dict[str, Version]:
    """``name -> version`` for the lines of a lock file whose markers hold on this platform."""
    pins: dict[str, Version] = {}
    for line in (REPO / "requirements" / f"{variant}.txt").read_text().splitlines():
        if not line or line.startswith((" ", "#", "-")):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_both_distributions_share_version_license_and_typing() -> None:
    server, client = project(REPO), project(CLIENT)
    assert server["name"] == "xaiserve" and client["name"] == "xaiserve-client"
    assert server["version"] == client["version"]
    for meta, root in ((server, REPO), (client, CLIENT)):
        assert meta["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
        for name in meta["license-files"]:
            assert "Apache License" in (root / name).read_text()
    assert (REPO / "service" / "xaiserve" / "py.typed").is_file()
    assert (CLIENT / "xaiserve_client" / "py.typed").is_file()
    # the server takes its stubs and command from the client of the same release
    (pin,) = [r for r in requirements(server) if r.name == "xaiserve-client"]
    assert str(pin.specifier) == f"=={client['version']}"


def test_client_depends_on_the_wire_only() -> None:
    client = project(CLIENT)
    names = {canonicalize_name(r.name) for r in requirements(client)}
    assert names == CLIENT_DEPENDENCIES
    assert {canonicalize_name(r.name) for r in requirements(client, ("plot",))} - names == {
        "matplotlib"
    }


def test_ranges_not_pins_in_both_distributions() -> None:
    for root in (REPO, CLIENT):
        meta = project(root)
        extras = tuple(meta.get("optional-dependencies", {}))
        for req in requirements(meta, extras):
            if req.name == "xaiserve-client":
                continue
            operators = {s.operator for s in req.specifier}
            assert "==" not in operators and ">=" in operators, f"{root.name}: {req} is a pin"


def test_lower_bounds_cover_the_generated_stubs() -> None:
    """The stubs refuse older runtimes (gRPC's version check, protobuf's gencode check)."""
    stubs = CLIENT / "xaiserve_client" / "v1"
    grpc_version = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'", (stubs / "explain_pb2_grpc.py").read_text()
    )
    gencode = re.search(r"# Protobuf Python Version: ([\d.]+)", (stubs / "explain_pb2.py").read_text())
    assert grpc_version and gencode
    reqs = {canonicalize_name(r.name): r.specifier for r in requirements(project(CLIENT))}
    generated = Version(grpc_version.group(1))
    assert all(Version(s.version) >= generated for s in reqs["grpcio"] if s.operator == ">=")
    proto = Version(gencode.group(1))
    (lower,) = [Version(s.version) for s in reqs["protobuf"] if s.operator == ">="]
    (upper,) = [Version(s.version) for s in reqs["protobuf"] if s.operator == "<"]
    assert lower >= proto and upper.major == proto.major + 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_lock_satisfies_the_variant(variant: str) -> None:
    pins = lock(variant)
    server = requirements(project(REPO), (variant,) + (("dev",) if variant == "cpu" else ()))
    client = requirements(project(CLIENT), ("plot",))
    for req in server + client:
        if req.name == "xaiserve-client" or (req.marker and not req.marker.evaluate()):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{variant}: {req} is not locked: run `make lock`"
        assert pins[name] in req.specifier, f"{variant}: {name}=={pins[name]} outside {req}"
    # one ONNX Runtime build per image, never both: they install the same module
    other = ORT["gpu" if variant == "cpu" else "cpu"]
    assert ORT[variant] in pins and other not in pins


def test_both_images_share_every_common_version() -> None:
    cpu, gpu = lock("cpu"), lock("gpu")
    assert cpu["onnxruntime"] == gpu["onnxruntime-gpu"], "one ONNX Runtime release for both"
    different = {n: (cpu[n], gpu[n]) for n in cpu.keys() & gpu.keys() if cpu[n] != gpu[n]}
    assert not different


def test_tests_run_the_locked_versions() -> None:
    """This environment (CI's, `make venv`'s) has the CPU lock's versions of what it installed."""
    wrong = {}
    for name, version in lock("cpu").items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(installed.base_version) != version and installed != version:
            wrong[name] = (str(installed), str(version))
    assert not wrong, f"installed vs locked (run `make venv`): {wrong}"


def _resolve(variant: str, tmp_path: Path) -> list[dict]:
    """Resolve the image's install (client + server[variant], constrained by the lock) from the
    package index's metadata, as pip would in a fresh venv; nothing is installed."""
    report = tmp_path / f"{variant}.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--only-binary", ":all:", "--no-build-isolation", "--report", str(report),
        "-c", str(REPO / "requirements" / f"{variant}.txt"),
        str(CLIENT), f"{REPO}[{variant}]",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "Could not find a version" in done.stderr + done.stdout:
        pytest.skip(f"package index unreachable: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())["install"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_image_install_passes_pip_check(variant: str, tmp_path: Path) -> None:
    """`pip check`'s rule over the resolved set: every installed distribution's requirements
    (markers evaluated for this interpreter, with the extras it was installed with) hold."""
    items = _resolve(variant, tmp_path)
    installed = {
        canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"])
        for item in items
    }
    broken = []
    for item in items:
        extras = item.get("requested_extras") or []
        for text in item["metadata"].get("requires_dist", []):
            req = Requirement(text)
            envs = [dict(default_environment(), extra=e) for e in ["", *extras]]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            name = canonicalize_name(req.name)
            have = installed.get(name)
            spec = SpecifierSet(str(req.specifier), prereleases=True)
            if have is None or have not in spec:
                broken.append(f"{item['metadata']['name']} requires {req}, has {have}")
    assert not broken
    assert ORT[variant] in installed
    assert ORT["gpu" if variant == "cpu" else "cpu"] not in installed
    pins = lock(variant)
    for name, version in installed.items():
        if name in pins:
            assert version == pins[name] or Version(version.base_version) == pins[name], name
