"""A power cut: every labkeeper process stops, the host loses its volatile state (accounts, the /home
links, profile.d), the node goes NotReady and comes back with no pods. Once everything restarts,
every workspace meant to run runs again, every home is intact, nobody is culled for the downtime and
no workspace loses runtime it had accumulated."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import pytest
from chaos_support import checksums, lab_with_agent, provisioned, write_thesis

from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import seed_host_etc, wait_for

pytestmark = pytest.mark.integration

NODE = "reboot-node"
IDLE = 15  # seconds: every workspace's idle timeout
REPORT = 2  # seconds: the policy's reportInterval
USERS = ("ada", "grace")
RUNNING = (("ada", "train"), ("ada", "notebook"), ("grace", "eval"))


def reboot_policy() -> dict:
    policy = example_policy()
    policy["defaults"].update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h"})
    for tier in policy["tiers"].values():
        tier.update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h", "maxWorkspaces": 6})
    policy.update({"gpuHoldAfterStop": "2s", "stoppedRetention": "0s"})
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": f"{REPORT}s", "checkInterval": "1s"})
    return policy


def total_runtime(status: dict) -> float:
    """Closed segments plus the open one, as the operator counts toward maxRuntime."""
    total = float(status.get("runtimeSeconds") or 0)
    if status.get("runningSince"):
        since = dt.datetime.strptime(status["runningSince"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        total += (dt.datetime.now(dt.UTC) - since).total_seconds()
    return total


def set_node_ready(lab: Lab, ready: bool) -> None:
    node = lab.get("node", NODE)
    conditions = [c for c in node["status"]["conditions"] if c["type"] != "Ready"]
    conditions.append({"type": "Ready", "status": "True" if ready else "False",
                       "reason": "KubeletReady" if ready else "NodeStatusUnknown", "message": "reboot test",
                       "lastHeartbeatTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    lab.kubectl("patch", "node", NODE, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"conditions": conditions}}))


def node_ready(lab: Lab) -> bool:
    node = lab.get("node", NODE)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


@pytest.fixture(scope="module")
def reboot_lab(tmp_path_factory):
    with lab_with_agent(tmp_path_factory.mktemp("reboot"), NODE, reboot_policy()) as pair:
        yield pair


def test_after_a_power_cut_running_workspaces_return_homes_are_intact_and_nothing_is_culled_or_forgotten(
        reboot_lab):
    lab, agent = reboot_lab
    root = agent.root
    lab.add_users(*(gpuuser(n) for n in USERS))
    wait_for(lambda: all(provisioned(lab, n, NODE) for n in USERS), timeout=60, what="homes provisioned")
    for i, name in enumerate(USERS):
        write_thesis(agent.data / "users" / name, i)
    homes = {name: checksums(agent.data / "users" / name) for name in USERS}
    lab.apply(*(workspace(ws, user) for user, ws in RUNNING), workspace("parked", "grace", state="Stopped"))
    old_pods = {ws: lab.wait_phase(ws, user, "Running", "IdleWarning", timeout=60)["podUID"] for user, ws in RUNNING}
    time.sleep(4)  # some runtime to lose
    before = {ws: total_runtime(lab.status("workspace", ws, f"lab-{user}")) for user, ws in RUNNING}
    assert all(t >= 3 for t in before.values()), before

    # the power cut: processes gone, volatile host state gone, node NotReady, no pods survive
    lab.operator.stop()
    agent.stop()
    seed_host_etc(root)
    shutil.rmtree(root / "home", ignore_errors=True)
    shutil.rmtree(root / "etc" / "profile.d", ignore_errors=True)
    # kwok plays the kubelet: stopped, it no longer heartbeats and the node can be marked NotReady
    kwok = lab.cluster.process("kwok")
    lab.cluster._terminate(kwok)
    lab.cluster.processes.remove(kwok)
    set_node_ready(lab, False)
    assert not node_ready(lab)
    lab.kubectl("delete", "pods", "-A", "-l", "app.kubernetes.io/managed-by=labkeeper", "--force",
                "--grace-period=0", "--wait=true")
    time.sleep(2)
    lab.cluster._start_kwok()
    wait_for(lambda: node_ready(lab), timeout=60, what="node Ready again")

    restarted = time.time()
    lab.operator.start()
    agent.start()
    # the status said Running all along: only a new pod, running, shows the workspace came back
    for user, ws in RUNNING:
        wait_for(lambda u=user, w=ws: (s := lab.status("workspace", w, f"lab-{u}")).get("podUID") not in
                 (None, old_pods[w]) and s.get("phase") in ("Running", "IdleWarning"), timeout=90,
                 what=f"{ws} running in a new pod")
        assert lab.get("pod", f"ws-{ws}", f"lab-{user}")["status"]["phase"] == "Running"
    wait_for(lambda: all(provisioned(lab, n, NODE) for n in USERS), timeout=60, what="homes provisioned again")
    wait_for(lambda: all((root / "home" / n).is_symlink() for n in USERS), timeout=30, what="/home links back")
    passwd = (root / "etc" / "passwd").read_text()
    for name in USERS:
        assert f"\n{name}:x:{lab.status('gpuuser', name)['uid']}:" in passwd
        assert checksums(agent.data / "users" / name) == homes[name], f"{name}'s home changed"
    assert (root / "etc" / "profile.d").is_dir()
    assert lab.status("workspace", "parked", "lab-grace")["phase"] == "Stopped"

    # within one idle timeout of the restart nobody is culled, and runtime only grows; the run the power cut
    # ended counts up to where the operator last recorded it watched (its Lease, renewed every second here)
    seen = {ws: t - REPORT for ws, t in before.items()}
    while time.time() - restarted < IDLE - 2:
        for user, ws in RUNNING:
            status = lab.status("workspace", ws, f"lab-{user}")
            assert not status.get("stopReason"), (ws, status, time.time() - restarted)
            now_total = total_runtime(status)
            assert now_total >= seen[ws] - 1, (ws, seen[ws], now_total)  # one second of timestamp resolution
            seen[ws] = max(seen[ws], now_total)
        time.sleep(0.5)
    # idle culling still works after the reboot: the deadline counts from the restart, not from before it
    for user, ws in RUNNING:
        stopped = wait_for(lambda u=user, w=ws: (s := lab.status("workspace", w, f"lab-{u}")).get("stopReason") and s,
                           timeout=IDLE + 20, what=f"{ws} culled once idle long enough")
        assert stopped["stopReason"] == "Idle", stopped
        # the power cut may cost up to a Lease renewal (less than a reportInterval), and a second of resolution
        assert stopped["runtimeSeconds"] >= before[ws] - REPORT - 1, (ws, before[ws], stopped["runtimeSeconds"])
