"""What one pass over a GPUUser decides, as pure functions of a frozen scope: whether she is held (a tier the
policy lacks), what she gets in the API (her namespace, role, quota and, while she is active, her bindings and
kubeconfig), and the status that says so. controller/users.py reads the scope, does the provisioning these
decisions ask for (uid ledger, server-side apply, certificates) and writes the status once."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labkeeper.api import policy as api_policy
from labkeeper.api.conditions import (
    ACCESS_GRANTED,
    HOST_PROVISIONED,
    QUOTA_APPLIED,
    READY,
    RECONCILED,
    condition,
    find,
)
from labkeeper.api.names import kubeconfig_secret, namespace_for
from labkeeper.api.phases import UserPhase, UserReason, UserState
from labkeeper.api.resources import GPUUserSpec
from labkeeper.controller.policy import UserEntitlement

Body = dict[str, Any]


@dataclass(frozen=True)
class UserScope:
    """One GPUUser as a pass sees it: the object, its spec parsed into the api model, one policy snapshot and
    her entitlement under it, the clock."""

    body: Body
    spec: GPUUserSpec
    policy: api_policy.LabPolicy
    entitlement: UserEntitlement
    now: dt.datetime
    require_host: bool = True
    system_namespace: str = "labkeeper-system"

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def status(self) -> Body:
        return dict(self.body.get("status") or {})

    @property
    def generation(self) -> int | None:
        generation = self.body["metadata"].get("generation")
        return int(generation) if generation is not None else None

    @property
    def state(self) -> UserState:
        return UserState(self.spec.state)


@dataclass(frozen=True)
class Access:
    """What the credentials step found: her kubeconfig works (or why not), and when to look again."""

    granted: bool
    message: str
    requeue_after: float | None = None


@dataclass(frozen=True)
class Held:
    """She is held: nothing is provisioned. `status` is the whole write; `event` the Warning to post, once."""

    status: Body
    event: str | None


# what others write into her status that a pass over her never reads: her usage (controller/usage.py), her
# accounting fold (controller/accounting.py), and of each node agent's report its measure of her home
OTHERS_STATUS = ("usage", "accounting")
AGENT_MEASURES = ("homeBytes",)
SERVER_METADATA = ("resourceVersion", "managedFields")


def pass_input(user: Mapping[str, Any]) -> str:
    """All of her object that a pass reads, as one comparable text: a watch event whose text equals the last
    passed one's changed only what others measure of her (or the API server's bookkeeping), and needs no pass."""
    meta = {k: v for k, v in (user.get("metadata") or {}).items() if k not in SERVER_METADATA}
    status = {k: v for k, v in (user.get("status") or {}).items() if k not in OTHERS_STATUS}
    if isinstance(status.get("nodes"), list):
        status["nodes"] = [{k: v for k, v in node.items() if k not in AGENT_MEASURES} if isinstance(node, dict)
                           else node for node in status["nodes"]]
    return json.dumps([meta, user.get("spec"), status], sort_keys=True, default=str)


def unknown_tier(spec: GPUUserSpec, policy: api_policy.LabPolicy) -> str | None:
    """Why an Active user's tier cannot be used, or None; suspended and offboarded users go ahead regardless."""
    tier = spec.tier or policy.default_tier
    if UserState(spec.state) != UserState.ACTIVE or tier in policy.tiers:
        return None
    return (f"spec.tier {tier!r} is not a tier of the lab policy (ConfigMap labkeeper-system/labkeeper-policy); "
            f"valid: {', '.join(sorted(policy.tiers))}. Nothing is provisioned until the tier exists or "
            f"spec.tier names one")


def held(scope: UserScope) -> Held | None:
    """An Active user whose tier the policy lacks is held here, not refused by an admission policy: the tiers live
    in YAML text that CEL cannot read, and a tier can leave the policy after its users were admitted."""
    why = unknown_tier(scope.spec, scope.policy)
    if why is None:
        return None
    conditions = scope.status.get("conditions") or []
    ready = find(conditions, READY) or {}
    event = why if (ready.get("reason"), ready.get("message")) != (UserReason.UNKNOWN_TIER, why) else None
    status = {"phase": UserPhase.FAILED, "observedGeneration": scope.generation, "conditions": [
        condition(READY, False, UserReason.UNKNOWN_TIER, why, conditions, scope.now,
                  observed_generation=scope.generation),
        *[c for c in conditions if c.get("type") != READY]]}
    return Held(status, event)


