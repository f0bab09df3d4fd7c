"""Helpers for the chart tests: the pinned helm binary, rendering with values, and lookups."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from labkeeper.testing.cluster import binary_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "labkeeper"
NAMESPACE = "labkeeper-system"


def helm_path() -> Path:
    return binary_dir() / "helm"


def run_helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def values_args(tmp_dir: Path, values: dict | None) -> list[str]:
    if not values:
        return []
    path = tmp_dir / f"values-{abs(hash(repr(values)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


@dataclass
class Rendered:
    objects: list[dict]

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.all(kind)}


def container(workload: dict, name: str) -> dict:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def rules_allow(rules: list[dict], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """Whether RBAC rules grant `verb` on `group/resource` (optionally on one named object)."""
    for rule in rules:
        if group not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
            continue
        if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
            continue
        if verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False
