"""Runtime across a power cut (issue 17, point 4): a run that ended while no operator watched ends where the
operator before last knew it alive, not when the operator came back. No heartbeat is written per workspace: the
operator records in its leader Lease, at each renewal, until when it watched the lab (controller/liveness.py), and
its successor reads that record.

The operator runs as a process against the real control plane and is SIGKILLed; kwok plays the node. Its Lease
lasts 3 s and is renewed every second, so a run loses at most that much at a power cut and gains nothing of the
outage."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from labkeeper.controller.leader import RECORD_ANNOTATION
from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import wait_for

pytestmark = pytest.mark.integration

NODE = "outage-node"
REPORT = 2  # seconds: the policy's reportInterval
RENEWAL = 1  # seconds between the operator's Lease renewals (a third of its 3 s)
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


def lease_record(lab: Lab) -> dict:
    """What the operator recorded in its Lease at its last renewal."""
    lease = lab.get("lease", "labkeeper-operator", "labkeeper-system") or {}
    return json.loads(((lease.get("metadata") or {}).get("annotations") or {}).get(RECORD_ANNOTATION) or "{}")


def watched_until(lab: Lab) -> dt.datetime:
    """Until when the operator watched the lab, believing every node's kubelet, as it last recorded."""
    record = lease_record(lab)
    assert record["away"] == {}, record  # it believed every node's kubelet then
    return parse(record["watchedUntil"])


def assert_counted_up_to_the_kill(closed: int, before: dict, killed_at: dt.datetime, until: dt.datetime) -> None:
    """All it was seen to run, to within a renewal of the operator's Lease, and nothing of the outage."""
    ran = (killed_at - parse(before["runningSince"])).total_seconds()
    assert ran - RENEWAL - 3 <= closed <= ran + 1, (closed, ran, before)
    # exactly up to the last moment it was known alive: what the killed operator last recorded, or a status write
    # of the run's that came after it
    known = max(until, parse(before["lastSeenRunning"]))
    assert closed == int((known - parse(before["runningSince"])).total_seconds()), (closed, until, before)


def test_a_pod_lost_in_an_outage_counts_its_runtime_up_to_the_last_heartbeat_not_to_the_operators_return(outage_lab):
    lab = outage_lab
    ran_a_while(lab, "train")
    lab.operator.kill()
    killed_at = dt.datetime.now(dt.UTC)
    until = watched_until(lab)
    before = lab.status("workspace", "train", "lab-ada")
    # the power cut takes the node's pods with it
    old_uid = before["podUID"]
    lab.kubectl("delete", "pod", "ws-train", "-n", "lab-ada", "--force", "--grace-period=0", "--wait=true")
    time.sleep(OUTAGE)  # the outage itself: time that must not count
    restarted = dt.datetime.now(dt.UTC)
    lab.operator.start()

    after = wait_for(lambda: (s := lab.status("workspace", "train", "lab-ada")).get("podUID") not in (None, old_uid)
                     and s.get("phase") == "Running" and s, timeout=60, what="train running in a new pod")
    assert_counted_up_to_the_kill(after["runtimeSeconds"], before, killed_at, until)
    assert parse(after["runningSince"]) >= restarted.replace(microsecond=0), after


def test_containers_restarted_while_no_operator_watched_end_the_old_run_at_the_last_heartbeat(outage_lab):
    lab = outage_lab
    ran_a_while(lab, "notebook")
    lab.operator.kill()
    killed_at = dt.datetime.now(dt.UTC)
    until = watched_until(lab)
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
    assert_counted_up_to_the_kill(after["runtimeSeconds"], before, killed_at, until)
    # and the restarted operator records what it watches in its turn
    wait_for(lambda: (r := lease_record(lab)).get("watchedUntil") and parse(r["watchedUntil"]) >= rebooted_at
             and r["away"] == {}, timeout=30, what="the restarted operator's record, its node's kubelet believed")
