#!/usr/bin/env python3
"""Keeps the chart's generated files in step with their sources:

- charts/labkeeper/files/crds/*.yaml   copied from crds/ (generated from the pydantic models)
- charts/labkeeper/values.schema.json  the hand-written schema below + the LabPolicy model's schema for `policy`
- manifests/install.yaml               `helm template` of the chart with default values

`python hack/chart-sync.py` writes them; `--check` writes nothing and exits 1 naming what drifted.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "labkeeper"
CHART_CRDS = CHART / "files" / "crds"
SCHEMA = CHART / "values.schema.json"
INSTALL = REPO / "manifests" / "install.yaml"
SYSTEM_NAMESPACE = "labkeeper-system"
RELEASE = "labkeeper"

sys.path.insert(0, str(REPO / "operator"))

_str = {"type": "string"}
_bool = {"type": "boolean"}
_obj = {"type": "object"}
_port = {"type": "integer", "minimum": 1, "maximum": 65535}
_labels = {"type": "object", "additionalProperties": {"type": "string"}}
_list = {"type": "array"}
_quantity = {"anyOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"},
                       {"type": "number", "minimum": 0}]}
_resources = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": _quantity},
        "limits": {"type": "object", "additionalProperties": _quantity},
    },
}
_service_account = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"create": _bool, "name": _str, "annotations": _labels},
}
_scheduling = {"nodeSelector": _labels, "tolerations": _list, "affinity": _obj, "priorityClassName": _str,
               "podAnnotations": _labels, "podLabels": _labels}
_log_level = {"enum": ["debug", "info"]}


def hand_written_schema() -> dict:
    """Everything except `policy`, which comes from the model."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "labkeeper chart values",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "operator", "agent", "policy"],
        "properties": {
            "global": _obj,
            "nameOverride": _str,
            "fullnameOverride": _str,
            "commonLabels": _labels,
            "image": {
                "type": "object",
                "additionalProperties": False,
                "required": ["repository"],
                "properties": {
                    "registry": _str,
                    "repository": {"type": "string", "minLength": 1},
                    "tag": _str,
                    "digest": {"type": "string", "pattern": r"^$|^sha256:[a-f0-9]{64}$"},
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                    "pullSecrets": {"type": "array", "items": _str},
                },
            },
            "crds": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"install": _bool, "keep": _bool},
            },
            "operator": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "leaderElection": {"type": "object", "additionalProperties": False,
                                       "properties": {"enabled": _bool}},
                    "apiServerURL": {"type": "string", "pattern": r"^$|^https://"},
                    "requireHostProvisioning": _bool,
                    "healthPort": _port,
                    "metricsPort": _port,
                    "logLevel": _log_level,
                    "extraArgs": {"type": "array", "items": _str},
                    "extraEnv": _list,
                    "serviceAccount": _service_account,
                    "resources": _resources,
                    **_scheduling,
                    "podDisruptionBudget": {"type": "object", "additionalProperties": False,
                                            "properties": {"enabled": _bool, "minAvailable": {"type": "integer",
                                                                                              "minimum": 0}}},
                },
            },
            "agent": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": _bool,
                    # the host directory is mounted at the same path, so it must be absolute and not a system dir
                    "dataRoot": {"type": "string", "pattern": r"^/[^/].*[^/]$",
                                 "not": {"enum": ["/etc", "/proc", "/sys", "/home", "/usr", "/var", "/boot"]}},
                    "runtimeClassName": _str,
                    "activitySampling": _bool,
                    "sampler": {"type": "string", "pattern": r"^(nvml|none|file:/.*[^/])$"},
                    "logLevel": _log_level,
                    "extraArgs": {"type": "array", "items": _str},
                    "extraEnv": _list,
                    "serviceAccount": _service_account,
                    "resources": _resources,
                    **_scheduling,
                    "updateStrategy": _obj,
                },
            },
            "priorityClasses": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"create": _bool},
            },
            "runtimeClass": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"create": _bool, "name": {"type": "string", "minLength": 1},
                               "handler": {"type": "string", "minLength": 1}},
            },
            "metrics": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "serviceMonitor": {"type": "object", "additionalProperties": False,
                                       "properties": {"enabled": _bool, "interval": _str, "labels": _labels}},
                    "grafanaDashboard": {"type": "object", "additionalProperties": False,
                                         "properties": {"enabled": _bool, "namespace": {"type": "string"},
                                                        "labels": _labels}},
                },
            },
        },
    }


