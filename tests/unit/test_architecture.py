"""docs/architecture.md cannot drift from the code: the layer table matches the import-linter
contract that `make lint` enforces, and every module the request path names exists."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "importlinter"
]["contracts"]


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else None]


def _module(path: str) -> str:
    """``api/servicer`` or ``config.py`` → ``xaiserve.api.servicer`` / ``xaiserve.config``."""
    return "xaiserve." + path.strip("/").removesuffix(".py").replace("/", ".")


def _doc_layers() -> list[set[str]]:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", _section("Layers inside"), flags=re.M)
    return [{_module(p) for p in re.findall(r"`([^`]+)`", packages)} for _, packages in rows]


def _contract_layers() -> list[set[str]]:
    (layers,) = [c for c in CONTRACTS if c["type"] == "layers"]
    return [{m.strip() for m in re.split(r"[|:]", layer)} for layer in layers["layers"]]


def test_the_layer_table_is_the_import_linter_contract() -> None:
    assert _doc_layers() == _contract_layers()


def test_every_layer_and_every_module_on_the_request_path_exists() -> None:
    named = set().union(*_doc_layers())
    path = _section("One request, start to end")
    named |= {
        _module(m)
        for m in re.findall(r"`((?:api|core|methods|models|runtime|imaging)/[a-z_]+)", path)
    }
    named.discard("xaiserve.methods.<name>")
    missing = sorted(m for m in named if importlib.util.find_spec(m) is None)
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_the_request_path_is_a_short_numbered_list() -> None:
    steps = re.findall(r"^(\d+)\. ", _section("One request, start to end"), flags=re.M)
    assert [int(s) for s in steps] == list(range(1, len(steps) + 1)) and 3 <= len(steps) <= 8


def test_protobuf_is_fenced_into_api() -> None:
    (fence,) = [c for c in CONTRACTS if c["id"] == "protobuf-in-api"]
    everything_below_api = set().union(*_contract_layers()[1:]) - {
        "xaiserve.config",
        "xaiserve.observability",
        "xaiserve.errors",
    }
    assert set(fence["source_modules"]) == everything_below_api
    assert {"xaiserve.v1", "grpc", "google"} <= set(fence["forbidden_modules"])  # google = protobuf
