"""The lab's queue for GPU devices, on one balanced H100 (2 x 1g.10gb + 2g.20gb + 3g.40gb): a held slice
goes to nobody but its holder, whoever waits, and waiting workspaces start in the order they began to wait,
also across an operator restart. Real API server, scheduler and kwok node."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import wait_for

pytestmark = pytest.mark.integration

HOLD = 20  # seconds a stopped workspace keeps its slice in this module's policy
SLICE = "nvidia.com/mig-1g.10gb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    policy = example_policy()
    policy.update({"gpuHoldAfterStop": f"{HOLD}s", "stoppedRetention": "0s"})
    for tier in policy["tiers"].values():
        tier["allowedProfiles"] = ["1g.10gb", "2g.20gb", "3g.40gb"]
    with Lab((NodeSpec("h100", "h100-balanced"),), policy, tmp_path_factory.mktemp("lab")) as running:
        running.add_users(*(gpuuser(n, "researcher") for n in ("frank", "grace", "ivan", "yvonne", "xavier")))
        yield running
        print(running.log_tail())


def set_state(lab: Lab, user: str, state: str, name: str = "slice") -> None:
    lab.kubectl("patch", "workspace", name, "-n", f"lab-{user}", "--type=merge", "-p",
                f'{{"spec":{{"state":"{state}"}}}}')


def pods_of(lab: Lab, user: str) -> list[dict]:
    return lab.items("pods", "-n", f"lab-{user}", "-l", "labkeeper.io/role=workspace")


def slices_bound(lab: Lab) -> int:
    return sum(1 for p in lab.items("pods", "-A", "-l", "labkeeper.io/role=workspace")
               if p["spec"].get("nodeName") and SLICE in p["spec"]["containers"][0]["resources"]["limits"])


def events(lab: Lab, user: str, reason: str) -> list[dict]:
    return lab.items("events", "-n", f"lab-{user}", "--field-selector",
                     f"reason={reason},involvedObject.kind=Workspace")


def stamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def both_slices_taken(lab: Lab) -> None:
    """frank and grace each run a workspace on one of the node's two 1g.10gb slices."""
    lab.apply(workspace("slice", "frank", profile="1g.10gb"), workspace("slice", "grace", profile="1g.10gb"))
    lab.wait_phase("slice", "frank", "Running")
    lab.wait_phase("slice", "grace", "Running")


def clear(lab: Lab) -> None:
    lab.kubectl("delete", "workspaces", "--all", "-A", "--wait=false")
    wait_for(lambda: not lab.items("pods", "-A", "-l", "labkeeper.io/role=workspace")
             and not lab.items("workspaces", "-A"), timeout=60, what="all workspaces and their pods gone")


