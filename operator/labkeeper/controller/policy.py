"""The lab policy as the operator sees it: the last valid ConfigMap, never a broken one."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from labkeeper.api import policy as api_policy
from labkeeper.kube.client import Kube, api_error_message
from labkeeper.render import access as render

log = logging.getLogger("labkeeper.policy")

POLICY_CONFIGMAP = "labkeeper-policy"
POLICY_KEY = "policy.yaml"


@dataclass(frozen=True)
class UserEntitlement:
    tier: str
    access: render.Access
    limits: dict  # field → {"value", "source"}
    allowed_images: tuple[str, ...] = ()

    def status_view(self) -> dict:
        return self.limits

    def summary(self) -> str:
        a = self.access
        return (f"{a.max_gpu_equivalents:g} GPU equivalents, {a.cpu} CPU, {a.memory} memory, "
                f"{a.max_workspaces} running workspaces")


class PolicyStore:
    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self._lock = threading.Lock()
        self.current: api_policy.LabPolicy = api_policy.LabPolicy()
        self.digest = ""

    def refresh(self) -> None:
        try:
            body = self.kube.get("ConfigMap", POLICY_CONFIGMAP, self.namespace)
        except ApiException as err:
            log.warning("cannot read the policy ConfigMap: %s; using defaults", api_error_message(err))
            return
        if body is not None:
            self.load_configmap(body)

    def load_configmap(self, body: dict) -> bool:
        """Adopt the ConfigMap's policy if it is valid; returns whether the policy in force changed."""
        text = (body.get("data") or {}).get(POLICY_KEY, "")
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self.digest:
            return False
        where = f"ConfigMap {self.namespace}/{POLICY_CONFIGMAP} key {POLICY_KEY}"
        try:
            policy = api_policy.LabPolicy.model_validate(yaml.safe_load(text) or {})
        except yaml.YAMLError as err:
            self._refuse(body, f"{where} is not valid YAML: {err}")
            return False
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5])
            self._refuse(body, f"{where} is invalid: {problems}")
            return False
        with self._lock:
            self.current, self.digest = policy, digest
        self.kube.event(body, "PolicyApplied", f"lab policy from {where} is in force")
        return True

    def _refuse(self, body: dict, message: str) -> None:
        log.error("%s; the last good policy stays in force", message)
        self.kube.event(body, "InvalidPolicy", f"{message}; the last good policy stays in force", type_="Warning")
        # remember the broken text too, so the same bad ConfigMap is reported once, not on every event
        self.digest = hashlib.sha256(((body.get("data") or {}).get(POLICY_KEY, "")).encode()).hexdigest()

    def uid_range(self) -> tuple[int, int]:
        r = self.current.uid_range
        return r.start, r.end

    def entitlement(self, username: str, spec: dict) -> UserEntitlement:
        policy = self.current
        tier = spec.get("tier") or policy.default_tier
        limits = policy.effective_limits(username, tier, spec.get("limits") or {})
        values = {name: item.value for name, item in limits.items()}
        grant = render.Access(
            username=username,
            tier=tier,
            max_gpu_equivalents=float(values["maxGpuEquivalents"]),
            cpu=str(values["cpu"]),
            memory=str(values["memory"]),
            max_workspaces=int(values["maxWorkspaces"]),
            allowed_profiles=tuple(values.get("allowedProfiles") or policy.gpu_weights.keys()),
            gpu_weights=dict(policy.gpu_weights),
        )
        view = {name: {"value": _text(item.value), "source": item.source} for name, item in limits.items()}
        # lab-wide, but the user reads it here (not the policy ConfigMap): labctl keepalive refuses beyond it
        view["keepAliveMax"] = {"value": api_policy.format_duration(policy.keep_alive_max), "source": "default"}
        return UserEntitlement(tier, grant, view, tuple(values.get("allowedImages") or ()))

    def priority_classes(self) -> list[dict]:
        policy = self.current
        classes = [render.priority_class(
            render.HOLD_PRIORITY_CLASS, policy.hold_priority, preempt=False,
            description="labkeeper: a stopped workspace's GPU held for a quick restart")]
        for name, tier in sorted(policy.tiers.items()):
            classes.append(render.priority_class(
                render.priority_class_for(name), tier.priority, preempt=tier.preempt,
                description=f"labkeeper: workspaces of tier {name}"))
        return classes

    def apply_priority_classes(self) -> None:
        for pc in self.priority_classes():
            existing = self.kube.get("PriorityClass", pc["metadata"]["name"])
            if existing and (existing.get("value") != pc["value"]
                             or existing.get("preemptionPolicy") != pc["preemptionPolicy"]):
                # value and preemptionPolicy are immutable: replace the class
                self.kube.delete("PriorityClass", pc["metadata"]["name"])
                existing = None
            if existing is None or any(existing.get(k) != pc[k] for k in ("description",)):
                self.kube.apply(pc)


def _text(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
