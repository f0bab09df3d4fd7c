"""Issue 15, sections 3 and 4, against a real API server and the operator as a process: a suspended or
offboarded user's GPUs go to the next in line at once (no hold for someone who cannot come back);
offboarding removes her namespace and workspaces and keeps the GPUUser as the record; a certificate from
before offboarding is worthless once she is re-added; `labctl admin user ls` shows what she uses."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration

RELEASED_WITHIN = 30  # seconds; the policy's hold after stop is 15 minutes
LABCTL = Path(sys.executable).parent / "labctl"


def labctl(*args: str, kubeconfig) -> subprocess.CompletedProcess:
    """The installed console script, as the admin runs it."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([str(LABCTL), *args], capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    policy = example_policy()
    policy["gpuHoldAfterStop"] = "15m"
    with Lab((NodeSpec("gpu-pair", "full-gpus"),), policy, tmp_path_factory.mktemp("offboard")) as running:
        yield running
        print(running.log_tail(120))


@pytest.fixture(autouse=True)
def no_workspaces_left(lab: Lab):
    yield
    lab.kubectl("delete", "workspaces", "--all", "-A", "--wait=false")
    wait_for(lambda: not lab.items("pods", "-A", "-l", "app.kubernetes.io/managed-by=labkeeper"), timeout=90,
             what="every workspace pod and hold gone")


def both_gpus_taken_and_one_waiting(lab: Lab, owner: str) -> None:
    """`owner` runs a workspace on each of the node's two GPUs; waiter's asks for one and waits."""
    lab.apply(workspace("a", owner, profile="full"), workspace("b", owner, profile="full"))
    lab.wait_phase("a", owner, "Running")
    lab.wait_phase("b", owner, "Running")
    lab.apply(workspace("next", "waiter", profile="full"))
    lab.wait_phase("next", "waiter", "Pending")


def kubeconfig_file(lab: Lab, user: str, path) -> str:
    secret = lab.get("secret", f"kubeconfig-{user}", SYSTEM_NAMESPACE)
    path.write_bytes(base64.b64decode(secret["data"]["config"]))
    return str(path)


def test_a_suspended_user_releases_her_gpus_at_once(lab: Lab):
    lab.add_users(gpuuser("sam"), gpuuser("waiter"))
    both_gpus_taken_and_one_waiting(lab, "sam")
    lab.kubectl("patch", "gpuuser", "sam", "--type=merge", "-p", json.dumps({"spec": {"state": "Suspended"}}))
    lab.wait_phase("next", "waiter", "Running", timeout=RELEASED_WITHIN)
    for name in ("a", "b"):
        stopped = lab.wait_phase(name, "sam", "Stopped")
        assert not any(key.startswith("hold") for key in stopped), stopped
        assert "held" not in stopped.get("message", ""), stopped


