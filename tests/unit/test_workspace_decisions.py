"""What the Workspace reconciler decides, as tables of scopes: no API server, no clock but the one in the scope.

alice is a student (1 GPU equivalent, 2 running workspaces, 8 CPUs, lab/* images, small MIG slices); fran is
faculty. Each case builds the objects as the API would return them and reads the status and the actions back."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from pydantic.alias_generators import to_camel

from labkeeper.api import admission as api_admission
from labkeeper.api.policy import load_policy
from labkeeper.api.resources import WorkspaceSpec, WorkspaceStatus, check_status
from labkeeper.api.units import format_time
from labkeeper.controller.admission import LabView
from labkeeper.controller.liveness import Sight
from labkeeper.controller.policy import PolicyStore
from labkeeper.controller.workspace_decisions import (
    WAITER_RECHECK,
    CreateFailed,
    CreatePod,
    Decision,
    DeletePod,
    DeleteWorkspace,
    Neighbourhood,
    PostEvent,
    RecordHold,
    StopSpec,
    Unread,
    WorkspaceScope,
    decide,
    queue_place,
    to_wake,
    within,
)
from labkeeper.render.access import gpu_resource

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
POLICY = load_policy("""
defaults: {maxGpuEquivalents: 1, cpu: "8", memory: 16Gi, maxWorkspaces: 2, idleTimeout: 30m, maxRuntime: 24h}
tiers:
  student: {priority: 10000, allowedProfiles: [1g.10gb, 3g.40gb, 4g.40gb, 7g.80gb], allowedImages: ["lab/*"]}
  faculty: {priority: 30000, preempt: true, maxGpuEquivalents: 4, cpu: "64", maxRuntime: 72h}