def uid_unavailable(scope: UserScope, why: str) -> Body:
    conditions = scope.status.get("conditions") or []
    return {"phase": UserPhase.FAILED, "conditions": [
        condition(READY, False, UserReason.UID_UNAVAILABLE, why, conditions, scope.now,
                  observed_generation=scope.generation)]}


def quota_counted(quota: Mapping[str, Any] | None, want: Mapping[str, Any]) -> tuple[bool, str]:
    """The API refuses every create in her namespace until the quota controller has counted each resource."""
    qstatus = (quota or {}).get("status") or {}
    counted = {k for k in (qstatus.get("hard") or {}) if k in (qstatus.get("used") or {})}
    missing = sorted(k for k in want if k not in counted)
    if missing:
        return False, f"waiting for the quota controller to count {', '.join(missing[:3])}"
    return True, ""


def host_provisioned(status: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Whether every node agent made her account and home; None (Unknown) while no agent has reported."""
    nodes: Sequence[Mapping[str, Any]] = status.get("nodes") or []
    if not nodes:
        return None, "no node agent has provisioned this user yet"
    pending = [n for n in nodes if n.get("state") != "Provisioned"]
    if pending:
        return False, "; ".join(f"{n.get('node')}: {n.get('state')} {n.get('message', '')}".strip() for n in pending)
    return True, f"provisioned on {', '.join(sorted(n.get('node', '?') for n in nodes))}"


def user_status(scope: UserScope, uid: int, access: Access, quota: tuple[bool, str]) -> Body:
    """The whole status of a user this pass provisioned (or suspended, or offboarded), one setter per condition."""
    state, name, spec, now = scope.state, scope.name, scope.spec, scope.now
    conditions = scope.status.get("conditions") or []
    entitlement, generation = scope.entitlement, scope.generation
    offboarded = state == UserState.OFFBOARDED
    quota_ok, quota_msg = (False, "offboarded: her namespace, workspaces and quota are removed") if offboarded \
        else quota
    host_ok, host_msg = host_provisioned(scope.status)
    host_ready = bool(host_ok) or not scope.require_host
    if state != UserState.ACTIVE:
        phase = UserPhase(state.value)
    elif access.granted and host_ready and quota_ok:
        phase = UserPhase.READY
    else:
        phase = UserPhase.PROVISIONING
    ready_reason = "Ready" if phase == UserPhase.READY else (
        UserReason.WAITING if phase == UserPhase.PROVISIONING else state.value)
    ready_msg = "user can log in and use the cluster" if phase == UserPhase.READY else (
        access.message if not access.granted else (quota_msg if not quota_ok else host_msg))
    if offboarded:
        ready_msg = (f"offboarded: namespace, workspaces and access removed, data policy {spec.data_policy}; this "
                     f"GPUUser is kept as the record and uid {uid} stays reserved")
    quota_reason = "Applied" if quota_ok else ("Offboarded" if offboarded else "Waiting")
    out: Body = {
        "uid": uid,
        "gid": uid,
        "namespace": namespace_for(name) if not offboarded else None,
        "home": f"/home/{name}",
        "phase": phase,
        "kubeconfigSecret": f"{scope.system_namespace}/{kubeconfig_secret(name)}" if state == UserState.ACTIVE else None,
        # an offboarded user's incarnation ends: if she is ever re-added, she gets a new one
        **({"incarnation": None} if offboarded else {}),
        "effectiveLimits": entitlement.status_view(),
        "observedGeneration": generation,
        "conditions": [
            condition(READY, phase == UserPhase.READY, ready_reason, ready_msg, conditions, now,
                      observed_generation=generation),
            condition(HOST_PROVISIONED, host_ok, "AgentReported" if host_ok else UserReason.WAITING, host_msg,
                      conditions, now, observed_generation=generation),
            condition(ACCESS_GRANTED, access.granted, "Granted" if access.granted else "NotGranted", access.message,
                      conditions, now, observed_generation=generation),
            condition(QUOTA_APPLIED, quota_ok, quota_reason,
                      f"tier {entitlement.tier}: {entitlement.summary()}" if quota_ok else quota_msg,
                      conditions, now, observed_generation=generation),
        ],
    }
    if find(conditions, RECONCILED) is not None:  # a failed pass said so; this one did not fail
        out["conditions"].append(condition(RECONCILED, True, "Reconciled", "the last pass succeeded", conditions,
                                           now, observed_generation=generation))
    return out


def requeue_after(scope: UserScope, access: Access, quota: tuple[bool, str]) -> float | None:
    """Look again soon while her kubeconfig or her quota is not there yet; otherwise only on a change."""
    if scope.state != UserState.OFFBOARDED and not quota[0]:
        return 1.0
    return access.requeue_after
