"""Pure builders for what a GPUUser gets in the API: namespace, RBAC, quota, limit range,
priority classes. Plain inputs in, plain manifests out; unit-tested by comparing objects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labkeeper.api.devices import resource_of
from labkeeper.api.kinds import GROUP
from labkeeper.api.names import LABEL_MANAGED as LABEL_MANAGED
from labkeeper.api.names import LABEL_USER as LABEL_USER
from labkeeper.api.names import MANAGED_BY as MANAGED_BY
from labkeeper.api.names import namespace_for as namespace_for

USERS_GROUP = "labkeeper:users"
HOLD_PRIORITY_CLASS = "labkeeper-hold"
QUOTA_NAME = "labkeeper-limits"
PRIORITY_QUOTA_NAME = "labkeeper-priority"
LIMIT_RANGE_NAME = "labkeeper-defaults"
ROLE_NAME = "labkeeper-user"


def access_group(username: str, incarnation: str) -> str:
    """The group in the user's client certificate that her bindings name. Kubernetes cannot revoke a client
    certificate, so rights are bound to this incarnation of her, never to the name: a user re-added after
    offboarding gets a new incarnation, and a certificate issued before it grants nothing."""
    return f"labkeeper:{username}:{incarnation}"


def _group_subject(group: str) -> list[dict[str, Any]]:
    return [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]


def priority_class_for(tier: str) -> str:
    return f"labkeeper-{tier}"


gpu_resource = resource_of  # the device plugin's resource name for a MIG profile or a whole GPU


@dataclass(frozen=True)
class Access:
    """What the user's tier and overrides allow, already merged and parsed."""

    username: str
    tier: str
    max_gpu_equivalents: float
    cpu: str
    memory: str
    max_workspaces: int
    allowed_profiles: tuple[str, ...]
    gpu_weights: Mapping[str, float] = field(default_factory=dict)


def _labels(username: str) -> dict[str, str]:
    return {LABEL_USER: username, LABEL_MANAGED: MANAGED_BY}


def _in_her_namespace(api_version: str, kind: str, name: str, username: str) -> dict[str, Any]:
    """apiVersion, kind and metadata of an object labkeeper keeps in the user's namespace."""
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": namespace_for(username), "labels": _labels(username)}}


def namespace(username: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": namespace_for(username), "labels": _labels(username)}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def user_role(username: str) -> dict[str, Any]:
    return {
        **_in_her_namespace("rbac.authorization.k8s.io/v1", "Role", ROLE_NAME, username),
        "rules": [
            {"apiGroups": [GROUP], "resources": ["workspaces"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [GROUP], "resources": ["workspaces/status"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/portforward"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["resourcequotas", "limitranges"], "verbs": ["get", "list", "watch"]},
        ],
    }


def user_role_binding(username: str, group: str) -> dict[str, Any]:
    return {
        **_in_her_namespace("rbac.authorization.k8s.io/v1", "RoleBinding", ROLE_NAME, username),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_NAME},
        "subjects": _group_subject(group),
    }


def self_reader_name(username: str) -> str:
    return f"labkeeper-user:{username}"


def self_reader_role(username: str, group: str, owner: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ClusterRole + binding that lets the user read her own GPUUser and nothing else cluster-wide."""
    name = self_reader_name(username)
    meta: dict[str, Any] = {"name": name, "labels": _labels(username)}
    if owner:
        meta["ownerReferences"] = [owner]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta,
        "rules": [{"apiGroups": [GROUP], "resources": ["gpuusers"], "resourceNames": [username],
                   "verbs": ["get", "watch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": dict(meta),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": _group_subject(group),
    }
    return role, binding


def workspace_object_cap(max_running: int) -> int:
    # stopped workspaces are kept for a while, so the object count allows a few per running slot
    return max(10, 3 * max_running)


def resource_quota(access: Access) -> dict[str, Any]:
    """Hard caps the API enforces on its own; the weighted GPU-equivalent cap is the operator's job."""
    hard = {
        "requests.cpu": access.cpu,
        "limits.cpu": access.cpu,
        "requests.memory": access.memory,
        "limits.memory": access.memory,
        # each running workspace may also have one hold placeholder
        "pods": str(2 * access.max_workspaces),
        "count/workspaces.labkeeper.io": str(workspace_object_cap(access.max_workspaces)),
    }
    for profile, weight in sorted(access.gpu_weights.items()):
        allowed = profile in access.allowed_profiles and weight > 0
        # a small epsilon so 3 x 1/7 fits a 3/7 cap despite float rounding
        count = math.floor(access.max_gpu_equivalents / weight + 1e-9) if allowed else 0
        hard[f"requests.{gpu_resource(profile)}"] = str(count)
    return {
        **_in_her_namespace("v1", "ResourceQuota", QUOTA_NAME, access.username),
        "spec": {"hard": hard},
    }


def priority_quota(access: Access) -> dict[str, Any]:
    """Pods in the user's namespace may only use the tier's PriorityClass (or the hold class)."""
    return {
        **_in_her_namespace("v1", "ResourceQuota", PRIORITY_QUOTA_NAME, access.username),
        "spec": {
            "hard": {"pods": "0"},
            "scopeSelector": {"matchExpressions": [{
                "scopeName": "PriorityClass", "operator": "NotIn",
                "values": sorted({priority_class_for(access.tier), HOLD_PRIORITY_CLASS}),
            }]},
        },
    }


def limit_range(access: Access) -> dict[str, Any]:
    return {
        **_in_her_namespace("v1", "LimitRange", LIMIT_RANGE_NAME, access.username),
        "spec": {"limits": [{
            "type": "Container",
            "default": {"cpu": "1", "memory": "2Gi"},
            "defaultRequest": {"cpu": "1", "memory": "2Gi"},
            "max": {"cpu": access.cpu, "memory": access.memory},
        }]},
    }


def priority_class(name: str, value: int, *, preempt: bool, description: str) -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name, "labels": {LABEL_MANAGED: MANAGED_BY}},
        "value": value,
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority" if preempt else "Never",
        "description": description,
    }
