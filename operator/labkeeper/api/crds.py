"""CRDs generated from the pydantic models: `python -m labkeeper.api.crds [DIR]` writes crds/*.yaml."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from labkeeper.api.kinds import CATEGORY, GPUUSER, GROUP, MODELSTORE, SHAREDCACHE, VERSION, WORKSPACE, Kind
from labkeeper.api.names import LABEL_MANAGED, MANAGED_BY
from labkeeper.api.resources import GPUUser, ModelStore, SharedCache, Workspace

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "crds"
_DROP = {"title", "examples"}


@dataclass(frozen=True)
class CrdInfo:
    kind: Kind
    model: type[BaseModel]
    columns: tuple[tuple[str, str, str], ...]  # name, type, jsonPath
    selectable: tuple[str, ...] = ()  # jsonPaths the API server filters a list by (a field selector)


CRDS = (
    CrdInfo(GPUUSER, GPUUser, (
        ("Tier", "string", ".spec.tier"), ("UID", "integer", ".status.uid"), ("State", "string", ".spec.state"),
        ("Phase", "string", ".status.phase"))),
    CrdInfo(SHAREDCACHE, SharedCache, (
        ("Type", "string", ".spec.type"), ("Path", "string", ".spec.path"), ("Size", "string", ".status.size"),
        ("Phase", "string", ".status.phase"))),
    CrdInfo(MODELSTORE, ModelStore, (
        ("Type", "string", ".spec.type"), ("Path", "string", ".spec.path"), ("Size", "string", ".status.size"),
        ("Phase", "string", ".status.phase"))),
    # date columns show the time since: how long this run has lasted and how long it has been idle; both are
    # set only while the pod runs, and idleSince never lies in the future (kubectl prints that as <invalid>)
    CrdInfo(WORKSPACE, Workspace, (
        ("State", "string", ".spec.state"), ("Phase", "string", ".status.phase"),
        ("GPU", "string", ".spec.gpu.profile"), ("Running For", "date", ".status.runningSince"),
        ("Idle For", "date", ".status.idleSince"), ("Kept Until", "string", ".status.keepAliveUntil")),
        # most of a lab's workspaces are Stopped and keep nothing: admission and the board list only the rest
        # (api/admission.LIVE_WORKSPACES)
        selectable=(".status.phase", ".status.holdNode")),
)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and turn pydantic's JSON Schema into a structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            merged = _resolve(options[0], defs)
            for key, value in rest.items():
                if key == "x-kubernetes-validations":
                    merged.setdefault(key, [])
                    merged[key] = [*merged[key], *value]
                else:
                    merged[key] = value
            return _resolve(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields; strict field validation rejects them
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
            continue
        out[key] = _resolve(value, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _mark_status(schema: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    # status is written by labkeeper's own controllers; keep fields a newer agent may add
    schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _resolve(raw, defs)
    schema.pop("required", None)
    properties = schema["properties"]
    properties["apiVersion"] = {"type": "string"}
    properties["kind"] = {"type": "string"}
    properties["metadata"] = {"type": "object"}
    if "status" in properties:
        properties["status"] = _mark_status(properties["status"], model)
    schema["required"] = ["spec"]
    return dict(schema)


def crd(info: CrdInfo) -> dict[str, Any]:
    kind = info.kind
    columns = [{"name": name, "type": type_, "jsonPath": path} for name, type_, path in info.columns]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": columns,
    }
    if info.selectable:
        version["selectableFields"] = [{"jsonPath": path} for path in info.selectable]
    version["schema"] = {"openAPIV3Schema": openapi_schema(info.model)}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name,
                     "labels": {"app.kubernetes.io/part-of": "labkeeper",
                                LABEL_MANAGED: MANAGED_BY}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind.kind, "listKind": f"{kind.kind}List", "plural": kind.plural,
                      "singular": kind.singular, "shortNames": [kind.short_name], "categories": [CATEGORY]},
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [version],
        },
    }


def render_all() -> dict[str, str]:
    """file name → YAML text, exactly what `crds/` must hold."""
    header = "# Generated by `python -m labkeeper.api.crds` from operator/labkeeper/api; do not edit.\n"
    return {f"{info.kind.crd_name}.yaml": header + yaml.safe_dump(crd(info), sort_keys=False, width=120)
            for info in CRDS}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else DEFAULT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
