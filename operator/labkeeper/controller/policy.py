"""The lab policy as the operator sees it: the last valid ConfigMap, never a broken one."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api import policy as api_policy
from labkeeper.api.units import format_duration, parse_duration
from labkeeper.kube.client import Kube, api_error_message
from labkeeper.render import access as render

log = logging.getLogger("labkeeper.policy")

POLICY_CONFIGMAP = api_policy.POLICY_CONFIGMAP
POLICY_KEY = api_policy.POLICY_KEY
LAST_GOOD_CONFIGMAP = api_policy.LAST_GOOD_CONFIGMAP


@dataclass(frozen=True)
class UserEntitlement:
    tier: str
    access: render.Access
    limits: dict[str, Any]  # field → {"value", "source"}
    allowed_images: tuple[str, ...] = ()
    idle_timeout: dt.timedelta | None = None  # the limits parsed once, for the reconcilers
    max_runtime: dt.timedelta | None = None

    def status_view(self) -> dict[str, Any]:
        return self.limits

    def summary(self) -> str:
        a = self.access
        return (f"{a.max_gpu_equivalents:g} GPU equivalents, {a.cpu} CPU, {a.memory} memory, "
                f"{a.max_workspaces} running workspaces")


class PolicyStore(api_policy.PolicyKeeper):
    """The operator's policy: `api.policy.PolicyKeeper`'s rule, fed from the ConfigMap, said in Events on it."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        super().__init__(component="the operator")
        self.kube = kube
        self.namespace = namespace
        self._kept: str | None = None  # the text last written to the last-good copy by this process

    def refresh(self) -> bool:
        """Reads the ConfigMap now; returns whether the policy in force changed. A process that starts while the
        ConfigMap is refused runs on the last good copy the operator kept, not on the built-in defaults."""
        try:
            body = self.kube.get("ConfigMap", POLICY_CONFIGMAP, self.namespace)
        except ApiException as err:
            log.warning("cannot read the policy ConfigMap: %s; the policy in force stays", api_error_message(err))
            return False
        return self.load_configmap(body) if body is not None else False

    def load_configmap(self, body: dict[str, Any]) -> bool:
        """Adopts the ConfigMap's policy if the models accept it; returns whether the policy in force changed."""
        text = (body.get("data") or {}).get(POLICY_KEY)
        outcome = self.offer(text, f"ConfigMap {self.namespace}/{POLICY_CONFIGMAP} key {POLICY_KEY}")
        if self.paused:
            outcome = self._recover(outcome)
        self._say(body, outcome)
        if text is not None and self.refused is None:
            self._keep(text)
        return outcome.changed

    def _recover(self, refusal: api_policy.PolicyOutcome) -> api_policy.PolicyOutcome:
        """Started on a refused ConfigMap: the last good copy is what the lab ran on; the refusal is said too."""
        try:
            copy = self.kube.get("ConfigMap", LAST_GOOD_CONFIGMAP, self.namespace)
        except ApiException as err:
            log.warning("cannot read %s: %s", LAST_GOOD_CONFIGMAP, api_error_message(err))
            return refusal
        recovered = self.recover((copy or {}).get("data", {}).get(POLICY_KEY),
                                 f"ConfigMap {self.namespace}/{LAST_GOOD_CONFIGMAP}")
        return recovered if recovered.reason else refusal

    def _say(self, body: dict[str, Any], outcome: api_policy.PolicyOutcome) -> None:
        if outcome.reason:
            (log.error if outcome.warning else log.info)("%s", outcome.message)
            self.kube.event({"apiVersion": "v1", "kind": "ConfigMap", **body}, outcome.reason, outcome.message,
                            type_="Warning" if outcome.warning else "Normal")

    def _keep(self, text: str) -> None:
        """The text in force is kept in the last-good copy (a server-side apply: no write when it is the same)."""
        if text == self._kept:
            return
        try:
            self.kube.apply(api_policy.last_good_configmap(text, self.namespace))
        except ApiException as err:  # the next valid text or the next start tries again
            log.warning("cannot keep the last good policy in %s: %s", LAST_GOOD_CONFIGMAP, api_error_message(err))
            return
        self._kept = text

    def uid_range(self) -> tuple[int, int]:
        r = self.current.uid_range
        return r.start, r.end

    def entitlement(self, username: str, spec: dict[str, Any],
                    policy: api_policy.LabPolicy | None = None) -> UserEntitlement:
        """Under `policy`, one snapshot a whole pass decides on; the policy in force if none is given."""
        policy = policy or self.current
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
        view["keepAliveMax"] = {"value": format_duration(policy.keep_alive_max), "source": "default"}
        return UserEntitlement(tier, grant, view, tuple(values.get("allowedImages") or ()),
                               idle_timeout=_duration(values.get("idleTimeout")),
                               max_runtime=_duration(values.get("maxRuntime")))

    def priority_classes(self) -> list[dict[str, Any]]:
        policy = self.current
        classes = [render.priority_class(
            render.HOLD_PRIORITY_CLASS, policy.hold_priority, preempt=False,
            description="labkeeper: a stopped workspace's GPU held for a quick restart")]
        for name, tier in sorted(policy.tiers.items()):
            classes.append(render.priority_class(
                render.priority_class_for(name), tier.priority, preempt=tier.preempt,
                description=f"labkeeper: workspaces of tier {name}"))
        return classes

    def apply_priority_classes(self) -> int:
        """Makes each tier's PriorityClass and the hold class match the policy; returns how many there are."""
        classes = self.priority_classes()
        for pc in classes:
            existing = self.kube.get("PriorityClass", pc["metadata"]["name"])
            if existing and (existing.get("value") != pc["value"]
                             or existing.get("preemptionPolicy") != pc["preemptionPolicy"]):
                # value and preemptionPolicy are immutable: replace the class
                self.kube.delete("PriorityClass", pc["metadata"]["name"])
                existing = None
            if existing is None or any(existing.get(k) != pc[k] for k in ("description",)):
                self.kube.apply(pc)
        return len(classes)


def _duration(value: object) -> dt.timedelta | None:
    return parse_duration(str(value)) if value not in (None, "") else None


def _text(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
