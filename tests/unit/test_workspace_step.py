"""The reconciler's step around the decisions: it reads what the decision asks for, applies the actions in
order and writes the status once at the end. A recording stand-in for the client; no API server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from test_workspace_decisions import POLICY, T0, pod, user, workspace

from labkeeper.controller.liveness import KubeletLiveness
from labkeeper.controller.policy import PolicyStore
from labkeeper.controller.workspaces import WorkspaceReconciler, may_start


class RecordingKube:
    """Answers reads from a dict of objects and records every call a pass makes, in order."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]], refuse_create: int | None = None) -> None:
        self.objects = objects
        self.calls: list[tuple[str, ...]] = []
        self.refuse_create = refuse_create
        self.versions: list[str] = []  # the resourceVersions writes were held to
        self.refuse_versions: set[str] = set()

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        return self.objects.get((kind, name))

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        return [o for (k, _), o in self.objects.items() if k == kind]

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        if self.refuse_create:
            refused = ApiException(status=self.refuse_create, reason="Forbidden")
            refused.body = '{"message": "exceeded quota: labkeeper-limits"}'
            raise refused
        return {**obj, "metadata": {**obj["metadata"], "uid": "new-pod"}}

    def delete(self, kind: str, name: str, namespace: str | None = None, **_: Any) -> bool:
        self.calls.append(("delete", kind, name))
        return True

    def event(self, obj: dict[str, Any], reason: str, message: str, *, type_: str = "Normal") -> None:
        self.calls.append(("event", reason))

    def patch_status(self, kind: str, obj: dict[str, Any], desired: dict[str, Any], *,
                     if_unchanged: bool = False) -> dict[str, Any] | None:
        current = obj.get("status") or {}
        changed = {k: v for k, v in desired.items() if current.get(k) != v}
        if changed and if_unchanged:
            self.versions.append(obj["metadata"]["resourceVersion"])
            self._written_since(obj["metadata"]["resourceVersion"])
        self.calls.append(("patch_status", kind, *sorted(changed)))
        self.last_status = changed
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": "written"}} if changed else None

    def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None, **_: Any) -> dict[str, Any]:
        version = (patch.get("metadata") or {}).get("resourceVersion")
        if version is not None:
            self.versions.append(version)
            self._written_since(version)
        self.calls.append(("patch", kind, name))
        return {}

    def _written_since(self, version: str) -> None:
        """A write held to `version` is refused when the test says the object was written after that version."""
        if version in self.refuse_versions:
            raise ApiException(status=409, reason="Conflict")


def reconciler(kube: RecordingKube) -> WorkspaceReconciler:
    store = PolicyStore(kube, "labkeeper-system")  # type: ignore[arg-type]
    store.current = POLICY
    # every node's kubelet believed since an hour before T0 (controller/liveness.py has tests of its own)
    liveness = KubeletLiveness(lambda: T0 - dt.timedelta(hours=1), settle=0.0, wall=lambda: T0)
    liveness.observe({"metadata": {"name": "n1"}, "spec": {"renewTime": "2026-12-01T09:00:00.000000Z",
                                                            "leaseDurationSeconds": 3600}})
    return WorkspaceReconciler(kube, store, lambda: T0, liveness, data_root="/data")  # type: ignore[arg-type]


def writes(kube: RecordingKube) -> list[tuple[str, ...]]:
    return [c for c in kube.calls if c[0] not in ("get", "list")]


def test_a_start_reads_once_creates_the_pod_then_writes_the_status_once():
    kube = RecordingKube({("GPUUser", "alice"): user()})
    outcome = reconciler(kube).reconcile(workspace())
    assert [c for c in kube.calls if c[:2] == ("get", "GPUUser")] == [("get", "GPUUser", "alice")]  # her, once
    assert writes(kube)[0] == ("create", "Pod", "ws-nb") and writes(kube)[1] == ("event", "Starting")
    status_writes = [c for c in writes(kube) if c[0] == "patch_status"]
    assert len(status_writes) == 1 and writes(kube)[-1] == status_writes[0]
    assert kube.last_status["podUID"] == "new-pod" and kube.last_status["phase"] == "Starting"
    assert outcome.requeue_after is None


def test_a_pass_without_the_users_lock_creates_no_pod_and_asks_for_the_lock():
    kube = RecordingKube({("GPUUser", "alice"): user()})
    outcome = reconciler(kube).reconcile(workspace(), user_locked=False)
    assert outcome.needs_user_lock and writes(kube) == []  # nothing applied: the pass runs again under the lock


def test_a_stop_needs_no_users_lock():
    running = {"phase": "Running", "podUID": "p-1", "node": "n1", "runningSince": "2026-12-01T08:00:00Z",
               "lastSeenRunning": "2026-12-01T08:59:00Z", "lastActivity": "2026-12-01T08:20:00Z"}
    kube = RecordingKube({("GPUUser", "alice"): user(), ("Pod", "ws-nb"): pod()})
    step = reconciler(kube)
    step.started_at = T0 - dt.timedelta(hours=2)
    outcome = step.reconcile(workspace(status=running), user_locked=False)
    assert not outcome.needs_user_lock and ("patch", "Workspace", "nb") in writes(kube)  # culled, unlocked