gpuHoldAfterStop: 15m
stoppedRetention: 30m
""", "test policy")
STATUS_FIELDS = {field.alias or to_camel(name) for name, field in WorkspaceStatus.model_fields.items()}


# ---- objects as the API returns them ---------------------------------------------------------------------------
def user(name: str = "alice", tier: str = "student", state: str = "Active", uid: int | None = 20001,
         conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": name, "uid": f"u-{name}"},
            "spec": {"tier": tier, "state": state},
            "status": {"uid": uid, "gid": uid, "conditions": conditions or []} if uid else {}}


def workspace(name: str = "nb", owner: str = "alice", *, profile: str | None = None, count: int = 1,
              state: str = "Running", mode: str | None = None, status: dict[str, Any] | None = None,
              **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": "lab/notebook:1", "state": state, **spec}
    if profile:
        body["gpu"] = {"profile": profile, "count": count}
    if mode:
        body["mode"] = mode
        body.setdefault("command", ["python", "train.py"])
    return {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
            "metadata": {"name": name, "namespace": f"lab-{owner}", "uid": f"w-{name}", "generation": 3,
                         "resourceVersion": "7"},
            "spec": body, "status": status or {}}


def pod(ws: str = "nb", owner: str = "alice", *, profile: str | None = None, count: int = 1, phase: str = "Running",
        node: str | None = "n1", uid: str = "p-1", deleting: bool = False, conditions: list[dict[str, Any]] | None = None,
        containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    limits = {gpu_resource(profile): str(count)} if profile else {}
    meta: dict[str, Any] = {"name": f"ws-{ws}", "namespace": f"lab-{owner}", "uid": uid,
                            "labels": {"app.kubernetes.io/managed-by": "labkeeper", "labkeeper.io/workspace": ws,
                                       "labkeeper.io/role": "workspace"}}
    if deleting:
        meta["deletionTimestamp"] = format_time(T0)
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "workspace", "resources": {"limits": limits}}]},
            "status": {"phase": phase, "conditions": conditions or [], "containerStatuses": containers or []}}


def scope(ws: dict[str, Any], owner: dict[str, Any] | None = None, *, current_pod: dict[str, Any] | None = None,
          now: dt.datetime = T0, **facts: Any) -> WorkspaceScope:
    owner = user() if owner is None else owner
    entitlement = None
    if owner and (owner.get("status") or {}).get("uid"):
        entitlement = PolicyStore(None, "labkeeper-system").entitlement(  # type: ignore[arg-type]
            owner["metadata"]["name"], owner["spec"], POLICY)
    return WorkspaceScope(body=ws, spec=WorkspaceSpec.model_validate(ws["spec"]), user=owner or None,
                          entitlement=entitlement, pod=current_pod, hold=facts.pop("hold", None), policy=POLICY,
                          now=now, started_at=T0 - 60 * MIN,
                          sight=facts.pop("sight", Sight(T0 - 60 * MIN, True, None)), **facts)


def nothing_near(*pods: dict[str, Any], workspaces: tuple[dict[str, Any], ...] = ()) -> Neighbourhood:
    return Neighbourhood(tuple(pods), workspaces, {"SharedCache": [], "ModelStore": []})


def lab(ws: dict[str, Any], *, capacity: dict[tuple[str, str], int], claims: list[api_admission.Claim] = (),  # type: ignore[assignment]
        waiting: bool = True, priority: int = 10000) -> LabView:
    """Admission's view with `ws` asking now (as Admissions.view adds the pass's own workspace)."""
    waiters = []
    gpu = ws["spec"].get("gpu")
    if waiting and gpu:
        waiters.append(api_admission.Waiter(f"{ws['metadata']['namespace']}/{ws['metadata']['name']}",
                                            gpu_resource(gpu["profile"]), gpu.get("count", 1), priority, T0))
    return LabView(capacity, frozenset(), list(claims), waiters, frozenset())


def decided(s: WorkspaceScope) -> Decision:
    """The decision, checked for what every decision must be: the same again from the same scope, and a status
    that writes no field the WorkspaceStatus model lacks."""
    first = decide(s)
    assert decide(s) == first
    if first.status is not None:
        unknown = set(first.status) - STATUS_FIELDS
        assert not unknown, f"the reconciler writes status fields the api model does not declare: {unknown}"
        # nested too: the queue, the meter, the warnings and conditions, field by field
        check_status("Workspace", {k: v for k, v in first.status.items() if v is not None})
    for action in first.actions:
        if isinstance(action, RecordHold):
            check_status("Workspace", action.record)
    return first


def events(d: Decision) -> list[tuple[str, str]]:
    return [(a.reason, a.type_) for a in (*d.actions, *d.after) if isinstance(a, PostEvent)]


def conditions(d: Decision) -> dict[str, str]:
    assert d.status is not None
    return {c["type"]: c["status"] for c in d.status["conditions"]}


# ---- entitlement ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "reason", "words"), [
    ({"profile": "2g.20gb"}, "NotEntitled", "spec.gpu.profile '2g.20gb' is not allowed for tier student"),
    ({"image": "docker.io/any:latest"}, "NotEntitled", "spec.image 'docker.io/any:latest' is not allowed"),
    ({"cpu": "16"}, "NotEntitled", "spec.cpu 16 exceeds the tier student limit of 8"),
    ({"memory": "64Gi"}, "NotEntitled", "spec.memory 64Gi exceeds"),
    ({"cpu": "2", "memory": "4Gi"}, "PodCreated", "waiting for the scheduler"),
])
def test_alice_gets_a_pod_only_for_what_her_tier_allows(spec, reason, words):
    d = decided(scope(workspace(**spec), neighbourhood=nothing_near()))
    assert d.status is not None and d.status["reason"] == reason and words in d.status["message"]
    assert any(isinstance(a, CreatePod) for a in d.actions) == (reason == "PodCreated")


@pytest.mark.parametrize(("owner", "words"), [
    ({}, "GPUUser 'alice' does not exist or has no uid yet"),
    (user(uid=None), "does not exist or has no uid yet"),
    (user(conditions=[{"type": "Ready", "status": "False", "reason": "UnknownTier", "message": "spec.tier 'ta'"}]),
     "GPUUser alice: spec.tier 'ta'"),
])
def test_no_pod_while_her_user_is_missing_unnumbered_or_held(owner, words):
    d = decided(scope(workspace(), owner, neighbourhood=nothing_near()))
    assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("Pending", "UserNotReady")
    assert words in d.status["message"] and not d.actions
    assert conditions(d)["WithinQuota"] == "Unknown"  # nothing checked the quota on this path


# ---- weighted quota ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("others", "holds", "asked", "refused"), [
    ([pod("a", profile="3g.40gb", uid="a")], [], "4g.40gb", False),  # 3/7 + 4/7 = 1: exactly her cap
    ([pod("a", profile="3g.40gb", uid="a")], [], "7g.80gb", True),  # 3/7 + 1 > 1
    ([pod("a", profile="7g.80gb", uid="a", phase="Succeeded")], [], "7g.80gb", False),  # an ended run holds nothing
    ([pod("a", profile="7g.80gb", uid="a", deleting=True)], [], "7g.80gb", False),  # a pod going counts nothing
    ([], [("held", "nvidia.com/mig-3g.40gb")], "7g.80gb", True),  # a hold after stop is still hers
    ([pod("held", profile="3g.40gb", uid="h")], [("held", "nvidia.com/mig-3g.40gb")], "4g.40gb", False),  # once
])
def test_weighted_gpu_quota_counts_her_pods_and_holds_by_weight(others, holds, asked, refused):
    held = tuple(workspace(name, status={"holdNode": "n1", "holdResource": resource, "holdCount": 1,
                                          "holdUntil": format_time(T0 + 5 * MIN)}) for name, resource in holds)
    ws = workspace(profile=asked)
    s = scope(ws, neighbourhood=nothing_near(*others, workspaces=held))
    if not refused:
        with pytest.raises(Unread) as need:
            decide(s)
        assert need.value.what == "lab"  # within the cap it goes on to admission
        return
    d = decided(s)
    assert d.status is not None and d.status["reason"] == "QuotaExceeded"
    assert "requested > cap 1.00 for tier student" in d.status["message"]
    assert events(d) == [("QuotaExceeded", "Warning")] and conditions(d)["WithinQuota"] == "False"
    # the Event is said once: a pass that finds it already QuotaExceeded says nothing new
    again = decided(dataclasses.replace(s, body={**ws, "status": d.status}))
    assert events(again) == []


def test_a_third_running_workspace_waits_for_her_max_workspaces():
    near = nothing_near(pod("one", uid="1"), pod("two", uid="2"))
    d = decided(scope(workspace("three"), neighbourhood=near))
    assert d.status is not None and d.status["reason"] == "QuotaExceeded"
    assert d.status["message"] == "2 workspaces running, tier student allows 2"


# ---- admission, preemption -----------------------------------------------------------------------------------
def test_a_gpu_workspace_waits_in_the_queue_then_starts_on_the_node_admission_gives():
    ws = workspace(profile="1g.10gb")
    slot = ("n1", "nvidia.com/mig-1g.10gb")
    busy = [api_admission.Claim("lab-bob/x", "n1", slot[1], 1)]
    waiting = decided(scope(ws, neighbourhood=nothing_near(), lab=lab(ws, capacity={slot: 1}, claims=busy)))
    assert waiting.status is not None and waiting.status["reason"] == "WaitingForDevice"
    assert waiting.status["waitingSince"] == api_admission.format_waiting_since(T0) and waiting.status["queue"]["position"] == 1
    assert events(waiting) == [("Waiting", "Normal")] and waiting.requeue_after == WAITER_RECHECK
    assert conditions(waiting)["WithinQuota"] == "True"
    free = decided(scope(ws, neighbourhood=nothing_near(), lab=lab(ws, capacity={slot: 1})))
    created = [a for a in free.actions if isinstance(a, CreatePod)]
    assert len(created) == 1 and free.status is not None and free.status["phase"] == "Starting"
    affinity = created[0].body["spec"]["affinity"]["nodeAffinity"]
    assert "n1" in str(affinity)


@pytest.mark.parametrize(("refusal", "reason", "writes"), [
    (CreateFailed(409, "already exists"), None, False),  # an earlier pass created it: look again soon
    (CreateFailed(403, "exceeded quota: labkeeper-limits"), "QuotaExceeded", True),
    (CreateFailed(422, "spec.containers[0].image: Invalid value"), "PodRejected", True),
])
def test_a_pod_the_api_refuses_leaves_the_workspace_pending_with_the_apis_words(refusal, reason, writes):
    d = decided(scope(workspace(), neighbourhood=nothing_near(), create_failed=refusal))
    assert (d.status is not None) == writes
    if writes:
        assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("Pending", reason)
        assert d.status["message"] == refusal.message and d.requeue_after == 5.0
    assert not any(isinstance(a, CreatePod) for a in d.actions)


PREEMPTED = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]


def test_a_pod_the_scheduler_preempted_leaves_the_workspace_preempted_not_stopped():
    ws = workspace(profile="1g.10gb", status={"phase": "Running", "podUID": "p-1"})
    d = decided(scope(ws, lost_pod=pod(profile="1g.10gb", conditions=PREEMPTED)))
    assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("Preempted", "PreemptedByScheduler")
    assert d.status["podUID"] is None and events(d) == [("Preempted", "Warning")] and d.requeue_after == 0.5


def test_a_pod_gone_unseen_is_judged_by_the_schedulers_event():
    ws = workspace(status={"phase": "Running", "podUID": "p-1"})
    with pytest.raises(Unread) as need:
        decide(scope(ws))
    assert need.value.what == "preemption" and need.value.pod is not None
    assert need.value.pod["metadata"]["uid"] == "p-1"
    preempted = decided(scope(ws, preempted_event=True))
    assert preempted.status is not None and preempted.status["phase"] == "Preempted"
    not_preempted = decided(scope(ws, preempted_event=False, neighbourhood=nothing_near()))
    assert not_preempted.status is not None and not_preempted.status["phase"] == "Starting"


def test_a_preempted_run_is_not_ended_it_waits_to_run_again():
    ws = workspace(mode="Batch", profile="1g.10gb", status={"phase": "Running", "podUID": "p-1"})
    killed = [{"name": "workspace", "state": {"terminated": {"exitCode": 137, "reason": "Error",
                                                            "finishedAt": format_time(T0)}}}]
    d = decided(scope(ws, lost_pod=pod(profile="1g.10gb", phase="Failed", conditions=PREEMPTED, containers=killed)))
    assert d.status is not None and d.status["phase"] == "Preempted" and "exitCode" not in d.status


# ---- holds after stop ------------------------------------------------------------------------------------------
def test_stopping_a_gpu_workspace_records_a_hold_before_its_pod_is_deleted():
    ws = workspace(profile="1g.10gb", state="Stopped", status={"phase": "Running"})
    d = decided(scope(ws, current_pod=pod(profile="1g.10gb")))
    kinds = [type(a).__name__ for a in d.actions]
    assert kinds == ["RecordHold", "DeletePod", "PostEvent"]
    record = d.actions[0]
    assert isinstance(record, RecordHold) and record.record == {
        "holdNode": "n1", "holdResource": "nvidia.com/mig-1g.10gb", "holdCount": 1,
        "holdUntil": format_time(T0 + 15 * MIN)}
    assert d.actions[1] == DeletePod("ws-nb", 60)
    assert d.status is not None and d.status["phase"] == "Stopping" and d.status["holdNode"] == "n1"


@pytest.mark.parametrize(("owner", "mode"), [(user(state="Suspended"), None), (user(), "Batch")])
def test_a_suspended_user_or_a_run_keeps_no_hold(owner, mode):
    ws = workspace(profile="1g.10gb", mode=mode, state="Stopped" if mode else "Running", status={"phase": "Running"})
    d = decided(scope(ws, owner, current_pod=pod(profile="1g.10gb")))
    assert not any(isinstance(a, RecordHold) for a in d.actions)
    assert any(isinstance(a, DeletePod) for a in d.actions)


HELD = {"phase": "Stopped", "reason": "Stopped", "holdNode": "n1", "holdResource": "nvidia.com/mig-1g.10gb",
        "holdCount": 1, "holdUntil": format_time(T0 + 5 * MIN), "stoppedAt": format_time(T0 - 10 * MIN)}


def test_a_hold_is_kept_while_its_device_is_there_and_checked_again_soon():
    ws = workspace(profile="1g.10gb", state="Stopped", status=HELD)
    with pytest.raises(Unread) as need:
        decide(scope(ws))
    assert need.value.what == "lab" and need.value.my_since is None
    hold = api_admission.hold_claim(ws, T0)
    assert hold is not None
    d = decided(scope(ws, lab=lab(ws, capacity={("n1", "nvidia.com/mig-1g.10gb"): 1}, claims=[hold], waiting=False)))
    assert d.status is not None and d.status["phase"] == "Stopped" and "holdNode" not in d.status  # it stays
    assert "held on n1 until" in d.status["message"] and d.requeue_after == 10.0 and not d.freed


def test_a_hold_whose_device_was_taken_is_lost_with_a_warning():
    ws = workspace(profile="1g.10gb", state="Stopped", status=HELD)
    hold = api_admission.hold_claim(ws, T0)
    assert hold is not None
    intruder = api_admission.Claim("kube-system/validator", "n1", "nvidia.com/mig-1g.10gb", 1)
    d = decided(scope(ws, lab=lab(ws, capacity={("n1", "nvidia.com/mig-1g.10gb"): 1}, claims=[intruder, hold],
                                  waiting=False)))
    assert d.status is not None and d.status["reason"] == "HoldLost" and d.status["holdNode"] is None
    assert ("HoldLost", "Warning") in events(d)


def test_an_expired_hold_is_released_and_wakes_whoever_waits():
    ws = workspace(profile="1g.10gb", state="Stopped", status=HELD)
    d = decided(scope(ws, now=T0 + 6 * MIN))
    assert d.status is not None and d.status["holdNode"] is None and d.freed
    assert events(d) == [("HoldReleased", "Normal")]


def test_her_hold_is_released_when_she_is_offboarded():
    ws = workspace(profile="1g.10gb", status=HELD)
    d = decided(scope(ws, user(state="Offboarded")))
    assert d.status is not None and d.status["holdNode"] is None and d.freed
    assert d.status["reason"] == "UserSuspended"


def test_coming_back_within_the_hold_starts_on_the_held_node():
    ws = workspace(profile="1g.10gb", status={**HELD, "phase": "Stopped"})
    hold = api_admission.hold_claim(ws, T0)
    assert hold is not None
    d = decided(scope(ws, neighbourhood=nothing_near(workspaces=(ws,)),
                      lab=lab(ws, capacity={("n1", "nvidia.com/mig-1g.10gb"): 1}, claims=[hold])))
    assert any(isinstance(a, CreatePod) for a in d.actions)
    assert d.status is not None and d.status["holdNode"] is None and d.status["phase"] == "Starting"


def test_asking_for_other_devices_gives_the_held_ones_back():
    ws = workspace(profile="3g.40gb", status=HELD)
    d = decided(scope(ws, neighbourhood=nothing_near(), lab=lab(ws, capacity={("n1", "nvidia.com/mig-3g.40gb"): 1})))
    assert ("HoldReleased", "Normal") in events(d) and d.freed
    assert d.status is not None and d.status["holdNode"] is None


def test_an_older_labkeepers_hold_pod_becomes_a_record_and_goes():
    ws = workspace(profile="1g.10gb", state="Stopped", status={"phase": "Stopped"})
    hold_pod = pod(profile="1g.10gb", uid="h")
    hold_pod["metadata"].update(name="hold-nb", creationTimestamp=format_time(T0 - 5 * MIN))
    d = decided(scope(ws, hold=hold_pod, lab=lab(ws, capacity={("n1", "nvidia.com/mig-1g.10gb"): 1}, waiting=False,
                                                 claims=[api_admission.Claim("lab-alice/nb", "n1",
                                                                             "nvidia.com/mig-1g.10gb", 1,
                                                                             held_until=T0 + 10 * MIN)])))
    assert d.actions[0] == RecordHold({"holdNode": "n1", "holdResource": "nvidia.com/mig-1g.10gb", "holdCount": 1,
                                       "holdUntil": format_time(T0 + 10 * MIN)})
    assert d.actions[1] == DeletePod("hold-nb", 0)


# ---- retention -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stopped_ago", "deleted", "requeue"), [(10, False, 20 * 60.0), (30, True, None)])
def test_a_stopped_workspace_goes_after_the_policys_retention(stopped_ago, deleted, requeue):
    ws = workspace(state="Stopped", status={"phase": "Stopped", "stoppedAt": format_time(T0 - stopped_ago * MIN)})
    d = decided(scope(ws))
    assert (DeleteWorkspace() in d.actions) == deleted
    assert (d.status is None) == deleted and d.requeue_after == requeue


@pytest.mark.parametrize(("ended_ago", "deleted"), [(29, False), (31, True)])
def test_an_ended_run_keeps_its_pod_for_its_logs_until_the_retention_ends(ended_ago, deleted):
    ws = workspace(mode="Batch", status={"phase": "Succeeded", "reason": "Completed", "exitCode": 0,
                                         "finishedAt": format_time(T0 - ended_ago * MIN)})
    d = decided(scope(ws, user(state="Suspended"), current_pod=pod(phase="Succeeded")))
    assert (DeleteWorkspace() in d.actions) == deleted
    if not deleted:  # it stays ended, whatever its user or its pod do meanwhile
        assert d.status is not None and (d.status["phase"], d.status["exitCode"]) == ("Succeeded", 0)
        assert not any(isinstance(a, DeletePod) for a in d.actions)


# ---- max runtime, idle ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("asked", "entitled", "limit"), [
    (None, dt.timedelta(hours=24), dt.timedelta(hours=24)),
    ("2h", dt.timedelta(hours=24), dt.timedelta(hours=2)),
    ("48h", dt.timedelta(hours=24), dt.timedelta(hours=24)),  # never beyond her entitlement
    ("3h", None, dt.timedelta(hours=3)),
    (None, None, None),
])
def test_a_workspace_limit_is_its_own_within_the_entitlement(asked, entitled, limit):
    assert within(asked, entitled) == limit


def test_a_workspace_that_used_its_runtime_does_not_start_again():
    ws = workspace(maxRuntime="2h", status={"phase": "Stopped", "runtimeSeconds": 7200})
    d = decided(scope(ws, neighbourhood=nothing_near()))
    assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("Stopped", "MaxRuntime")
    assert not any(isinstance(a, CreatePod) for a in d.actions)


RUNNING = {"phase": "Running", "podUID": "p-1", "node": "n1", "runningSince": format_time(T0 - 30 * MIN),
           "lastSeenRunning": format_time(T0 - 10 * MIN)}


@pytest.mark.parametrize(("extra", "spec", "stop", "event"), [
    ({"runtimeSeconds": 2 * 3600 - 30 * 60}, {"maxRuntime": "2h"}, "MaxRuntime", "MaxRuntime"),
    ({"lastActivity": format_time(T0 - 31 * MIN)}, {}, "Idle", "Culled"),
])
def test_a_running_workspace_is_stopped_at_its_deadline_as_desired_state(extra, spec, stop, event):
    ws = workspace(status={**RUNNING, **extra}, **spec)
    d = decided(scope(ws, current_pod=pod()))
    assert d.status == {"stopReason": stop, "message": d.status["message"]} if d.status else False
    # the Event says the stop once it is made, and only onto the Workspace as this verdict read it
    assert d.after == (StopSpec(), PostEvent(event, d.status["message"], "Warning")) and d.if_unchanged


def test_a_running_workspace_is_warned_before_it_is_culled():
    ws = workspace(status={**RUNNING, "lastActivity": format_time(T0 - 25 * MIN)})
    d = decided(scope(ws, current_pod=pod()))
    assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("IdleWarning", "IdleWarning")
    assert [w["key"] for w in d.status["warnings"]] == ["idle-80"] and events(d) == [("IdleWarning", "Warning")]
    assert conditions(d) == {"Scheduled": "True", "Ready": "True", "WithinQuota": "True", "KeepAliveCapped": "False"}
    assert all(c["observedGeneration"] == 3 for c in d.status["conditions"])
    assert not d.after


# ---- suspension ------------------------------------------------------------------------------------------------
def test_suspending_her_stops_her_running_workspace():
    ws = workspace(status=RUNNING)
    d = decided(scope(ws, user(state="Suspended"), current_pod=pod()))
    assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("Stopping", "UserSuspended")
    assert d.actions == (DeletePod("ws-nb", 60), PostEvent("Stopping", "stopping: UserSuspended"))


def test_a_pass_after_a_failed_one_says_it_succeeded_again():
    failed = {"type": "Reconciled", "status": "False", "reason": "ReconcileFailed", "message": "boom",
              "lastTransitionTime": format_time(T0 - MIN)}
    d = decided(scope(workspace(status={"conditions": [failed]}), neighbourhood=nothing_near()))
    assert conditions(d)["Reconciled"] == "True"
    plain = decided(scope(workspace(), neighbourhood=nothing_near()))
    assert "Reconciled" not in conditions(plain)  # nothing to say where nothing failed


@pytest.mark.parametrize("mode", ["Interactive", "Batch"])
def test_a_pod_the_node_rejected_at_admission_is_replaced_not_failed(mode):
    # a node that booted admits its pods again before the device plugin has registered: the kubelet fails them
    ws = workspace(profile="1g.10gb", status={"phase": "Running", "podUID": "p-1"})
    ws["spec"].update({"mode": mode, "command": ["python", "train.py"]})
    rejected = pod(profile="1g.10gb", phase="Failed")
    rejected["status"].update({"reason": "UnexpectedAdmissionError", "message": "Allocate failed due to no healthy "
                               "devices present; cannot allocate unhealthy devices nvidia.com/mig-1g.10gb"})
    d = decided(scope(ws, current_pod=rejected))
    assert d.status is not None and (d.status["phase"], d.status["reason"]) == ("Pending", "PodRejected")
    assert [a for a in d.actions if isinstance(a, DeletePod)] == [DeletePod("ws-nb", 0)]
    assert events(d) == [("PodRejected", "Warning")] and d.requeue_after == 1.0
    # a pod whose container ran and failed stays a failure
    ran = pod(profile="1g.10gb", phase="Failed")
    ran["status"]["reason"] = "Error"
    d = decided(scope(ws, current_pod=ran))
    assert d.status is not None and d.status["phase"] == "Failed"
    assert not [a for a in d.actions if isinstance(a, DeletePod)]


def test_a_queue_place_names_the_first_few_ahead_and_counts_them_all():
    from labkeeper.api.admission import QUEUE_AHEAD_LISTED
    from labkeeper.controller.admission import LabView
    from labkeeper.controller.workspace_decisions import queue_place

    owners = tuple(f"lab-u{i}/ws" for i in range(12))
    wait = api_admission.Wait("lab-me/ws", "nvidia.com/mig-1g.10gb", 1, 7, 7, (), len(owners), owners)
    place = queue_place(wait, LabView({}, frozenset(), [], [], frozenset()), "no free 1g.10gb slice (7 in use)")
    assert place["position"] == 13 and place["ahead"] == [f"u{i}/ws" for i in range(QUEUE_AHEAD_LISTED)]
    check_status("Workspace", {"queue": place})


SLOT = ("n1", "nvidia.com/mig-1g.10gb")


def three_waiters(queues: dict[str, dict[str, Any]] | None = None, *, reused: bool = False) -> LabView:
    """One free slice of two and three waiters, a first: a is let start, b is next, c behind b."""
    waiters = [api_admission.Waiter(f"lab-{u}/ws", SLOT[1], 1, 10000, T0 + i * MIN) for i, u in enumerate("abc")]
    taken = [api_admission.Claim("lab-z/ws", SLOT[0], SLOT[1], 1)]
    places = {owner: queue.get("position") for owner, queue in (queues or {}).items()}
    # handed again, as Admissions hands a view: those its decision admitted count as having their pods
    pods_of = frozenset({"lab-z/ws", *(["lab-a/ws"] if reused else [])})
    return LabView({SLOT: 2}, frozenset(), taken, waiters, pods_of, places=places, queues=queues or {}, reused=reused)


def as_shown(**edits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The queue each waiter's status shows after its pass wrote it from this decision, with `edits` made."""
    view = three_waiters()
    decision = view.decide()
    shown = {o: queue_place(w, view, w.message()) for o, w in decision.waiting.items()}
    for user, edit in edits.items():
        shown[f"lab-{user}/ws"] = {**shown[f"lab-{user}/ws"], **edit}
    return shown


