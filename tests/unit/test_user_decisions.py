"""What the GPUUser reconciler decides, as tables of scopes: held on an unknown tier, Ready once access, quota
and host are there, and what suspension and offboarding leave. No API server."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from labkeeper.api.policy import load_policy
from labkeeper.api.resources import GPUUserSpec, GPUUserStatus
from labkeeper.controller.policy import PolicyStore
from labkeeper.controller.user_decisions import (
    Access,
    UserScope,
    held,
    host_provisioned,
    pass_input,
    quota_counted,
    requeue_after,
    user_status,
)

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
POLICY = load_policy("tiers:\n  student: {priority: 10000}\n  faculty: {priority: 30000, preempt: true}\n", "test")
AGENT = [{"node": "n1", "state": "Provisioned"}]
GRANTED = Access(True, "RoleBinding and kubeconfig in place")
COUNTED = (True, "")


def scope(state: str = "Active", tier: str = "student", status: dict[str, Any] | None = None, *,
          require_host: bool = True) -> UserScope:
    body = {"metadata": {"name": "alice", "generation": 4}, "spec": {"tier": tier, "state": state},
            "status": status or {}}
    entitlement = PolicyStore(None, "labkeeper-system").entitlement("alice", body["spec"], POLICY)  # type: ignore[arg-type]
    return UserScope(body, GPUUserSpec.model_validate(body["spec"]), POLICY, entitlement, T0,
                     require_host=require_host)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_tier_the_policy_lacks_holds_her_with_one_warning():
    first = held(scope(tier="ta"))
    assert first is not None and first.status["phase"] == "Failed"
    assert first.event is not None and "spec.tier 'ta' is not a tier of the lab policy" in first.event
    assert conditions(first.status)["Ready"] == ("False", "UnknownTier")
    again = held(scope(tier="ta", status=first.status))
    assert again is not None and again.event is None  # said once, not on every pass


@pytest.mark.parametrize("state", ["Suspended", "Offboarded"])
def test_a_user_who_is_not_active_is_never_held_for_her_tier(state):
    assert held(scope(state, tier="ta")) is None
    assert held(scope()) is None


@pytest.mark.parametrize(("access", "quota", "nodes", "require_host", "phase", "why"), [
    (GRANTED, COUNTED, AGENT, True, "Ready", "user can log in and use the cluster"),
    (Access(False, "waiting for the CSR to be signed", 1.0), COUNTED, AGENT, True, "Provisioning",
     "waiting for the CSR to be signed"),
    (GRANTED, (False, "waiting for the quota controller to count pods"), AGENT, True, "Provisioning",
     "waiting for the quota controller to count pods"),
    (GRANTED, COUNTED, [], True, "Provisioning", "no node agent has provisioned this user yet"),
    (GRANTED, COUNTED, [], False, "Ready", "user can log in and use the cluster"),  # a cluster without agents
    (GRANTED, COUNTED, [{"node": "n1", "state": "Failed", "message": "disk full"}], True, "Provisioning",
     "n1: Failed disk full"),
])
def test_an_active_user_is_ready_once_access_quota_and_host_are_there(access, quota, nodes, require_host, phase, why):
    s = scope(status={"nodes": nodes}, require_host=require_host)
    status = user_status(s, 20001, access, quota)
    assert (status["phase"], status["conditions"][0]["message"]) == (phase, why)
    assert status["kubeconfigSecret"] == "labkeeper-system/kubeconfig-alice" and status["namespace"] == "lab-alice"
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])
    GPUUserStatus.model_validate(status)  # every field it writes is one the api model declares
    assert set(status) <= {f.alias or name for name, f in GPUUserStatus.model_fields.items()}


def test_host_provisioned_is_unknown_until_an_agent_reports():
    assert host_provisioned({})[0] is None
    assert conditions(user_status(scope(), 20001, GRANTED, COUNTED))["HostProvisioned"] == ("Unknown", "Waiting")
    assert conditions(user_status(scope(status={"nodes": AGENT}), 20001, GRANTED, COUNTED))["HostProvisioned"] == (
        "True", "AgentReported")


def test_suspension_removes_her_access_and_keeps_her_namespace():
    s = scope("Suspended", status={"nodes": AGENT})
    status = user_status(s, 20001, Access(False, "user is Suspended: access removed"), COUNTED)
    assert status["phase"] == "Suspended" and status["kubeconfigSecret"] is None
    assert status["namespace"] == "lab-alice" and "incarnation" not in status
    assert conditions(status)["AccessGranted"] == ("False", "NotGranted")
    assert conditions(status)["Ready"] == ("False", "Suspended")
    assert requeue_after(s, Access(False, "removed"), COUNTED) is None


def test_offboarding_keeps_the_record_and_her_uid_and_ends_her_incarnation():
    s = scope("Offboarded", status={"nodes": AGENT, "incarnation": "abcd"})
    status = user_status(s, 20001, Access(False, "user is Offboarded: access removed"), (False, ""))
    assert status["phase"] == "Offboarded" and status["namespace"] is None and status["incarnation"] is None
    assert status["uid"] == 20001 and "uid 20001 stays reserved" in status["conditions"][0]["message"]
    assert conditions(status)["QuotaApplied"] == ("False", "Offboarded")
    assert requeue_after(s, Access(False, "removed"), (False, "")) is None  # nothing left to wait for


@pytest.mark.parametrize(("quota", "counted"), [
    (None, False),
    ({"status": {"hard": {"pods": "10"}, "used": {}}}, False),
    ({"status": {"hard": {"pods": "10", "requests.cpu": "8"}, "used": {"pods": "0", "requests.cpu": "0"}}}, True),
])
def test_her_quota_counts_once_the_quota_controller_has_counted_each_resource(quota, counted):
    ok, message = quota_counted(quota, {"pods": "10", "requests.cpu": "8"})
    assert ok == counted and (message == "") == counted


def test_a_pass_after_a_failed_one_says_it_succeeded_again():
    failed = [{"type": "Reconciled", "status": "False", "reason": "ReconcileFailed", "message": "boom",
               "lastTransitionTime": "2026-12-01T08:59:00Z"}]
    status = user_status(scope(status={"nodes": AGENT, "conditions": failed}), 20001, GRANTED, COUNTED)
    assert conditions(status)["Reconciled"] == ("True", "Reconciled")


PASSED = {"metadata": {"name": "alice", "generation": 4, "resourceVersion": "10", "finalizers": ["f"]},
          "spec": {"tier": "student", "state": "Active"},
          "status": {"uid": 2001, "phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}],
                     "nodes": [{"node": "n1", "state": "Provisioned", "homeBytes": 10}],
                     "usage": {"gpuEquivalents": 0.5}, "accounting": {"days": [{"day": "2026-12-01"}]}}}


def edited(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(PASSED)
    *parents, leaf = path
    target = body
    for key in parents:
        target = target[key] if not isinstance(target, list) else target[int(key)]
    target[leaf] = value
    return body


@pytest.mark.parametrize(("path", "value", "needs_pass"), [
    (("metadata", "resourceVersion"), "11", False),
    (("status", "usage"), {"gpuEquivalents": 1.5}, False),
    (("status", "accounting"), {"days": []}, False),
    (("status", "nodes", "0", "homeBytes"), 99, False),
    (("spec", "tier"), "faculty", True),
    (("spec", "state"), "Suspended", True),
    (("metadata", "generation"), 5, True),
    (("metadata", "deletionTimestamp"), "2026-12-01T10:00:00Z", True),
    (("metadata", "finalizers"), [], True),
    (("status", "nodes", "0", "state"), "Failed", True),
    (("status", "uid"), None, True),
    (("status", "incarnation"), "ab12", True),
    (("status", "conditions"), [], True),
])
def test_a_pass_over_her_is_needed_only_when_what_it_reads_changed(path, value, needs_pass):
    assert (pass_input(edited(path, value)) != pass_input(PASSED)) is needs_pass