def test_a_pod_the_api_refuses_leaves_its_words_and_no_starting_event():
    kube = RecordingKube({("GPUUser", "alice"): user()}, refuse_create=403)
    outcome = reconciler(kube).reconcile(workspace())
    assert ("event", "Starting") not in kube.calls
    assert kube.last_status["reason"] == "QuotaExceeded" and outcome.requeue_after == 5.0


def test_a_stop_records_the_hold_before_the_pod_goes_and_writes_the_rest_once():
    ws = workspace(profile="1g.10gb", state="Stopped", status={"phase": "Running"})
    kube = RecordingKube({("GPUUser", "alice"): user(), ("Pod", "ws-nb"): pod(profile="1g.10gb")})
    reconciler(kube).reconcile(ws)
    assert writes(kube) == [
        ("patch_status", "Workspace", "holdCount", "holdNode", "holdResource", "holdUntil"),
        ("delete", "Pod", "ws-nb"),
        ("event", "Stopping"),
        ("patch_status", "Workspace", *sorted(kube.last_status)),
    ]
    assert "holdNode" not in kube.last_status  # written once, before the pod went


def test_a_cull_records_why_then_stops_the_workspace_as_desired_state():
    running = {"phase": "Running", "podUID": "p-1", "node": "n1", "runningSince": "2026-12-01T08:00:00Z",
               "lastSeenRunning": "2026-12-01T08:59:00Z", "lastActivity": "2026-12-01T08:20:00Z"}
    kube = RecordingKube({("GPUUser", "alice"): user(), ("Pod", "ws-nb"): pod()})
    step = reconciler(kube)
    step.started_at = T0 - dt.timedelta(hours=2)  # the operator ran all along
    outcome = step.reconcile(workspace(status=running))
    # the warnings it never got are said on the way; the reason is written, then the stop is desired state
    assert writes(kube) == [("event", "IdleWarning"), ("event", "IdleWarning"),
                            ("patch_status", "Workspace", "message", "stopReason"), ("patch", "Workspace", "nb"),
                            ("event", "Culled")]
    # both writes only onto what the verdict was read from: the status as read, the spec as the status left it
    assert kube.versions == ["7", "written"]
    assert outcome.requeue_after == 0.2


IDLE_PAST_DEADLINE = {"phase": "Running", "podUID": "p-1", "node": "n1", "runningSince": "2026-12-01T08:00:00Z",
                      "lastSeenRunning": "2026-12-01T08:59:00Z", "lastActivity": "2026-12-01T08:20:00Z"}


@pytest.mark.parametrize("refused, writes_made", [
    # the agent reported activity after the pass read the Workspace: nothing of the stop is written
    ("7", []),
    # ... between the reason and the stop: the reason is there, the spec still says Running, no Culled Event
    ("written", [("patch_status", "Workspace", "message", "stopReason")]),
])
def test_a_cull_is_refused_when_the_workspace_was_written_since_its_verdict_was_read(refused, writes_made):
    kube = RecordingKube({("GPUUser", "alice"): user(), ("Pod", "ws-nb"): pod()})
    kube.refuse_versions = {refused}
    step = reconciler(kube)
    step.started_at = T0 - dt.timedelta(hours=2)
    outcome = step.reconcile(workspace(status=IDLE_PAST_DEADLINE))
    assert [w for w in writes(kube) if w[0] != "event" or w[1] == "Culled"] == writes_made
    assert outcome.requeue_after == 0.2  # decided again from what was written


def test_a_workspace_that_runs_on_after_a_refused_cull_loses_the_stop_reason():
    """The pass after a refused spec write: the agent's report says active, so the recorded reason goes."""
    kube = RecordingKube({("GPUUser", "alice"): user(), ("Pod", "ws-nb"): pod()})
    step = reconciler(kube)
    step.started_at = T0 - dt.timedelta(hours=2)
    active = {**IDLE_PAST_DEADLINE, "lastActivity": "2026-12-01T08:59:30Z", "stopReason": "Idle",
              "message": "stopped: idle for 40m"}
    step.reconcile(workspace(status=active))
    assert "stopReason" in kube.last_status and kube.last_status["stopReason"] is None
    assert ("patch", "Workspace", "nb") not in kube.calls and ("event", "Culled") not in kube.calls


def test_nothing_is_written_when_nothing_changed():
    kube = RecordingKube({("GPUUser", "alice"): user()})
    first = reconciler(kube)
    first.reconcile(workspace(state="Stopped"))
    settled = {**workspace(state="Stopped")["status"], **kube.last_status}
    kube.calls.clear()
    first.reconcile(workspace(state="Stopped", status=settled))
    assert writes(kube) == [("patch_status", "Workspace")]  # asked, and the client found no field to change



@pytest.mark.parametrize(("state", "phase", "starts"), [
    ("Running", None, True), ("Running", "Pending", True), ("Running", "Stopped", True),
    ("Running", "Running", False), ("Running", "IdleWarning", False), ("Running", "Succeeded", False),
    ("Stopped", "Running", False), ("Stopped", None, False),
])
def test_a_pass_that_may_start_a_pod_asks_for_the_users_lock_before_it_reads_anything(state, phase, starts):
    ws = workspace(state=state, status={"phase": phase} if phase else {})
    assert may_start(ws) is starts
    if starts:
        kube = RecordingKube({("GPUUser", "alice"): user()})
        assert reconciler(kube).reconcile(ws, user_locked=False).needs_user_lock and kube.calls == []