@pytest.mark.parametrize("queues, reused, woken", [
    (as_shown(), False, {"lab-a/ws"}),  # the one it lets start; every status as the passes wrote it
    ({}, False, {"lab-a/ws", "lab-b/ws", "lab-c/ws"}),  # no pass wrote a place yet
    (as_shown(c={"ahead": ["x/ws"]}), False, {"lab-a/ws", "lab-c/ws"}),  # another ahead, the same place
    (as_shown(b={"reason": "no free 1g.10gb slice (1 in use, 1 held until 09:30:00 UTC); you are next"}), False,
     {"lab-a/ws", "lab-b/ws"}),  # a hold ran out since b's pass: its words are stale
    (as_shown(b={"position": 3}), False, {"lab-a/ws", "lab-b/ws"}),  # its place moved
    (as_shown(b={"estimatedStart": None}), False, {"lab-a/ws"}),  # a null is no field: nothing to write
    (as_shown(c={"ahead": ["x/ws"]}), True, set()),  # handed again: the pass that read it woke them
])
def test_the_labs_own_decision_wakes_only_those_whose_status_it_changes(queues, reused, woken):
    view = three_waiters(queues, reused=reused)
    now, soon = to_wake(view, view.decide(), shown=True)
    # the one it lets start at once; those whose queue status it changes soon, a burst of changes folded
    assert now == ({"lab-a/ws"} if not reused else set()) and now | soon == woken and not now & soon
    # a pass's own decision wakes for a place moved, not for words: a device taken would change everyone's
    places = {"lab-b/ws": 1, "lab-c/ws": 2}
    moved = {o for o, place in places.items() if view.places.get(o) != place} if not reused else set()
    assert to_wake(view, view.decide()) == (now, moved)