def test_a_held_slice_is_not_given_to_a_queued_rival_and_its_holder_gets_it_back(lab: Lab):
    both_slices_taken(lab)
    lab.apply(workspace("slice", "ivan", profile="1g.10gb"))
    waiting = wait_for(lambda: (s := lab.status("workspace", "slice", "lab-ivan")).get("reason") == "WaitingForDevice"
                       and s, what="ivan waiting for a device")
    # the lab's words, not the scheduler's; an Event when it began; and no pod for the scheduler to place
    assert waiting["phase"] == "Pending" and waiting.get("waitingSince"), waiting
    assert waiting["message"] == "no free 1g.10gb slice (2 in use); you are next", waiting
    assert events(lab, "ivan", "Waiting"), "no Waiting event on ivan's workspace"
    assert pods_of(lab, "ivan") == []

    set_state(lab, "frank", "Stopped")
    stopped = lab.wait_phase("slice", "frank", "Stopped")
    assert stopped["holdNode"] == "h100" and stopped["holdResource"] == SLICE and stopped.get("holdUntil"), stopped
    assert f"held on h100 until {stopped['holdUntil']}" in stopped["message"], stopped
    # frank's pod is gone: the scheduler sees a free slice, the moment a queued pod used to take it
    wait_for(lambda: not pods_of(lab, "frank"), what="frank's pod gone")
    held_until = stamp(stopped["holdUntil"])
    message = wait_for(lambda: "1 held until" in (m := lab.status("workspace", "slice", "lab-ivan").get("message", ""))
                       and m, timeout=HOLD - 2, what="ivan's queue message naming the hold")
    assert message == f"no free 1g.10gb slice (1 in use, 1 held until {held_until:%H:%M:%S} UTC); you are next"
    assert pods_of(lab, "ivan") == [] and slices_bound(lab) == 1

    # frank comes back within the window: his slice, although ivan has waited longer
    set_state(lab, "frank", "Running")
    running = lab.wait_phase("slice", "frank", "Running", timeout=HOLD)
    assert running["node"] == "h100" and not running.get("holdNode"), running
    assert pods_of(lab, "ivan") == [] and not events(lab, "ivan", "Starting")
    assert lab.status("workspace", "slice", "lab-ivan")["reason"] == "WaitingForDevice"

    # frank stops again and lets the hold run out: then, and only then, ivan starts
    set_state(lab, "frank", "Stopped")
    second = lab.wait_phase("slice", "frank", "Stopped")
    lab.wait_phase("slice", "ivan", "Running", timeout=HOLD + 30)
    started = events(lab, "ivan", "Starting")
    assert len(started) == 1
    assert stamp(started[0]["firstTimestamp"]) >= stamp(second["holdUntil"]), (started[0], second)
    released = events(lab, "frank", "HoldReleased")
    assert released, "frank was not told his hold was released"
    assert not lab.status("workspace", "slice", "lab-frank").get("holdNode")
    assert slices_bound(lab) == 2
    clear(lab)


def test_waiting_workspaces_start_in_the_order_they_began_to_wait_across_an_operator_restart(lab: Lab):
    both_slices_taken(lab)
    # yvonne begins to wait first; xavier after her (and before her in the alphabet)
    lab.apply(workspace("slice", "yvonne", profile="1g.10gb"))
    first = wait_for(lambda: lab.status("workspace", "slice", "lab-yvonne").get("waitingSince"), what="yvonne waiting")
    lab.apply(workspace("slice", "xavier", profile="1g.10gb"))
    second = wait_for(lambda: (s := lab.status("workspace", "slice", "lab-xavier")).get("waitingSince") and s,
                      what="xavier waiting")
    assert stamp(second["waitingSince"]) > stamp(first)
    assert second["message"] == "no free 1g.10gb slice (2 in use); 1 workspace ahead of you", second

    # the order is the API's, not the operator's memory
    lab.operator.kill()
    lab.operator.start()
    # grace's workspace goes away (no hold for a deleted workspace): the freed slice goes to yvonne
    lab.kubectl("delete", "workspace", "slice", "-n", "lab-grace", "--wait=false")
    lab.wait_phase("slice", "yvonne", "Running", timeout=60)
    assert pods_of(lab, "xavier") == []
    wait_for(lambda: lab.status("workspace", "slice", "lab-xavier").get("message")
             == "no free 1g.10gb slice (2 in use); you are next", what="xavier first in line")
    assert lab.status("workspace", "slice", "lab-yvonne").get("waitingSince") is None
    assert slices_bound(lab) == 2
    clear(lab)


