#!/usr/bin/env python3
"""Render a kustomization directory to Kubernetes objects: a small kustomize for tests and CI.

    python tools/render_manifests.py deploy/overlays/cpu > xaiserve-cpu.yaml
    python tools/render_manifests.py deploy/overlays/cpu --prometheus-rules > rules.yml

Real kustomize (``kubectl apply -k``) is what deploys; this renders the same output for the
features deploy/ uses, so tests can check the objects without a Go binary (none is on PyPI).
Supported kustomization fields, and nothing else (an unknown field is an error, so a feature
added to deploy/ without support here fails loudly instead of rendering wrong):

- ``resources``: YAML files (one or more documents) and directories holding a kustomization;
- ``patches`` (``path`` or inline ``patch``, optional ``target``), ``patchesStrategicMerge``,
  ``patchesJson6902``: a patch that is a YAML list is JSON6902 (add, remove, replace, test, move,
  copy) applied to every object ``target`` selects; a patch that is a mapping is a strategic
  merge patch applied to the object with its kind and name (or every ``target`` match);
- ``images``: ``name`` → ``newName``/``newTag``/``digest`` in pod templates' containers;
- ``namespace``: set on every (namespaced) object;
- ``commonLabels`` and ``labels`` (``pairs``, ``includeSelectors``, ``includeTemplates``):
  metadata labels, plus selectors and pod templates like kustomize's built-in field specs for
  the kinds used here.

Order inside one kustomization: resources (bases rendered first, recursively), patches,
namespace, labels, images — the order kustomize applies its built-in transformers in.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
    "images",
    "namespace",
    "commonLabels",
    "labels",
}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "APIService",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# patchMergeKey of the list fields strategic merge patches touch (from the Kubernetes API types).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "envFrom": (),  # no merge key: replaced
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),  # containers: containerPort; Services: port
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
}


class RenderError(Exception):
    """A kustomization this renderer cannot render (or that kustomize would reject)."""


# ---------------------------------------------------------------------------------------------
# loading


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise RenderError(f"no kustomization file in {directory}")


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: every document must be a Kubernetes object")
    return docs


def render(directory: str | Path) -> list[dict[str, Any]]:
    """Objects the kustomization in ``directory`` produces, in resource order."""
    return _render(Path(directory).resolve(), stack=())


def _render(directory: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    if directory in stack:
        raise RenderError(f"kustomization cycle through {directory}")
    kfile = find_kustomization(directory)
    with kfile.open(encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: unsupported kustomization fields {sorted(unknown)}")

    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []) or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(_render(path, (*stack, directory)))
        elif path.is_file():
            objects.extend(load_documents(path))
        else:
            raise RenderError(f"{kfile}: resource {entry!r} not found")
    _check_unique(objects, kfile)

    for patch_path in k.get("patchesStrategicMerge", []) or []:
        for doc in load_documents(directory / patch_path):
            _apply_strategic(objects, doc, target=None, origin=str(patch_path))
    for entry in k.get("patchesJson6902", []) or []:
        ops = _load_patch_entry(directory, entry)
        if not isinstance(ops, list):
            raise RenderError(f"{kfile}: patchesJson6902 entry is not a list of operations")
        _apply_json6902(objects, ops, entry.get("target"), origin=str(entry))
    for entry in k.get("patches", []) or []:
        content = _load_patch_entry(directory, entry)
        if isinstance(content, list):
            if not entry.get("target"):
                raise RenderError(f"{kfile}: a JSON6902 patch needs a target")
            _apply_json6902(objects, content, entry["target"], origin=str(entry))
        elif isinstance(content, dict):
            _apply_strategic(objects, content, entry.get("target"), origin=str(entry))
        else:
            raise RenderError(f"{kfile}: patch {entry!r} is neither a mapping nor a list")

    if k.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    if k.get("commonLabels"):
        _add_labels(objects, k["commonLabels"], selectors=True, templates=True)
    for entry in k.get("labels", []) or []:
        selectors = bool(entry.get("includeSelectors", False))
        templates = selectors or bool(entry.get("includeTemplates", False))
        _add_labels(objects, entry.get("pairs", {}), selectors=selectors, templates=templates)
    for image in k.get("images", []) or []:
        _set_image(objects, image)
    _check_unique(objects, kfile)
    return objects


def _load_patch_entry(directory: Path, entry: dict[str, Any]) -> Any:
    if "path" in entry and "patch" in entry:
        raise RenderError(f"patch {entry!r}: give path or patch, not both")
    if "path" in entry:
        with (directory / entry["path"]).open(encoding="utf-8") as f:
            return yaml.safe_load(f)
    if "patch" in entry:
        return yaml.safe_load(entry["patch"])
    raise RenderError(f"patch {entry!r} has neither path nor patch")


def _key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta.get("name", ""))


def _check_unique(objects: list[dict[str, Any]], origin: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = _key(obj)
        if key in seen:
            raise RenderError(f"{origin}: duplicate object {key}")
        seen.add(key)


# ---------------------------------------------------------------------------------------------
# targets


def _group_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, version = _group_version(obj["apiVersion"])
    meta = obj.get("metadata", {})
    checks = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
    }
    for field, value in checks.items():
        if field in target and target[field] != value:
            return False
    selector = target.get("labelSelector")
    if selector:
        labels = meta.get("labels", {}) or {}
        for term in str(selector).split(","):
            name, _, wanted = term.partition("=")
            if labels.get(name.strip()) != wanted.strip():
                return False
    return True


def _targets(objects: list[dict[str, Any]], target: dict[str, Any], origin: str) -> list[int]:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace", "labelSelector"}
    if unknown:
        raise RenderError(f"patch {origin}: unsupported target fields {sorted(unknown)}")
    hits = [i for i, obj in enumerate(objects) if _matches(obj, target)]
    if not hits:
        raise RenderError(f"patch {origin}: target {target} matches no object")
    return hits


# ---------------------------------------------------------------------------------------------
# strategic merge


def _apply_strategic(
    objects: list[dict[str, Any]], patch: dict[str, Any], target: dict[str, Any] | None, origin: str
) -> None:
    if target:
        indices = _targets(objects, target, origin)
    else:
        name = patch.get("metadata", {}).get("name")
        kind = patch.get("kind")
        if not name or not kind:
            raise RenderError(
                f"patch {origin}: a strategic merge patch needs kind and metadata.name"
            )
        indices = [
            i
            for i, obj in enumerate(objects)
            if obj["kind"] == kind
            and obj.get("metadata", {}).get("name") == name
            and (
                "namespace" not in patch.get("metadata", {})
                or obj["metadata"].get("namespace") == patch["metadata"]["namespace"]
            )
        ]
        if len(indices) != 1:
            raise RenderError(f"patch {origin}: {kind}/{name} matches {len(indices)} objects")
    for i in indices:
        body = copy.deepcopy({k: v for k, v in patch.items() if k not in ("apiVersion", "kind")})
        if target:
            body.get("metadata", {}).pop("name", None)
        objects[i] = strategic_merge(objects[i], body)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge of ``patch`` into ``base`` (new object; inputs untouched).

    Mappings merge recursively; ``null`` deletes a key; ``$patch: replace`` replaces a mapping;
    lists with a known merge key merge item by item (``$patch: delete`` removes an item); other
    lists are replaced.
    """
    if isinstance(patch, dict) and isinstance(base, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = _strip_directives(copy.deepcopy(value))
        return out
    if isinstance(patch, list) and isinstance(base, list):
        merge_key = _merge_key(field, base, patch)
        if merge_key is None:
            return _strip_directives(copy.deepcopy(patch))
        items = copy.deepcopy(base)
        for item in patch:
            index = next(
                (
                    i
                    for i, existing in enumerate(items)
                    if existing.get(merge_key) == item[merge_key]
                ),
                None,
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    del items[index]
            elif index is None:
                items.append(_strip_directives(copy.deepcopy(item)))
            else:
                items[index] = strategic_merge(items[index], item, field)
        return items
    return _strip_directives(copy.deepcopy(patch))


def _merge_key(field: str, base: list[Any], patch: list[Any]) -> str | None:
    items = base + patch
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in MERGE_KEYS.get(field, ()):
        if all(key in item for item in items):
            return key
    return None


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$patch")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# JSON6902


def _apply_json6902(
    objects: list[dict[str, Any]],
    ops: list[dict[str, Any]],
    target: dict[str, Any] | None,
    origin: str,
) -> None:
    if not target:
        raise RenderError(f"patch {origin}: a JSON6902 patch needs a target")
    for i in _targets(objects, target, origin):
        objects[i] = json_patch(objects[i], ops)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError):
                raise RenderError(f"JSON pointer {path!r}: no index {part!r}") from None
        elif isinstance(doc, dict):
            if part not in doc:
                raise RenderError(f"JSON pointer {path!r}: no key {part!r}")
            doc = doc[part]
        else:
            raise RenderError(f"JSON pointer {path!r}: cannot descend into a scalar")
    return doc


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 patch (add, remove, replace, move, copy, test) on a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parts = _pointer(path)
        if kind == "test":
            if _resolve(doc, parts, path) != op.get("value"):
                raise RenderError(f"JSON6902 test failed at {path!r}")
            continue
        if kind in ("move", "copy"):
            value = copy.deepcopy(_resolve(doc, _pointer(op["from"]), op["from"]))
            if kind == "move":
                _remove(doc, _pointer(op["from"]), op["from"])
            _add(doc, parts, value, path)
        elif kind == "add":
            _add(doc, parts, copy.deepcopy(op.get("value")), path)
        elif kind == "remove":
            _remove(doc, parts, path)
        elif kind == "replace":
            _resolve(doc, parts, path)  # must exist
            _remove(doc, parts, path)
            _add(doc, parts, copy.deepcopy(op.get("value")), path)
        else:
            raise RenderError(f"JSON6902 op {kind!r} not supported")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str) -> None:
    if not parts:
        raise RenderError("JSON6902: cannot replace the whole document")
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            index = int(last)
            if not 0 <= index <= len(parent):
                raise RenderError(f"JSON pointer {path!r}: index out of range")
            parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise RenderError(f"JSON pointer {path!r}: parent is a scalar")


