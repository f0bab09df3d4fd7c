"""Runtime across a power cut (issue 17, point 4): a run that ended while no operator watched ends at
status.lastSeenRunning, the operator's last sight of its pod running, not when the operator came back.

The operator runs as a process against the real control plane and is SIGKILLed; kwok plays the node. The
heartbeat is due every reportInterval (2s here), so a run loses at most that much at a power cut and gains
nothing of the outage."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import wait_for

pytestmark = pytest.mark.integration

NODE = "outage-node"
REPORT = 2  # seconds: the policy's reportInterval, how old the heartbeat may be
OUTAGE = 10  # seconds without an operator


def outage_policy() -> dict:
    policy = example_policy()
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": f"{REPORT}s", "checkInterval": "1s"})
    return policy


def parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def outage_lab(tmp_path_factory):
    with Lab((NodeSpec(NODE, "h100-balanced"),), outage_policy(), tmp_path_factory.mktemp("outage")) as lab:
        lab.add_users(gpuuser("ada"))
        try:
            yield lab
        finally:
            print(lab.log_tail())


def ran_a_while(lab: Lab, name: str) -> dict:
    """Running for 5 s: runtime the outage must not add to."""
    lab.apply(workspace(name, "ada", idleTimeout="1h"))
    return wait_for(lambda: (s := lab.status("workspace", name, "lab-ada")).get("runningSince")
                    and dt.datetime.now(dt.UTC) - parse(s["runningSince"]) >= dt.timedelta(seconds=5) and s,
                    timeout=60, what=f"{name} running for 5 s")


def assert_counted_up_to_the_kill(closed: int, before: dict, killed_at: dt.datetime) -> None:
    """All it was seen to run, to within a heartbeat, and nothing of the outage."""
    ran = (killed_at - parse(before["runningSince"])).total_seconds()
    assert ran - REPORT - 3 <= closed <= ran + 1, (closed, ran, before)
    # exactly up to the last heartbeat
    assert closed == int((parse(before["lastSeenRunning"]) - parse(before["runningSince"])).total_seconds()), before


def test_a_pod_lost_in_an_outage_counts_its_runtime_up_to_the_last_heartbeat_not_to_the_operators_return(outage_lab):
    lab = outage_lab
    ran_a_while(lab, "train")
    lab.operator.kill()
    killed_at = dt.datetime.now(dt.UTC)
    before = lab.status("workspace", "train", "lab-ada")
    # the power cut takes the node's pods with it
    old_uid = before["podUID"]
    lab.kubectl("delete", "pod", "ws-train", "-n", "lab-ada", "--force", "--grace-period=0", "--wait=true")
    time.sleep(OUTAGE)  # the outage itself: time that must not count
    restarted = dt.datetime.now(dt.UTC)
    lab.operator.start()

    after = wait_for(lambda: (s := lab.status("workspace", "train", "lab-ada")).get("podUID") not in (None, old_uid)
                     and s.get("phase") == "Running" and s, timeout=60, what="train running in a new pod")
    assert_counted_up_to_the_kill(after["runtimeSeconds"], before, killed_at)
    assert parse(after["runningSince"]) >= restarted.replace(microsecond=0), after


def test_containers_restarted_while_no_operator_watched_end_the_old_run_at_the_last_heartbeat(outage_lab):
    lab = outage_lab
    ran_a_while(lab, "notebook")
    lab.operator.kill()
    killed_at = dt.datetime.now(dt.UTC)
    before = lab.status("workspace", "notebook", "lab-ada")
    time.sleep(OUTAGE)
    # after a reboot the kubelet starts the same pod's containers again: the pod object never left
    pod = lab.get("pod", "ws-notebook", "lab-ada")
    rebooted_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    statuses = pod["status"]["containerStatuses"]
    for cs in statuses:
        cs["state"] = {"running": {"startedAt": fmt(rebooted_at)}}
        cs["restartCount"] = int(cs.get("restartCount") or 0) + 1
    lab.kubectl("patch", "pod", "ws-notebook", "-n", "lab-ada", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"containerStatuses": statuses}}))
    lab.operator.start()

    after = wait_for(lambda: (s := lab.status("workspace", "notebook", "lab-ada")).get("runningSince")
                     != before["runningSince"] and s, timeout=60, what="notebook's run counted from its new start")
    assert after["podUID"] == before["podUID"]
    assert parse(after["runningSince"]) == rebooted_at, (after, rebooted_at)
    assert_counted_up_to_the_kill(after["runtimeSeconds"], before, killed_at)
    # and the heartbeat goes on from the new operator
    wait_for(lambda: parse(lab.status("workspace", "notebook", "lab-ada")["lastSeenRunning"]) >= rebooted_at,
             timeout=30, what="a heartbeat from the restarted operator")
