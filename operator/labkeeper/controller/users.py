"""GPUUser → a person who can use the cluster: uid, namespace, RBAC, quota, credentials.

Level-based: a pass reads one frozen scope (the object parsed into the api model, one policy snapshot and her
entitlement under it), asks controller/user_decisions.py whether she is held, provisions what she should have
(applying only what differs from what this process last applied), and writes the status the decisions compute
once, only the fields that changed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api.names import OPERATOR_FINALIZER
from labkeeper.api.phases import UserState
from labkeeper.api.resources import GPUUserSpec
from labkeeper.controller.credentials import Credentials
from labkeeper.controller.failures import record_failure
from labkeeper.controller.policy import PolicyStore, UserEntitlement
from labkeeper.controller.uids import LedgerFull, UidLedger
from labkeeper.controller.user_decisions import (
    Access,
    UserScope,
    held,
    quota_counted,
    requeue_after,
    uid_unavailable,
    user_status,
)
from labkeeper.controller.user_decisions import host_provisioned as host_provisioned
from labkeeper.kube.client import Kube, is_conflict, owner_reference
from labkeeper.render import access as render

Body = dict[str, Any]
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

    def scope(self, user: Body) -> UserScope:
        policy = self.policy.current  # the one snapshot this pass decides on
        name = user["metadata"]["name"]
        spec = user.get("spec") or {}
        return UserScope(body=user, spec=GPUUserSpec.model_validate(spec), policy=policy,
                         entitlement=self.policy.entitlement(name, spec, policy), now=self.clock(),
                         require_host=self.require_host, system_namespace=self.credentials.namespace)

    def reconcile(self, user: Body) -> Outcome:
        meta = user["metadata"]
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            return self._finalize(user)
        if FINALIZER not in (meta.get("finalizers") or []):
            user = self.kube.patch("GPUUser", name, {"metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]}})
        scope = self.scope(user)
        hold = held(scope)
        if hold is not None:  # nothing new is provisioned meanwhile
            if hold.event:
                self.kube.event(user, "UnknownTier", hold.event, type_="Warning")
            self.kube.patch_status("GPUUser", user, hold.status)
            return Outcome()

        try:
            uid = int(scope.status.get("uid") or self.ledger.allocate(name, scope.spec.uid))
        except LedgerFull as err:
            self.kube.patch_status("GPUUser", user, uid_unavailable(scope, str(err)))
            return Outcome()

        group = None
        if scope.state == UserState.ACTIVE:
            user, incarnation = self._incarnation(user)
            group = render.access_group(name, incarnation)
        if scope.state == UserState.OFFBOARDED:
            self._remove_namespace_and_access(name)
        else:
            self._apply_children(user, scope.entitlement, group)

        if group is not None:
            creds = self.credentials.ensure(user, scope.now, group)
            access = Access(True, "RoleBinding and kubeconfig in place") if creds.ready \
                else Access(False, creds.message, 1.0)
        else:
            self.credentials.revoke(name)
            access = Access(False, f"user is {scope.state.value}: access removed")
        quota = (False, "") if scope.state == UserState.OFFBOARDED else self._quota_enforced(name, scope.entitlement)
        self.kube.patch_status("GPUUser", user, user_status(scope, uid, access, quota))
        return Outcome(requeue_after(scope, access, quota))

    # ---- children ---------------------------------------------------------------------------
    def _incarnation(self, user: Body) -> tuple[Body, str]:
        """This incarnation's id, recorded in the status before any certificate or binding names it; a fresh read
        under the resourceVersion, so that a stale body can never make a second one."""
        name = user["metadata"]["name"]
        for _attempt in range(5):
            known = (user.get("status") or {}).get("incarnation")
            if known:
                return user, str(known)
            fresh = self.kube.get("GPUUser", name) or user
            known = (fresh.get("status") or {}).get("incarnation")
            if known:
                return fresh, str(known)
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

    def _apply_children(self, user: Body, entitlement: UserEntitlement, group: str | None) -> None:
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
        quota = self.kube.get("ResourceQuota", render.QUOTA_NAME, render.namespace_for(name))
        return quota_counted(quota, render.resource_quota(entitlement.access)["spec"]["hard"])

    def forget(self, name: str) -> None:
        self._applied.pop(name, None)

    # ---- a pass that failed -----------------------------------------------------------------------------------
    def record_failure(self, user: Body, err: Exception) -> None:
        """A pass that raised leaves Reconciled=False with its error and a Warning Event (controller/failures.py)."""
        record_failure(self.kube, "GPUUser", user, err, self.clock())

    # ---- deletion ---------------------------------------------------------------------------
    def _finalize(self, user: Body) -> Outcome:
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