def _remove(doc: Any, parts: list[str], path: str) -> None:
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        del parent[int(last)]
    elif isinstance(parent, dict):
        if last not in parent:
            raise RenderError(f"JSON pointer {path!r}: nothing to remove")
        del parent[last]
    else:
        raise RenderError(f"JSON pointer {path!r}: parent is a scalar")


# ---------------------------------------------------------------------------------------------
# labels, images


def _merge_into(mapping_parent: dict[str, Any], key: str, pairs: dict[str, str]) -> None:
    current = mapping_parent.get(key) or {}
    current.update({k: str(v) for k, v in pairs.items()})
    mapping_parent[key] = current


def _pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in WORKLOAD_KINDS:
        return obj.setdefault("spec", {}).setdefault("template", {})
    return None


def _add_labels(
    objects: list[dict[str, Any]], pairs: dict[str, str], *, selectors: bool, templates: bool
) -> None:
    if not pairs:
        return
    for obj in objects:
        _merge_into(obj.setdefault("metadata", {}), "labels", pairs)
        template = _pod_template(obj)
        if template is not None and templates:
            _merge_into(template.setdefault("metadata", {}), "labels", pairs)
        if not selectors:
            continue
        kind, spec = obj["kind"], obj.get("spec")
        if spec is None:
            continue
        if kind == "Service":
            _merge_into(spec, "selector", pairs)
        elif kind in WORKLOAD_KINDS or kind == "PodDisruptionBudget":
            _merge_into(spec.setdefault("selector", {}), "matchLabels", pairs)
        if template is not None:
            affinity = template.get("spec", {}).get("affinity", {}) or {}
            for kind_key in ("podAffinity", "podAntiAffinity"):
                terms = affinity.get(kind_key, {}) or {}
                for term in terms.get("requiredDuringSchedulingIgnoredDuringExecution", []) or []:
                    if "labelSelector" in term:
                        _merge_into(term["labelSelector"], "matchLabels", pairs)
                for weighted in (
                    terms.get("preferredDuringSchedulingIgnoredDuringExecution", []) or []
                ):
                    term = weighted.get("podAffinityTerm", {})
                    if "labelSelector" in term:
                        _merge_into(term["labelSelector"], "matchLabels", pairs)
            for constraint in template.get("spec", {}).get("topologySpreadConstraints", []) or []:
                if "labelSelector" in constraint:
                    _merge_into(constraint["labelSelector"], "matchLabels", pairs)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → (name, tag, digest); a registry port is not a tag."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1 :]
    return image, tag, digest


