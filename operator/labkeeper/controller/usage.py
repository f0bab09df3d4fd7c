"""GPUUser.status.usage from what labkeeper made in her namespace, counted the way her caps are enforced: GPU
equivalents of every pod that still holds its devices (not terminating, not finished) plus the device a stopped
workspace holds after its stop (a hold recorded in its status), and her workspace pods. Home bytes are per node,
in status.nodes[].homeBytes, written by each node's agent; this write never waits for them, so each change is one
status write."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api import admission as api_admission
from labkeeper.controller.policy import PolicyStore
from labkeeper.kube.client import Kube
from labkeeper.render.access import LABEL_MANAGED, MANAGED_BY, namespace_for
from labkeeper.render.pod import LABEL_ROLE, LABEL_WORKSPACE

MANAGED_PODS = f"{LABEL_MANAGED}={MANAGED_BY}"


def usage_of(pods: list[dict[str, Any]], workspaces: list[dict[str, Any]], weights: dict[str, float], now: dt.datetime) -> dict[str, Any]:
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    gpus = sum(api_admission.equivalents(r, n, weights) for p in live for r, n in api_admission.pod_devices(p))
    with_pod = {(p["metadata"].get("labels") or {}).get(LABEL_WORKSPACE) for p in live}
    for ws in workspaces:
        held = api_admission.hold_claim(ws, now)
        if held is not None and ws["metadata"]["name"] not in with_pod:
            gpus += api_admission.equivalents(held.resource, held.count, weights)
    return {
        "gpuEquivalents": round(gpus, 4),
        "workspaces": sum(1 for p in live if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == "workspace"),
    }


class HoldSightings:
    """The hold each Workspace's status recorded when the watch last showed it: of a Workspace, her usage counts
    nothing else (its pod's events count the rest), so a status write that moved only a queue place, a message or
    a meter costs no usage pass (two lists and a read)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[Any, ...]] = {}

    def changed(self, namespace: str, name: str, status: Mapping[str, Any] | None) -> bool:
        """Whether this sighting's hold differs from the last one's; `status` None: the Workspace is gone."""
        key = (namespace, name)
        if status is None:
            self._seen.pop(key, None)
            return True
        held = tuple(status.get(field) for field in api_admission.HOLD_FIELDS)
        if self._seen.get(key) == held:
            return False
        self._seen[key] = held
        return True


class UserStatusWriter:
    """A writer of one part of a GPUUser's status from what her namespace holds (her usage, her accounting)."""

    def __init__(self, kube: Kube, policy: PolicyStore, clock: Callable[[], dt.datetime]) -> None:
        self.kube = kube
        self.policy = policy
        self.clock = clock

    def staying_user(self, username: str) -> dict[str, Any] | None:
        """Her GPUUser as it is now; None once it is gone or being deleted (there is nothing left to write)."""
        user = self.kube.get("GPUUser", username)
        return None if user is None or user["metadata"].get("deletionTimestamp") else user


class UsageWriter(UserStatusWriter):
    def refresh(self, username: str) -> bool:
        """Write her usage if it changed; returns whether a write was made."""
        user = self.staying_user(username)
        if user is None:
            return False
        namespace = namespace_for(username)
        pods = self.kube.list("Pod", namespace, label_selector=MANAGED_PODS)
        workspaces = self.kube.list("Workspace", namespace)
        usage = usage_of(pods, workspaces, self.policy.current.gpu_weights, self.clock())
        current = (user.get("status") or {}).get("usage") or {}
        if all(current.get(key) == value for key, value in usage.items()):
            return False
        try:
            self.kube.patch("GPUUser", username, {"status": {"usage": usage}}, subresource="status")
        except ApiException as err:
            if err.status != 404:
                raise
            return False
        return True
