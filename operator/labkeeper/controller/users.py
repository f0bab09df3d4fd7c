"""GPUUser → a person who can use the cluster: uid, namespace, RBAC, quota, credentials.

Level-based: every call computes the whole desired state from the object and the policy, applies
what differs from what this process last applied, and writes status only when it changed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from labkeeper.api.names import OPERATOR_FINALIZER, kubeconfig_secret
from labkeeper.controller.credentials import Credentials
from labkeeper.controller.policy import PolicyStore, UserEntitlement
from labkeeper.controller.uids import LedgerFull, UidLedger
from labkeeper.kube.client import Kube, condition, is_conflict, owner_reference
from labkeeper.render import access as render

FINALIZER = OPERATOR_FINALIZER


@dataclass
class Outcome:
    """What the caller should do next: nothing, or look again after `requeue_after` seconds."""

    requeue_after: float | None = None


class UserReconciler:
    def __init__(self, kube: Kube, policy: PolicyStore, ledger: UidLedger, credentials: Credentials,
                 clock: Callable[[], dt.datetime], *, require_host: bool = True) -> None:
        self.kube = kube
        self.policy = policy
        self.ledger = ledger
        self.credentials = credentials
        self.clock = clock
        self.require_host = require_host
        self._applied: dict[str, str] = {}  # user → fingerprint of the children last applied by this process

    def reconcile(self, user: dict) -> Outcome:
        meta = user["metadata"]
        name = meta["name"]
        spec = user.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return self._finalize(user)
        if FINALIZER not in (meta.get("finalizers") or []):
            user = self.kube.patch("GPUUser", name, {"metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]}})
        status = user.get("status") or {}
        conditions = status.get("conditions") or []
        now = self.clock()
        unknown = self._unknown_tier(spec)
        if unknown:
            # held here, not refused by an admission policy: the tiers live in YAML text that CEL cannot read, and
            # a tier can leave the policy after its users were admitted; nothing new is provisioned meanwhile
            ready = next((c for c in conditions if c.get("type") == "Ready"), {})
            if (ready.get("reason"), ready.get("message")) != ("UnknownTier", unknown):
                self.kube.event(user, "UnknownTier", unknown, type_="Warning")
            self._write_status(user, {"phase": "Failed", "observedGeneration": meta.get("generation"), "conditions": [
                condition("Ready", False, "UnknownTier", unknown, conditions, now),
                *[c for c in conditions if c.get("type") != "Ready"]]})
            return Outcome()

        try:
            uid = status.get("uid") or self.ledger.allocate(name, spec.get("uid"))
        except LedgerFull as err:
            self._write_status(user, {"phase": "Failed", "conditions": [
                condition("Ready", False, "UidUnavailable", str(err), conditions, now)]})
            return Outcome()

        entitlement = self.policy.entitlement(name, spec)
        state = spec.get("state", "Active")
        group = None
        if state == "Active":
            user, incarnation = self._incarnation(user)
            group = render.access_group(name, incarnation)
        if state == "Offboarded":
            self._remove_namespace_and_access(name)
        else:
            self._apply_children(user, entitlement, group)

        access_ok, access_msg, requeue = True, "RoleBinding and kubeconfig in place", None
        if group is not None:
            creds = self.credentials.ensure(user, now, group)
            if not creds.ready:
                access_ok, access_msg, requeue = False, creds.message, 1.0
        else:
            self.credentials.revoke(name)
            access_ok, access_msg = False, f"user is {state}: access removed"

        if state == "Offboarded":
            quota_ok, quota_msg = False, "offboarded: her namespace, workspaces and quota are removed"
        else:
            quota_ok, quota_msg = self._quota_enforced(name, entitlement)
        if not quota_ok and state != "Offboarded":
            requeue = 1.0
        host_ok, host_msg = host_provisioned(status)
        host_ready = host_ok or not self.require_host
        if state == "Offboarded":
            phase = "Offboarded"
        elif state == "Suspended":
            phase = "Suspended"
        elif access_ok and host_ready and quota_ok:
            phase = "Ready"
        else:
            phase = "Provisioning"
        ready_reason = "Ready" if phase == "Ready" else ("Waiting" if phase == "Provisioning" else state)
        ready_msg = "user can log in and use the cluster" if phase == "Ready" else (
            access_msg if not access_ok else (quota_msg if not quota_ok else host_msg))
        if phase == "Offboarded":
            ready_msg = (f"offboarded: namespace, workspaces and access removed, data policy "
                         f"{spec.get('dataPolicy', 'Keep')}; this GPUUser is kept as the record and uid {uid} "
                         f"stays reserved")
        desired = {
            "uid": uid,
            "gid": uid,
            "namespace": render.namespace_for(name) if state != "Offboarded" else None,
            "home": f"/home/{name}",
            "phase": phase,
            "kubeconfigSecret": f"{self.credentials.namespace}/{kubeconfig_secret(name)}" if state == "Active" else None,
            # an offboarded user's incarnation ends: if she is ever re-added, she gets a new one
            **({"incarnation": None} if state == "Offboarded" else {}),
            "effectiveLimits": entitlement.status_view(),
            "observedGeneration": meta.get("generation"),
            "conditions": [
                condition("Ready", phase == "Ready", ready_reason, ready_msg, conditions, now),
                condition("HostProvisioned", host_ok, "AgentReported" if host_ok else "Waiting", host_msg,
                          conditions, now),
                condition("AccessGranted", access_ok, "Granted" if access_ok else "NotGranted", access_msg,
                          conditions, now),
                condition("QuotaApplied", quota_ok, "Applied" if quota_ok else (
                    "Offboarded" if state == "Offboarded" else "Waiting"),
                          f"tier {entitlement.tier}: {entitlement.summary()}" if quota_ok else quota_msg,
                          conditions, now),
            ],
        }
        self._write_status(user, desired)
        return Outcome(requeue)

    def _unknown_tier(self, spec: dict) -> str | None:
        """Why an Active user's tier cannot be used, or None; suspended and offboarded users go ahead regardless."""
        policy = self.policy.current
        tier = spec.get("tier") or policy.default_tier
        if spec.get("state", "Active") != "Active" or tier in policy.tiers:
            return None
        return (f"spec.tier {tier!r} is not a tier of the lab policy (ConfigMap labkeeper-system/labkeeper-policy); "
                f"valid: {', '.join(sorted(policy.tiers))}. Nothing is provisioned until the tier exists or "
                f"spec.tier names one")

    # ---- children ---------------------------------------------------------------------------
    def _incarnation(self, user: dict) -> tuple[dict, str]:
        """This incarnation's id, recorded in the status before any certificate or binding names it; a fresh read
        under the resourceVersion, so that a stale body can never make a second one."""
        name = user["metadata"]["name"]
        for _attempt in range(5):
            known = (user.get("status") or {}).get("incarnation")
            if known:
                return user, known
            fresh = self.kube.get("GPUUser", name) or user
            known = (fresh.get("status") or {}).get("incarnation")
            if known:
                return fresh, known
            try:
                user = self.kube.patch("GPUUser", name, {
                    "metadata": {"resourceVersion": fresh["metadata"]["resourceVersion"]},
                    "status": {"incarnation": secrets.token_hex(4)}}, subresource="status")
            except ApiException as err:
                if not is_conflict(err):
                    raise
                user = fresh
        raise RuntimeError(f"GPUUser {name}: status kept changing while recording her incarnation")

    def _remove_namespace_and_access(self, name: str) -> None:
        """Offboarded: her namespace goes, and with it her workspaces, pods, holds, bindings and quota; the GPUUser
        stays as the record and her uid stays reserved."""
        if self._applied.get(name) == "offboarded":
            return
        self.kube.delete("Namespace", render.namespace_for(name))
        self.kube.delete("ClusterRoleBinding", render.self_reader_name(name))
        self.kube.delete("ClusterRole", render.self_reader_name(name))
        self._applied[name] = "offboarded"

    def _apply_children(self, user: dict, entitlement: UserEntitlement, group: str | None) -> None:
        """Namespace, role, quota and her own-GPUUser reader; the bindings only while she is active (`group`)."""
        name = user["metadata"]["name"]
        owner = owner_reference(user, block=False)
        grant = entitlement.access
        active = group is not None
        children = [
            render.namespace(name, owner),
            render.user_role(name),
            render.resource_quota(grant),
            render.priority_quota(grant),
            render.limit_range(grant),
            *render.self_reader_role(name, group or "", owner),
        ]
        binding = render.user_role_binding(name, group or "")
        fingerprint = hashlib.sha256(json.dumps([children, binding, active], sort_keys=True).encode()).hexdigest()
        if self._applied.get(name) == fingerprint:
            return
        for child in children:
            if child["kind"] == "ClusterRoleBinding" and not active:
                self.kube.delete("ClusterRoleBinding", child["metadata"]["name"])
                continue
            self.kube.apply(child)
        if active:
            self.kube.apply(binding)
        else:
            self.kube.delete("RoleBinding", binding["metadata"]["name"], binding["metadata"]["namespace"])
        self._applied[name] = fingerprint

    def _quota_enforced(self, name: str, entitlement: UserEntitlement) -> tuple[bool, str]:
        """The API refuses every create in the namespace until the quota controller has counted it."""
        quota = self.kube.get("ResourceQuota", render.QUOTA_NAME, render.namespace_for(name))
        want = render.resource_quota(entitlement.access)["spec"]["hard"]
        qstatus = (quota or {}).get("status") or {}
        counted = {k for k in (qstatus.get("hard") or {}) if k in (qstatus.get("used") or {})}
        missing = sorted(k for k in want if k not in counted)
        if missing:
            return False, f"waiting for the quota controller to count {', '.join(missing[:3])}"
        return True, ""

    def forget(self, name: str) -> None:
        self._applied.pop(name, None)

    # ---- status -----------------------------------------------------------------------------
    def _write_status(self, user: dict, desired: dict) -> None:
        self.kube.patch_status("GPUUser", user, desired)

    # ---- deletion ---------------------------------------------------------------------------
    def _finalize(self, user: dict) -> Outcome:
        meta = user["metadata"]
        name = meta["name"]
        finalizers = meta.get("finalizers") or []
        self.kube.delete("Namespace", render.namespace_for(name))
        self.kube.delete("ClusterRoleBinding", render.self_reader_name(name))
        self.kube.delete("ClusterRole", render.self_reader_name(name))
        self.credentials.revoke(name)
        self.forget(name)
        if FINALIZER in finalizers:
            remaining = [f for f in finalizers if f != FINALIZER]
            # the uid stays in the ledger: it is never handed out again
            self.kube.patch("GPUUser", name, {"metadata": {"finalizers": remaining,
                                                          "resourceVersion": meta["resourceVersion"]}})
        return Outcome()


def host_provisioned(status: dict) -> tuple[bool, str]:
    nodes = status.get("nodes") or []
    if not nodes:
        return False, "no node agent has provisioned this user yet"
    pending = [n for n in nodes if n.get("state") != "Provisioned"]
    if pending:
        return False, "; ".join(f"{n.get('node')}: {n.get('state')} {n.get('message', '')}".strip() for n in pending)
    return True, f"provisioned on {', '.join(sorted(n.get('node', '?') for n in nodes))}"