def test_a_hold_taken_by_a_pod_the_lab_did_not_admit_is_reported_lost_with_a_warning(lab: Lab):
    both_slices_taken(lab)
    set_state(lab, "frank", "Stopped")
    assert lab.wait_phase("slice", "frank", "Stopped").get("holdNode") == "h100"
    wait_for(lambda: not pods_of(lab, "frank"), what="frank's pod gone")
    # someone outside the lab's admission (an admin's test pod, an operator's validator) takes the slice
    intruder = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intruder", "namespace": "default"},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": "h100"}, "automountServiceAccountToken": False,
                         "containers": [{"name": "c", "image": "busybox",
                                         "resources": {"limits": {SLICE: "1"}, "requests": {SLICE: "1"}}}]}}
    lab.kubectl("apply", "-f", "-", input=json.dumps(intruder))
    try:
        wait_for(lambda: (lab.get("pod", "intruder", "default") or {}).get("spec", {}).get("nodeName"),
                 what="the intruder bound")
        lost = wait_for(lambda: (s := lab.status("workspace", "slice", "lab-frank")).get("reason") == "HoldLost" and s,
                        timeout=HOLD - 4, what="frank told his hold is lost")
        # never a "held until" that is false: the record is gone, the status and a Warning say why
        assert not lost.get("holdNode") and not lost.get("holdUntil"), lost
        assert "1g.10gb slice held on h100 until" in lost["message"], lost
        assert lost["message"].endswith("was lost: h100 offers 2 and pods now use 2"), lost
        warning = events(lab, "frank", "HoldLost")
        assert warning and warning[0]["type"] == "Warning", warning
        # frank asks again: he waits like anyone else
        set_state(lab, "frank", "Running")
        waiting = wait_for(lambda: (s := lab.status("workspace", "slice", "lab-frank")).get("reason")
                           == "WaitingForDevice" and s, what="frank waiting")
        assert waiting["message"] == "no free 1g.10gb slice (2 in use); you are next", waiting
        assert pods_of(lab, "frank") == []
    finally:
        lab.kubectl("delete", "pod", "intruder", "-n", "default", "--wait=false")
    # nothing of the lab's watches that pod: the waiting workspace's own periodic pass finds the slice
    lab.wait_phase("slice", "frank", "Running", timeout=45)
    clear(lab)


def test_a_hold_pod_left_by_an_older_labkeeper_becomes_a_record_its_holder_gets_back(lab: Lab):
    lab.apply(workspace("slice", "grace", profile="1g.10gb"), workspace("legacy", "frank", profile="1g.10gb",
                                                                        state="Stopped"))
    lab.wait_phase("slice", "grace", "Running")
    lab.wait_phase("legacy", "frank", "Stopped")
    # what an older labkeeper left after frank's stop: a placeholder pod keeping his slice
    hold_pod = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "hold-legacy", "namespace": "lab-frank",
                             "labels": {"app.kubernetes.io/managed-by": "labkeeper", "labkeeper.io/user": "frank",
                                        "labkeeper.io/workspace": "legacy", "labkeeper.io/role": "hold"}},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": "h100"}, "priorityClassName": "labkeeper-hold",
                         "automountServiceAccountToken": False,
                         "containers": [{"name": "hold", "image": "pause", "resources": {
                             "limits": {SLICE: "1", "cpu": "1m", "memory": "1Mi"},
                             "requests": {SLICE: "1", "cpu": "1m", "memory": "1Mi"}}}]}}
    lab.kubectl("apply", "-f", "-", input=json.dumps(hold_pod))
    adopted = wait_for(lambda: (s := lab.status("workspace", "legacy", "lab-frank")).get("holdNode") and s,
                       what="the hold pod adopted as a record")
    assert (adopted["holdNode"], adopted["holdResource"], adopted["holdCount"]) == ("h100", SLICE, 1), adopted
    wait_for(lambda: lab.get("pod", "hold-legacy", "lab-frank") is None, what="the hold pod gone")
    lab.apply(workspace("slice", "ivan", profile="1g.10gb"))
    waiting = wait_for(lambda: (s := lab.status("workspace", "slice", "lab-ivan")).get("reason") == "WaitingForDevice"
                       and s, what="ivan waiting")
    assert "1 held until" in waiting["message"], waiting
    set_state(lab, "frank", "Running", name="legacy")
    assert lab.wait_phase("legacy", "frank", "Running", timeout=HOLD)["node"] == "h100"
    assert pods_of(lab, "ivan") == []
    clear(lab)