def _set_image(objects: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    unknown = set(entry) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise RenderError(f"images entry {entry}: unsupported fields {sorted(unknown)}")
    for obj in objects:
        template = _pod_template(obj)
        if template is None:
            continue
        pod = template.get("spec", {})
        for field in ("initContainers", "containers"):
            for container in pod.get(field, []) or []:
                name, tag, digest = split_image(container.get("image", ""))
                if name != entry["name"]:
                    continue
                name = entry.get("newName", name)
                if "newTag" in entry:
                    tag, digest = str(entry["newTag"]), None
                if "digest" in entry:
                    tag, digest = None, entry["digest"]
                image = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                container["image"] = image


# ---------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, like the sources."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(
        objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
    )


RULES_HEADER = (
    "# Generated from the PrometheusRule in deploy/ by\n"
    "#   python tools/render_manifests.py deploy/overlays/cpu --prometheus-rules\n"
    "# (a plain Prometheus rule file for deploy/compose.yaml; a test checks it is current).\n"
)


def prometheus_rules(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule groups of every PrometheusRule, as a plain Prometheus rule file."""
    groups: list[dict[str, Any]] = []
    for obj in objects:
        if obj["kind"] == "PrometheusRule":
            groups.extend(copy.deepcopy(obj.get("spec", {}).get("groups", [])))
    return {"groups": groups}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="a directory with a kustomization.yaml")
    parser.add_argument(
        "--prometheus-rules",
        action="store_true",
        help="print only the PrometheusRule groups, as a Prometheus rule file",
    )
    args = parser.parse_args(argv)
    try:
        objects = render(args.directory)
    except (RenderError, OSError, yaml.YAMLError) as exc:
        print(f"render_manifests: {exc}", file=sys.stderr)
        return 1
    if args.prometheus_rules:
        sys.stdout.write(RULES_HEADER + dump([prometheus_rules(objects)]))
    else:
        sys.stdout.write(dump(objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
