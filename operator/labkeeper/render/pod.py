"""The workspace pod, built by a pure function from plain inputs (as kubespawner's make_pod): unit-tested
by comparing the built object. A GPU held after stop is a record that admission counts, not a pod."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkeeper.api.names import LABEL_GPU, LABEL_MANAGED, LABEL_USER, MANAGED_BY
from labkeeper.api.names import LABEL_ROLE as LABEL_ROLE
from labkeeper.api.names import LABEL_WORKSPACE as LABEL_WORKSPACE
from labkeeper.api.names import hold_name as hold_name
from labkeeper.api.names import pod_name as pod_name
from labkeeper.render.access import gpu_resource

# the host's user database, which the agent keeps: an image that never heard of a lab user's uid would
# otherwise leave her as "I have no name!" (whoami, the shell prompt, ls -l of her own files)
USER_DATABASE = ("/etc/passwd", "/etc/group")


@dataclass(frozen=True)
class Mount:
    """A shared tree on the host, mounted at the same absolute path so env values match profile.d."""

    name: str
    host_path: str
    env: Sequence[tuple[str, str]] = ()
    writable: bool = False


@dataclass(frozen=True)
class PodInputs:
    workspace: str
    namespace: str
    owner: dict[str, Any]
    username: str
    uid: int
    gid: int
    supplemental_gids: Sequence[int]
    home_host_path: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    cpu: str = "1"
    memory: str = "2Gi"
    gpu_profile: str = "none"
    gpu_count: int = 1
    priority_class: str = ""
    runtime_class: str | None = None
    grace_seconds: int = 60
    shm_size: str = "1Gi"
    caches: Sequence[Mount] = ()
    model_stores: Sequence[Mount] = ()
    toolchains: Sequence[Mount] = ()
    extra_env: Sequence[tuple[str, str]] = field(default_factory=tuple)
    node_name: str | None = None
    # a Batch run: its command runs once, and the pod never restarts it
    batch: bool = False


def _labels(inputs: PodInputs, role: str) -> dict[str, str]:
    return {LABEL_USER: inputs.username, LABEL_WORKSPACE: inputs.workspace, LABEL_ROLE: role,
            LABEL_GPU: inputs.gpu_profile, LABEL_MANAGED: MANAGED_BY}


def gpu_limits(profile: str, count: int) -> dict[str, str]:
    if profile == "none":
        return {}
    return {gpu_resource(profile): str(count)}


def _volume_name(prefix: str, name: str) -> str:
    """A DNS label, distinct for distinct names: a tree's name may be 253 characters long and hold dots, and one
    volume name the API refuses (or two that coincide) would make every workspace pod invalid."""
    plain = f"{prefix}-{name}"
    if len(plain) <= 63 and "." not in plain:
        return plain
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{plain.replace('.', '-')[:52].rstrip('-')}-{digest}"


def workspace_pod(inputs: PodInputs) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": f"/home/{inputs.username}"},
        {"name": "USER", "value": inputs.username},
        {"name": "LABKEEPER_WORKSPACE", "value": inputs.workspace},
    ]
    if inputs.gpu_profile == "none":
        # the nvidia runtime would otherwise expose every GPU to a pod that asked for none
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    volumes: list[dict[str, Any]] = [
        {"name": "home", "hostPath": {"path": inputs.home_host_path, "type": "Directory"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": inputs.shm_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "home", "mountPath": f"/home/{inputs.username}"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for path in USER_DATABASE:
        name = f"host-{Path(path).name}"
        volumes.append({"name": name, "hostPath": {"path": path, "type": "File"}})
        mounts.append({"name": name, "mountPath": path, "readOnly": True})
    seen_env = {e["name"] for e in env}
    for prefix, group in (("cache", inputs.caches), ("models", inputs.model_stores), ("tool", inputs.toolchains)):
        for mount in group:
            vol = _volume_name(prefix, mount.name)
            volumes.append({"name": vol, "hostPath": {"path": mount.host_path, "type": "Directory"}})
            mounts.append({"name": vol, "mountPath": mount.host_path, "readOnly": not mount.writable})
            for key, value in mount.env:
                if key not in seen_env:
                    env.append({"name": key, "value": value})
                    seen_env.add(key)
    for key, value in inputs.extra_env:
        if key not in seen_env:
            env.append({"name": key, "value": value})
            seen_env.add(key)

    resources = {"cpu": inputs.cpu, "memory": inputs.memory, **gpu_limits(inputs.gpu_profile, inputs.gpu_count)}
    container: dict[str, Any] = {
        "name": "workspace",
        "image": inputs.image,
        "env": env,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": mounts,
        "workingDir": f"/home/{inputs.username}",
        # a run's output is a plain log that labctl run streams; a workspace keeps a terminal for its shell
        "stdin": not inputs.batch,
        "tty": not inputs.batch,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if inputs.command:
        container["command"] = list(inputs.command)
    if inputs.args:
        container["args"] = list(inputs.args)
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "Never" if inputs.batch else "Always",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        # the pause process is PID 1 and reaps orphans; an image's own process as PID 1 would ignore the
        # SIGTERM of a stop (no handler) and every stop would last the whole grace period
        "shareProcessNamespace": True,
        "terminationGracePeriodSeconds": inputs.grace_seconds,
        "securityContext": {
            "runAsUser": inputs.uid,
            "runAsGroup": inputs.gid,
            "supplementalGroups": sorted(set(inputs.supplemental_gids)),
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if inputs.priority_class:
        spec["priorityClassName"] = inputs.priority_class
    if inputs.runtime_class:
        spec["runtimeClassName"] = inputs.runtime_class
    if inputs.node_name:
        # admission chose the node and counted its device there: the scheduler may bind it nowhere else
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [inputs.node_name]}]}]}}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(inputs.workspace),
            "namespace": inputs.namespace,
            "labels": _labels(inputs, "workspace"),
            "ownerReferences": [inputs.owner],
        },
        "spec": spec,
    }
