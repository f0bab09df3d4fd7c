"""Workspaces become pods with MIG devices, priority, a weighted GPU-equivalent cap, holds after
stop and a lifecycle. One lab for this module: an all-balanced H100 and an all-1g.10gb H100."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import pytest
import yaml

from labkeeper.testing.cluster import REPO_ROOT, NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration

HOLD = 6  # seconds a stopped workspace keeps its GPU in this module's policy


def module_policy() -> dict:
    policy = example_policy()
    policy["gpuHoldAfterStop"] = f"{HOLD}s"
    policy["stoppedRetention"] = "0s"
    for tier in policy["tiers"].values():
        tier["maxGpuEquivalents"] = 4
        tier["allowedProfiles"] = ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb", "full"]
    policy["tiers"]["student"]["preempt"] = False
    policy["tiers"]["faculty"]["preempt"] = True
    return policy


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    nodes = (NodeSpec("h100-balanced", "h100-balanced"), NodeSpec("h100-1g", "h100-all-1g"))
    with Lab(nodes, module_policy(), tmp_path_factory.mktemp("lab")) as running:
        yield running
        print(running.log_tail())


def pods_by_resource(lab: Lab) -> dict[tuple[str, str], int]:
    """Devices bound per node and resource, counting every pod the scheduler placed and not yet gone."""
    bound: dict[tuple[str, str], int] = {}
    for pod in lab.items("pods", "-A", "-l", "app.kubernetes.io/managed-by=labkeeper"):
        node = pod["spec"].get("nodeName")
        if not node or pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for resource, qty in pod["spec"]["containers"][0]["resources"]["limits"].items():
            if resource.startswith("nvidia.com/"):
                bound[(node, resource)] = bound.get((node, resource), 0) + int(qty)
    return bound


CAPACITY = {("h100-balanced", "nvidia.com/mig-1g.10gb"): 2, ("h100-balanced", "nvidia.com/mig-2g.20gb"): 1,
            ("h100-balanced", "nvidia.com/mig-3g.40gb"): 1, ("h100-1g", "nvidia.com/mig-1g.10gb"): 7}


def assert_never_overbound(lab: Lab) -> None:
    for key, used in pods_by_resource(lab).items():
        assert used <= CAPACITY.get(key, 0), f"{key} bound {used} times, capacity {CAPACITY.get(key, 0)}"


def delete_all_workspaces(lab: Lab) -> None:
    lab.kubectl("delete", "workspaces", "--all", "-A", "--wait=false")
    wait_for(lambda: not lab.items("pods", "-A", "-l", "app.kubernetes.io/managed-by=labkeeper"), timeout=60,
             what="all workspace pods gone")


def test_alices_example_workspace_runs_with_her_uid_home_caches_models_and_mig_slice(lab: Lab):
    lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "alice.yaml"))
    wait_for(lambda: lab.status("gpuuser", "alice").get("phase") == "Ready", what="alice Ready")
    lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "caches.yaml"), "-f",
                str(REPO_ROOT / "examples" / "models.yaml"))
    secret = lab.get("secret", "kubeconfig-alice", SYSTEM_NAMESPACE)
    alice_config = Path(lab.workdir) / "alice.kubeconfig"
    alice_config.write_bytes(base64.b64decode(secret["data"]["config"]))
    lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "workspace.yaml"), kubeconfig=alice_config)
    example = yaml.safe_load((REPO_ROOT / "examples" / "workspace.yaml").read_text())
    name = example["metadata"]["name"]
    status = lab.wait_phase(name, "alice", "Running", timeout=60)
    assert status["node"] == "h100-balanced" or status["node"] == "h100-1g"
    pod = lab.get("pod", status["podName"], "lab-alice")
    uid = lab.status("gpuuser", "alice")["uid"]
    assert pod["spec"]["securityContext"]["runAsUser"] == uid
    assert pod["spec"]["priorityClassName"] == "labkeeper-student"
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/home/alice"].get("readOnly") in (None, False)
    caches = [m for p, m in mounts.items() if "/cache/" in p]
    models = [m for p, m in mounts.items() if "/models/" in p]
    assert len(caches) == 5 and all(not m.get("readOnly") for m in caches)
    assert len(models) == 4
    # alice is a writer of the huggingface store (examples/models.yaml): read-write there, read-only elsewhere
    assert not mounts["/data/models/huggingface"].get("readOnly")
    assert all(m.get("readOnly") for p, m in mounts.items() if "/models/" in p and "huggingface" not in p)
    lab.kubectl("delete", "workspace", name, "-n", "lab-alice")
    delete_all_workspaces(lab)


def test_sixteen_users_race_for_eleven_slices_and_no_device_is_bound_twice(lab: Lab):
    users = [gpuuser(f"racer{i:02d}", "researcher") for i in range(16)]
    lab.add_users(*users)
    # 8 users for the balanced H100 (2 x 1g + 1 x 2g + 1 x 3g) and 8 for the all-1g one (7 slices)
    balanced = ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"] * 2
    docs = [workspace("race", f"racer{i:02d}", profile=balanced[i]) for i in range(8)]
    docs += [workspace("race", f"racer{i:02d}", profile="1g.10gb") for i in range(8, 16)]
    lab.apply(*docs)

    def settled():
        phases = [lab.status("workspace", "race", f"lab-racer{i:02d}").get("phase") for i in range(16)]
        return phases if phases.count("Running") == 11 else None

    for _ in range(10):
        assert_never_overbound(lab)
        time.sleep(0.3)
    phases = wait_for(settled, timeout=90, what="11 of 16 racing workspaces Running")
    assert_never_overbound(lab)
    waiting = [i for i, p in enumerate(phases) if p != "Running"]
    assert len(waiting) == 5
    for i in waiting:
        status = lab.status("workspace", "race", f"lab-racer{i:02d}")
        # waiting in the lab's queue, with no pod of its own for the scheduler to place
        assert status["phase"] == "Pending" and status["reason"] == "WaitingForDevice", status
        assert not lab.items("pods", "-n", f"lab-racer{i:02d}", "-l", "labkeeper.io/role=workspace")
    # a slice frees up: a waiting 1g.10gb racer starts on it
    runner = next(i for i in range(8, 16) if phases[i] == "Running")
    lab.kubectl("patch", "workspace", "race", "-n", f"lab-racer{runner:02d}", "--type=merge",
                "-p", '{"spec":{"state":"Stopped"}}')
    waiting_1g = [i for i in waiting if i >= 8 or balanced[i] == "1g.10gb"]
    wait_for(lambda: any(lab.status("workspace", "race", f"lab-racer{i:02d}").get("phase") == "Running"
                         for i in waiting_1g), timeout=60, what="a waiting racer to take the freed slice")
    assert_never_overbound(lab)
    delete_all_workspaces(lab)


def test_the_weighted_cap_admits_three_slices_and_refuses_the_fourth_with_the_numbers(lab: Lab):
    lab.add_users(gpuuser("capped", "researcher", limits={"maxGpuEquivalents": 0.5}))
    lab.apply(*(workspace(f"w{i}", "capped", profile="1g.10gb") for i in range(3)))
    for i in range(3):
        lab.wait_phase(f"w{i}", "capped", "Running")
    lab.apply(workspace("w3", "capped", profile="1g.10gb"))
    status = wait_for(lambda: (s := lab.status("workspace", "w3", "lab-capped")).get("reason") == "QuotaExceeded"
                      and s, what="fourth workspace QuotaExceeded")
    assert status["phase"] == "Pending"
    assert "0.43" in status["message"] and "0.14" in status["message"] and "0.50" in status["message"]
    events = lab.items("events", "-n", "lab-capped", "--field-selector", "reason=QuotaExceeded")
    assert events
    delete_all_workspaces(lab)


def test_a_workspace_waiting_on_the_cap_starts_when_its_user_deletes_a_running_one(lab: Lab):
    """The waiting workspace has no pod of its own to report the change: the deleted pod of another
    workspace is what must wake it."""
    lab.add_users(gpuuser("freed", "researcher", limits={"maxGpuEquivalents": 0.5}))
    lab.apply(*(workspace(f"w{i}", "freed", profile="1g.10gb") for i in range(3)))
    for i in range(3):
        lab.wait_phase(f"w{i}", "freed", "Running")
    lab.apply(workspace("w3", "freed", profile="1g.10gb"))
    wait_for(lambda: lab.status("workspace", "w3", "lab-freed").get("reason") == "QuotaExceeded",
             what="fourth workspace QuotaExceeded")
    lab.kubectl("delete", "workspace", "w0", "-n", "lab-freed", "--wait=false")
    lab.wait_phase("w3", "freed", "Running", timeout=30)
    assert_never_overbound(lab)
    delete_all_workspaces(lab)


def test_two_concurrent_applies_for_the_last_unit_start_exactly_one(lab: Lab):
    lab.add_users(gpuuser("lastunit", "researcher", limits={"maxGpuEquivalents": 3 / 7}))
    lab.apply(*(workspace(f"w{i}", "lastunit", profile="1g.10gb") for i in range(2)))
    for i in range(2):
        lab.wait_phase(f"w{i}", "lastunit", "Running")
    threads = [threading.Thread(target=lab.apply, args=(workspace(f"late{i}", "lastunit", profile="1g.10gb"),))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def both_decided():
        statuses = [lab.status("workspace", f"late{i}", "lab-lastunit") for i in range(2)]
        return statuses if all(s.get("phase") for s in statuses) and any(
            s.get("reason") == "QuotaExceeded" for s in statuses) else None

    # the one refused is told so (QuotaExceeded); the other got the last unit
    statuses = wait_for(both_decided, timeout=30, what="one late workspace refused for quota")
    phases = sorted(s["phase"] for s in statuses)
    assert phases.count("Pending") == 1, statuses
    pods = lab.items("pods", "-n", "lab-lastunit", "-l", "labkeeper.io/role=workspace")
    assert len(pods) == 3
    delete_all_workspaces(lab)


def test_faculty_preempts_a_student_but_a_non_preempting_tier_waits(lab: Lab):
    lab.add_users(gpuuser("stud", "student"), gpuuser("prof", "faculty"), gpuuser("res", "researcher"))
    lab.apply(workspace("big", "stud", profile="3g.40gb"))
    lab.wait_phase("big", "stud", "Running")
    policy = lab.policy
    researcher_preempts = policy["tiers"]["researcher"].get("preempt", False)
    if not researcher_preempts:
        lab.apply(workspace("big", "res", profile="3g.40gb"))
        # admission decided: it waits in the queue for a device rather than taking the student's
        waiting = wait_for(lambda: (s := lab.status("workspace", "big", "lab-res")).get("reason") == "WaitingForDevice"
                           and s, timeout=30, what="the researcher's workspace queued")
        assert waiting["phase"] == "Pending" and waiting.get("queue"), waiting
        assert lab.status("workspace", "big", "lab-stud")["phase"] == "Running"
        lab.kubectl("delete", "workspace", "big", "-n", "lab-res", "--wait=false")
    lab.apply(workspace("big", "prof", profile="3g.40gb"))
    lab.wait_phase("big", "prof", "Running", timeout=60)
    student = wait_for(lambda: (s := lab.status("workspace", "big", "lab-stud")).get("phase") in ("Preempted", "Pending")
                       and s, what="the student's workspace preempted")
    events = lab.items("events", "-n", "lab-stud", "--field-selector", "reason=Preempted,involvedObject.kind=Workspace")
    assert events, f"no Preempted event on the Workspace; student status {student}"
    lab.wait_phase("big", "stud", "Pending", timeout=30)
    delete_all_workspaces(lab)


def test_a_hold_keeps_the_gpu_for_a_quick_restart_then_releases_it(lab: Lab):
    lab.add_users(gpuuser("holder", "researcher"), gpuuser("waiter", "researcher"))
    lab.apply(workspace("exp", "holder", profile="2g.20gb"))
    lab.wait_phase("exp", "holder", "Running")
    lab.kubectl("patch", "workspace", "exp", "-n", "lab-holder", "--type=merge", "-p", '{"spec":{"state":"Stopped"}}')
    stopped = lab.wait_phase("exp", "holder", "Stopped")
    assert stopped.get("holdNode") == "h100-balanced" and stopped.get("holdUntil"), stopped
    lab.apply(workspace("exp", "waiter", profile="2g.20gb"))
    # admission decided: the held device is not offered to her, she waits in the queue
    waiting = wait_for(lambda: (s := lab.status("workspace", "exp", "lab-waiter")).get("reason") == "WaitingForDevice"
                       and s, timeout=30, what="the other user queued behind the hold")
    assert waiting["phase"] == "Pending" and "held" in waiting["message"], waiting
    # restart within the window: the held device comes back, the other user keeps waiting
    lab.kubectl("patch", "workspace", "exp", "-n", "lab-holder", "--type=merge", "-p", '{"spec":{"state":"Running"}}')
    lab.wait_phase("exp", "holder", "Running", timeout=30)
    # the device is the holder's pod's now: the waiter has none (her start only after the window, checked below)
    assert lab.status("workspace", "exp", "lab-waiter")["phase"] == "Pending"
    assert not lab.items("pods", "-n", "lab-waiter", "-l", "labkeeper.io/role=workspace")
    # stop again and let the window pass: the waiting user gets the device
    lab.kubectl("patch", "workspace", "exp", "-n", "lab-holder", "--type=merge", "-p", '{"spec":{"state":"Stopped"}}')
    started = time.monotonic()
    lab.wait_phase("exp", "waiter", "Running", timeout=HOLD + 30)
    assert time.monotonic() - started >= HOLD - 1, "the hold was released before its window ended"
    assert not lab.status("workspace", "exp", "lab-holder").get("holdNode")
    delete_all_workspaces(lab)


def test_a_sigkill_during_fifty_creations_ends_with_exactly_fifty_pods(lab: Lab):
    users = [gpuuser(f"churn{i}", "researcher") for i in range(10)]
    lab.add_users(*users)
    docs = [workspace(f"cpu{j}", f"churn{i}") for i in range(10) for j in range(5)]
    lab.apply(*docs)
    time.sleep(1.0)
    lab.operator.kill()
    lab.operator.start()

    def fifty_running():
        pods = lab.items("pods", "-A", "-l", "labkeeper.io/role=workspace")
        running = [p for p in pods if p["metadata"]["namespace"].startswith("lab-churn")
                   and p["status"].get("phase") == "Running"]
        return pods if len(running) == 50 else None

    pods = wait_for(fifty_running, timeout=180, interval=1.0, what="50 workspace pods Running")
    churn = [p for p in pods if p["metadata"]["namespace"].startswith("lab-churn")]
    keys = [(p["metadata"]["namespace"], p["metadata"]["labels"]["labkeeper.io/workspace"]) for p in churn]
    assert len(keys) == len(set(keys)) == 50
    for p in churn:
        owner = p["metadata"]["ownerReferences"][0]
        assert lab.get("workspace", owner["name"], p["metadata"]["namespace"])["metadata"]["uid"] == owner["uid"]
    delete_all_workspaces(lab)
