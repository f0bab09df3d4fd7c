"""A cull decided from a Workspace read before the agent's report of new activity is refused by the real API
server, not applied: the stop reason's status write carries the resourceVersion the verdict was read at. This test
plays the operator's pass in-process (its reconciler, on a clock it moves) so the report can land exactly between
the pass's read and its write; no operator runs beside it."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from labkeeper.api.units import format_time
from labkeeper.controller.liveness import KubeletLiveness
from labkeeper.controller.policy import PolicyStore
from labkeeper.controller.workspaces import WorkspaceReconciler
from labkeeper.kube.client import Kube
from labkeeper.testing.cluster import NVIDIA_RUNTIME_CLASS, REPO_ROOT, LocalCluster, NodeSpec
from labkeeper.testing.lab import gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration
USER, NAMESPACE = "ann", "lab-ann"


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    local = LocalCluster(tmp_path_factory.mktemp("cull-race"), (NodeSpec("race-node", "cpu-only"),),
                         preload=[REPO_ROOT / "crds"])
    local.start()
    try:
        for namespace in (SYSTEM_NAMESPACE, NAMESPACE):
            local.kubectl("create", "namespace", namespace)
        client = Kube.from_kubeconfig(str(local.kubeconfig))
        local.kubectl("apply", "-f", "-", input=json.dumps(NVIDIA_RUNTIME_CLASS))  # the chart's: pods name it
        client.create(gpuuser(USER))
        client.patch("GPUUser", USER, {"status": {"uid": 2001, "gid": 2001, "namespace": NAMESPACE}},
                     subresource="status")
        PolicyStore(client, SYSTEM_NAMESPACE).apply_priority_classes()  # a workspace pod names its tier's class
        yield client
    finally:
        local.stop()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now


def running(kube: Kube, name: str) -> tuple[WorkspaceReconciler, Clock]:
    """The workspace created and passed over until its pod runs (kwok), then two hours on: far past the default
    tier's 30 minute idle timeout, with no activity ever reported."""
    clock = Clock()
    policy = PolicyStore(kube, SYSTEM_NAMESPACE)
    policy.refresh()
    step = WorkspaceReconciler(kube, policy, clock, KubeletLiveness(clock, settle=0.0), data_root="/data")
    kube.create(workspace(name, USER))

    def passed_to_running() -> bool:
        step.reconcile(kube.get("Workspace", name, NAMESPACE) or {})
        return (kube.get("Workspace", name, NAMESPACE) or {}).get("status", {}).get("phase") == "Running"

    wait_for(passed_to_running, timeout=60, interval=0.5, what=f"{name} running")
    clock.now += dt.timedelta(hours=2)
    return step, clock


def culled_events(kube: Kube, name: str) -> list[dict]:
    return kube.list("Event", NAMESPACE, field_selector=f"involvedObject.name={name},reason=Culled")


def test_an_idle_workspace_read_before_the_agent_reported_activity_is_not_culled(kube):
    step, clock = running(kube, "busy")
    stale = kube.get("Workspace", "busy", NAMESPACE)
    assert stale is not None
    # the agent's report lands after the pass read the Workspace: its user computes again
    kube.patch_status("Workspace", stale, {"lastActivity": format_time(clock.now),
                                           "activityReason": "gpu 41% SM on 1g.10gb"})
    outcome = step.reconcile(stale)
    after = kube.get("Workspace", "busy", NAMESPACE) or {}
    assert after["spec"]["state"] == "Running" and not after["status"].get("stopReason"), after["status"]
    assert culled_events(kube, "busy") == [] and outcome.requeue_after is not None
    # the pass again, from what is there now: it runs on
    step.reconcile(after)
    again = kube.get("Workspace", "busy", NAMESPACE) or {}
    assert again["spec"]["state"] == "Running" and again["status"]["phase"] in ("Running", "IdleWarning")
    assert not again["status"].get("stopReason") and culled_events(kube, "busy") == []


def test_the_same_idle_workspace_with_no_report_since_is_culled(kube):
    """The control: the same read, nothing written after it, and the stop is made."""
    step, _clock = running(kube, "quiet")
    stale = kube.get("Workspace", "quiet", NAMESPACE)
    assert stale is not None
    step.reconcile(stale)
    after = kube.get("Workspace", "quiet", NAMESPACE) or {}
    assert after["spec"]["state"] == "Stopped" and after["status"]["stopReason"] == "Idle"
    assert len(culled_events(kube, "quiet")) == 1
