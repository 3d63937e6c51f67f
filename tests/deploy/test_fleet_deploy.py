"""The fleet as shipped: the rendered manifests and compose give every replica the shared
state store (from a Secret) and a shared *writable* artifact location, and keep the models
read-only — the GAD "read-only support sets" failure cannot ship again."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import test_manifests as manifests

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO / "service", REPO / "clients" / "python"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from xaiserve import config  # noqa: E402
from xaiserve.observability import Metrics, metric_names  # noqa: E402

FLEET_OVERLAYS = ("cpu", "gpu", "postgres")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay as the real kustomize renders it."""
    return {
        name: list(manifests.tool.kustomize(manifests.DEPLOY / "overlays" / name))
        for name in FLEET_OVERLAYS
    }


def _settings(objects: list[dict[str, Any]]) -> tuple[config.Settings, dict[str, Any]]:
    container = manifests.server_container(objects)
    env = {e["name"]: e for e in container.get("env", [])}
    plain = {k: e["value"] for k, e in env.items() if "value" in e}
    return config.Settings.from_env({**manifests.config_data(objects), **plain}), env


@pytest.mark.parametrize("overlay", FLEET_OVERLAYS)
def test_artifacts_are_writable_and_models_read_only(rendered, overlay):
    objects = rendered[overlay]
    settings, _ = _settings(objects)
    container = manifests.server_container(objects)
    pod = manifests.one(objects, "Deployment", "xaiserve")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # writes need a mount

    models = mounts[settings.models_dir]
    assert models.get("readOnly") is True
    assert volumes[models["name"]]["persistentVolumeClaim"].get("readOnly") is True

    root = settings.artifacts_root
    assert root in mounts, f"the artifact location {root} is not a mounted volume"
    assert not mounts[root].get("readOnly", False), "the artifact volume is mounted read-only"
    assert not Path(root).is_relative_to(settings.models_dir)
    assert not Path(settings.models_dir).is_relative_to(root)
    claim = volumes[mounts[root]["name"]]["persistentVolumeClaim"]
    assert not claim.get("readOnly", False)
    pvc = manifests.one(objects, "PersistentVolumeClaim", claim["claimName"])
    # every replica writes and reads the same sets: shared across nodes
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", FLEET_OVERLAYS)
def test_the_state_store_url_comes_from_a_secret(rendered, overlay):
    _, env = _settings(rendered[overlay])
    ref = env["XAISERVE_STATE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "xaiserve-state", "key": "url"}
    assert "XAISERVE_STATE_URL" not in manifests.config_data(rendered[overlay])


def test_the_self_contained_overlay_brings_its_database(rendered):
    objects = rendered["postgres"]
    secret = manifests.one(objects, "Secret", "xaiserve-state")
    raw = secret.get("stringData", {}).get("url") or base64.b64decode(secret["data"]["url"]).decode()
    url = urlsplit(raw)
    assert url.scheme == "postgresql"
    service = manifests.one(objects, "Service", "xaiserve-postgres")
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"] == 5432
    db = manifests.one(objects, "StatefulSet", "xaiserve-postgres")
    pg = db["spec"]["template"]["spec"]["containers"][0]
    password = next(e for e in pg["env"] if e["name"] == "POSTGRES_PASSWORD")
    secret_pw = manifests.one(objects, "Secret", "xaiserve-postgres")
    key = password["valueFrom"]["secretKeyRef"]["key"]
    value = secret_pw.get("stringData", {}).get(key) or base64.b64decode(secret_pw["data"][key]).decode()
    assert url.password == value
    env = {e["name"]: e.get("value") for e in pg["env"]}
    assert url.username == env["POSTGRES_USER"] and url.path == "/" + env["POSTGRES_DB"]
    assert db["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", FLEET_OVERLAYS)
def test_the_hpa_scales_on_pending_chunks(rendered, overlay):
    hpa = manifests.one(rendered[overlay], "HorizontalPodAutoscaler")
    external = [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert "xaiserve_operation_chunks_pending" in external
    assert "xaiserve_operation_chunks_pending" in metric_names(Metrics())
    rules = yaml.safe_load((manifests.DEPLOY / "prometheus-adapter" / "rules.yaml").read_text())
    served = {r["name"]["as"] for r in rules["externalRules"]}
    assert set(external) <= served


def test_compose_runs_postgres_and_a_writable_artifact_volume():
    compose = yaml.safe_load((manifests.DEPLOY / "compose.yaml").read_text())
    server = compose["services"]["xaiserve"]
    env = server["environment"]
    settings = config.Settings.from_env({k: str(v) for k, v in env.items()})
    volumes = {v.split(":")[1]: v.split(":") for v in server["volumes"]}
    assert volumes["/models"][-1] == "ro"
    artifacts = volumes[settings.artifacts_root]
    assert len(artifacts) == 2 or artifacts[2] != "ro"
    assert artifacts[0] in compose["volumes"]  # a named volume: it outlives the container
    url = urlsplit(settings.state_url)
    assert url.scheme == "postgresql" and url.hostname in compose["services"]
    assert server["depends_on"][url.hostname]["condition"] == "service_healthy"