def test_offboarding_removes_namespace_and_workspaces_keeps_the_record_and_frees_the_gpus(lab: Lab):
    lab.add_users(gpuuser("dave"), gpuuser("waiter"))
    uid = lab.status("gpuuser", "dave")["uid"]
    both_gpus_taken_and_one_waiting(lab, "dave")
    result = labctl("admin", "user", "offboard", "dave", "--archive", kubeconfig=lab.cluster.kubeconfig)
    assert result.returncode == 0, result.stderr

    lab.wait_phase("next", "waiter", "Running", timeout=RELEASED_WITHIN)
    wait_for(lambda: lab.get("namespace", "lab-dave") is None, timeout=60, what="namespace lab-dave removed")
    assert lab.items("workspaces", "-A", "--field-selector", "metadata.namespace=lab-dave") == []
    record = wait_for(lambda: (u := lab.get("gpuuser", "dave")) and u["status"].get("phase") == "Offboarded" and u,
                      timeout=30, what="dave Offboarded")
    assert record["status"]["uid"] == uid and "namespace" not in record["status"]
    ready = next(c for c in record["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Offboarded" and f"uid {uid} stays reserved" in ready["message"]
    ledger = lab.get("configmap", "labkeeper-uid-ledger", SYSTEM_NAMESPACE)
    assert ledger["data"]["dave"] == str(uid)
    assert lab.get("secret", "kubeconfig-dave", SYSTEM_NAMESPACE) is None


def test_a_certificate_from_before_offboarding_is_forbidden_once_she_is_re_added(lab: Lab, tmp_path):
    lab.add_users(gpuuser("erin"))
    old = kubeconfig_file(lab, "erin", tmp_path / "erin-old.kubeconfig")
    can_list = ("auth", "can-i", "list", "workspaces.labkeeper.io", "-n", "lab-erin")
    assert lab.kubectl(*can_list, kubeconfig=old, check=False).stdout.strip() == "yes"

    lab.kubectl("patch", "gpuuser", "erin", "--type=merge", "-p", json.dumps({"spec": {"state": "Offboarded"}}))
    wait_for(lambda: lab.get("namespace", "lab-erin") is None, timeout=60, what="namespace lab-erin removed")
    lab.kubectl("patch", "gpuuser", "erin", "--type=merge", "-p", json.dumps({"spec": {"state": "Active"}}))
    wait_for(lambda: lab.status("gpuuser", "erin").get("phase") == "Ready", timeout=90, what="erin Ready again")
    new = kubeconfig_file(lab, "erin", tmp_path / "erin-new.kubeconfig")

    assert lab.kubectl(*can_list, kubeconfig=new, check=False).stdout.strip() == "yes"
    assert lab.kubectl(*can_list, kubeconfig=old, check=False).stdout.strip() == "no"
    refused = lab.kubectl("get", "workspaces", "-n", "lab-erin", kubeconfig=old, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr and 'User "erin"' in refused.stderr
    assert lab.kubectl("get", "gpuuser", "erin", kubeconfig=old, check=False).returncode != 0
    assert lab.kubectl("get", "gpuuser", "erin", kubeconfig=new, check=False).returncode == 0


def user_row(lab: Lab, name: str) -> list[str]:
    result = labctl("admin", "user", "ls", kubeconfig=lab.cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    return next(line.split() for line in result.stdout.splitlines() if line.split()[:1] == [name])


def test_admin_user_ls_shows_the_gpus_and_workspaces_she_is_using_within_seconds(lab: Lab):
    lab.add_users(gpuuser("uma", "faculty"))
    assert user_row(lab, "uma")[5:7] == ["0/4", "0/5"]
    lab.apply(workspace("a", "uma", profile="full"), workspace("b", "uma", profile="full"))
    lab.wait_phase("a", "uma", "Running")
    lab.wait_phase("b", "uma", "Running")
    row = wait_for(lambda: (r := user_row(lab, "uma"))[5:7] == ["2/4", "2/5"] and r, timeout=10,
                   what="uma at 2/4 GPU equivalents and 2/5 workspaces")
    assert row[7] == "-", "no agent runs in this lab, so no node has measured her home"

    # nothing changes: nothing is written
    version = lab.get("gpuuser", "uma")["metadata"]["resourceVersion"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert lab.get("gpuuser", "uma")["metadata"]["resourceVersion"] == version
        time.sleep(0.3)

    # a stopped workspace's GPU is held for her: still hers, but no longer a running workspace
    lab.kubectl("patch", "workspace", "b", "-n", "lab-uma", "--type=merge", "-p", '{"spec":{"state":"Stopped"}}')
    wait_for(lambda: user_row(lab, "uma")[5:7] == ["2/4", "1/5"], timeout=10,
             what="uma at 2/4 (one held) and 1/5 after stopping one")
    lab.kubectl("delete", "workspace", "b", "-n", "lab-uma", "--wait=false")
    wait_for(lambda: user_row(lab, "uma")[5:7] == ["1/4", "1/5"], timeout=10,
             what="uma back at 1/4 and 1/5 after deleting the stopped one")
    usage = lab.status("gpuuser", "uma")["usage"]
    assert usage == {"gpuEquivalents": 1, "workspaces": 1}