def policy_schema() -> dict:
    try:
        from labkeeper.api.policy import LabPolicy
    except ImportError as err:
        raise SystemExit(f"chart-sync: labkeeper.api.policy.LabPolicy is not importable ({err})") from err
    return LabPolicy.model_json_schema(by_alias=True, mode="validation")


def closed_key_sets(node):
    """An object whose keys are an enum becomes one with those properties and no others: helm's validator
    reports a bad propertyName at '' but an additional property at its field's path (/policy/gpuWeights)."""
    if isinstance(node, list):
        return [closed_key_sets(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: closed_key_sets(value) for key, value in node.items()}
    names = (node.get("propertyNames") or {}).get("enum")
    if names and isinstance(node.get("additionalProperties"), dict):
        value_schema = node.pop("additionalProperties")
        node.pop("propertyNames")
        node["properties"] = {name: value_schema for name in names}
        node["additionalProperties"] = False
    return node


def values_schema() -> dict:
    schema = hand_written_schema()
    policy = closed_key_sets(copy.deepcopy(policy_schema()))
    # the model's $defs move to the root, where helm resolves "#/$defs/..." references
    schema["$defs"] = policy.pop("$defs", {})
    policy.pop("title", None)
    policy["description"] = "The lab policy (ConfigMap labkeeper-policy, key policy.yaml), checked by the LabPolicy model."
    schema["properties"]["policy"] = policy
    return schema


def schema_text() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"


def helm() -> str:
    out = subprocess.run(["bash", str(REPO / "hack" / "k8s-bin.sh")], check=True, capture_output=True, text=True)
    return str(Path(out.stdout.strip().splitlines()[-1]) / "helm")


def install_text(chart: Path = CHART) -> str:
    rendered = subprocess.run(
        [helm(), "template", RELEASE, str(chart), "--namespace", SYSTEM_NAMESPACE, "--include-crds"],
        check=True, capture_output=True, text=True,
    ).stdout
    namespace = (f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NAMESPACE}\n"
                 f"  labels:\n    app.kubernetes.io/part-of: labkeeper\n")
    header = ("# labkeeper: everything `helm install labkeeper charts/labkeeper -n labkeeper-system` installs,\n"
              "# with default values. Generated by hack/chart-sync.py; do not edit.\n"
              "# kubectl apply --server-side -f manifests/install.yaml\n")
    # chart tests need helm to run them
    docs = [d.strip("\n-") for d in rendered.split("\n---\n") if "helm.sh/hook: test" not in d]
    return header + namespace + "".join(f"---\n{d}\n" for d in docs if d)


def crd_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((REPO / "crds").glob("*.yaml"))}


def chart_files(check: bool = True) -> dict[Path, str]:
    files = {CHART_CRDS / name: text for name, text in crd_files().items()}
    try:
        files[SCHEMA] = schema_text()
    except SystemExit as err:
        if check:
            raise
        print(f"{err}; values.schema.json left as it is", file=sys.stderr)
    return files


def sync(check: bool) -> int:
    drift: list[str] = []
    stale = {p for p in CHART_CRDS.glob("*.yaml")} - {CHART_CRDS / n for n in crd_files()}

    def settle(path: Path, want: str) -> None:
        have = path.read_text() if path.exists() else None
        if have == want:
            return
        rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        if check:
            diff = difflib.unified_diff((have or "").splitlines(), want.splitlines(), f"{rel} (checked in)",
                                        f"{rel} (generated)", lineterm="", n=1)
            drift.append("\n".join(list(diff)[:40]))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(want)
            print(f"wrote {rel}")

    for path, text in chart_files(check).items():
        settle(path, text)
    for path in sorted(stale):
        if check:
            drift.append(f"{path.relative_to(REPO)} has no source in crds/")
        else:
            path.unlink()
            print(f"removed {path.relative_to(REPO)}")
    # install.yaml is rendered from the chart, so only once the chart's own files are current
    if not check or not drift:
        settle(INSTALL, install_text())
    if drift:
        print("generated chart files drifted; run `python hack/chart-sync.py`:\n" + "\n".join(drift), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any generated file differs")
    args = parser.parse_args(argv)
    return sync(args.check)


if __name__ == "__main__":
    sys.exit(main())
