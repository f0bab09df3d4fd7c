"""An admin's mistakes must not stop the lab (issue 22). She breaks the lab policy and fixes it, field by field:
each field of the student tier set to null, a negative number and a wrong type in turn. The operator and the
agent keep a whole policy in force (the last good one, or the new one where the models accept it), say so on
the ConfigMap and in their metrics, never change the host for a refused policy, and once the policy is fixed a
new workspace runs within seconds. She gives a second cache the path of the first: the first keeps it, on the
host and in every pod, and new workspaces still start. One cluster, one operator, one agent throughout."""

from __future__ import annotations

import copy
import json
import subprocess
import time
import urllib.request

import pytest
import yaml

from labkeeper.api.policy import load_policy
from labkeeper.testing.cluster import NodeSpec, free_port
from labkeeper.testing.lab import API_VERSION, Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, AgentProcess, wait_for

pytestmark = pytest.mark.integration

NODE = "policy-node"
LAB_GID = 3000  # not the built-in default (2000): a policy that fell back to the defaults would show on the host
STUDENT = {"maxGpuEquivalents": 1, "cpu": "4", "memory": "8Gi", "maxWorkspaces": 3, "idleTimeout": "2h",
           "maxRuntime": "24h", "allowedProfiles": ["1g.10gb", "2g.20gb"], "allowedImages": ["busybox*", "lab/*"],
           "priority": 10000, "preempt": False}
WRONG_TYPE = {"maxGpuEquivalents": "two", "cpu": ["4"], "memory": {"gi": 8}, "maxWorkspaces": "three",
              "idleTimeout": 7200, "maxRuntime": ["24h"], "allowedProfiles": "1g.10gb", "allowedImages": "busybox",
              "priority": "high", "preempt": "sometimes"}
ROUNDS = [(field, value) for field in STUDENT for value in (None, -1, WRONG_TYPE[field])]
RUNNING_WITHIN = 10.0  # seconds from the fixed policy to a new workspace Running


def good_policy() -> dict:
    policy = example_policy()
    policy["labUsersGid"] = LAB_GID
    policy["tiers"]["student"] = dict(STUDENT)
    return policy


def broken(field: str, value) -> dict:
    policy = good_policy()
    policy["tiers"]["student"] = copy.deepcopy(STUDENT) | {field: value}
    return policy


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split(" ")[0] == name]
    assert values, f"no {name} among the metrics on port {port}"
    return values[0]


def said(port: int) -> float:
    """How many policy texts a process has taken a position on: each one is either refused or put in force."""
    return metric(port, "labkeeper_policy_rejected_total") + metric(port, "labkeeper_policy_generation")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("policy")
    operator_port, agent_port = free_port(), free_port()
    with Lab((NodeSpec(NODE, "h100-balanced"),), good_policy(), workdir / "lab",
             operator_args=("--metrics-port", str(operator_port))) as running:
        agent = AgentProcess(running.cluster.kubeconfig, workdir / "host", NODE, "--sampler", "none",
                             "--resync", "5", "--metrics-port", str(agent_port)).start()
        running.ports = (operator_port, agent_port)
        running.agent = agent
        try:
            running.add_users(gpuuser("ada"))
            running.apply({"apiVersion": API_VERSION, "kind": "SharedCache", "metadata": {"name": "pip"},
                           "spec": {"type": "pip", "path": "cache/pip"}})
            yield running
        finally:
            agent.kill()
            print(running.log_tail(120))
            print(agent.log_tail())


def cache_group(lab: Lab) -> tuple[int | None, str]:
    """The pip cache's owning group and its ACL, numerically, as the agent left them on the host."""
    path = lab.agent.data / "cache" / "pip"
    if not path.is_dir():
        return None, ""
    acl = subprocess.run(["getfacl", "-n", "-p", str(path)], capture_output=True, text=True, check=True).stdout
    return path.stat().st_gid, acl


def lab_group_gid(lab: Lab) -> str | None:
    """lab-users' gid in the host's /etc/group, as the agent wrote it."""
    group = lab.agent.root / "etc" / "group"
    rows = [line.split(":") for line in group.read_text().splitlines()] if group.exists() else []
    return next((row[2] for row in rows if row[0] == "lab-users"), None)


def provisioned(lab: Lab) -> bool:
    group, acl = cache_group(lab)
    return group == LAB_GID and f"group:{LAB_GID}:rwx" in acl and f"default:group:{LAB_GID}:rwx" in acl


def test_the_agent_made_lab_users_with_the_policys_gid_from_its_first_pass(lab: Lab):
    wait_for(lambda: provisioned(lab), timeout=60, what=lambda: f"pip cache group {LAB_GID}\n{lab.agent.log_tail()}")
    assert lab_group_gid(lab) == str(LAB_GID), lab.agent.log_tail()


def policy_events(lab: Lab, component: str) -> list[dict]:
    events = json.loads(lab.kubectl("get", "events", "-n", SYSTEM_NAMESPACE, "-o", "json", "--field-selector",
                                    "involvedObject.kind=ConfigMap,involvedObject.name=labkeeper-policy").stdout)
    return [e for e in events["items"] if (e.get("source") or {}).get("component") == component]


def set_and_wait_until_read(lab: Lab, policy: dict, what: str) -> None:
    """Both have read it when each has refused it or put it in force, whole."""
    before = [said(port) for port in lab.ports]
    lab.set_policy(policy)
    wait_for(lambda: all(said(port) > seen for port, seen in zip(lab.ports, before, strict=True)), timeout=10,
             what=f"{what} read by the operator and the agent")


def test_every_field_of_a_tier_broken_and_fixed_leaves_a_lab_where_a_new_workspace_runs_at_once(lab: Lab):
    operator_port, agent_port = lab.ports
    wait_for(lambda: provisioned(lab), timeout=60, what=lambda: f"pip cache group {LAB_GID}\n"
             f"{lab.agent.log_tail()}")
    _, acl = cache_group(lab)
    slow = []
    for index, (field, value) in enumerate(ROUNDS):
        set_and_wait_until_read(lab, broken(field, value), f"{field}={value!r}")
        assert cache_group(lab) == (LAB_GID, acl), f"{field}={value!r} changed the pip cache on the host"
        refused = metric(operator_port, "labkeeper_policy_refused")
        assert refused == metric(agent_port, "labkeeper_policy_refused"), \
            f"{field}={value!r}: operator and agent disagree on whether it is valid"
        # a workspace asked for while the broken policy is there: it may wait, but it must not be forgotten
        during = f"d{index}"
        lab.apply(workspace(during, "ada", state="Running"))

        lab.set_policy(good_policy())
        fixed = time.monotonic()
        after = f"a{index}"
        lab.apply(workspace(after, "ada", state="Running"))
        for name in (during, after):
            lab.wait_phase(name, "ada", "Running", timeout=RUNNING_WITHIN)
        slow.append((time.monotonic() - fixed, field, value))
        assert metric(operator_port, "labkeeper_policy_refused") == 0
        assert cache_group(lab) == (LAB_GID, acl) and f"group:{LAB_GID}:rwx" in acl, \
            f"{field}={value!r} changed the pip cache on the host:\n{cache_group(lab)[1]}"
        assert lab_group_gid(lab) == str(LAB_GID), f"{field}={value!r} changed lab-users' gid on the host"
        lab.kubectl("delete", "workspace", during, after, "-n", "lab-ada", "--wait=false")
        wait_for(lambda: not lab.items("pods", "-n", "lab-ada", "-l", "app.kubernetes.io/managed-by=labkeeper"),
                 timeout=30, what="the round's pods gone")
    print("slowest rounds (s from the fix to both Running):", sorted(slow, key=lambda r: r[0], reverse=True)[:3])

    for component, who in (("labkeeper-operator", "the operator"), ("labkeeper-agent", f"{NODE}: ")):
        events = policy_events(lab, component)
        refusals = [e for e in events if e["reason"] == "InvalidPolicy"]
        assert refusals and all(e["type"] == "Warning" and "stays in force" in e["message"] for e in refusals)
        assert any("tiers.student.maxWorkspaces" in e["message"] and "(got -1)" in e["message"] for e in refusals)
        assert any(e["reason"] == "PolicyApplied" for e in events), who
    assert metric(operator_port, "labkeeper_policy_rejected_total") == metric(agent_port,
                                                                              "labkeeper_policy_rejected_total")


def test_a_second_cache_on_the_first_ones_path_is_left_out_and_new_workspaces_still_start(lab: Lab):
    wait_for(lambda: provisioned(lab), timeout=60, what="pip cache provisioned")
    _, acl_before = cache_group(lab)
    # a writer list of its own: were it provisioned, the shared directory's ACL would change
    lab.apply({"apiVersion": API_VERSION, "kind": "SharedCache", "metadata": {"name": "pip-again"},
               "spec": {"type": "custom", "path": "cache/pip", "env": [{"name": "OTHER_CACHE", "value": "$(PATH)"}],
                        "writers": {"users": ["ada"]}}})

    def refused_on_the_node():
        nodes = lab.status("sharedcache", "pip-again").get("nodes") or []
        return next((n for n in nodes if n["node"] == NODE and n["state"] == "Failed"), None)

    entry = wait_for(refused_on_the_node, timeout=30, what=lambda: f"pip-again Failed on {NODE}\n"
                     f"{lab.agent.log_tail()}")
    assert "is already the path of SharedCache pip" in entry["message"], entry
    lab.apply(workspace("late", "ada", state="Running"))
    lab.wait_phase("late", "ada", "Running", timeout=RUNNING_WITHIN)
    pod = lab.get("pod", "ws-late", "lab-ada")
    container = pod["spec"]["containers"][0]
    paths = [m["mountPath"] for m in container["volumeMounts"]]
    assert paths.count("/data/cache/pip") == 1 and len(paths) == len(set(paths)), paths
    assert "OTHER_CACHE" not in {e["name"] for e in container["env"]}
    left_out = [e for e in lab.items("events", "-n", "lab-ada", "--field-selector",
                                     "involvedObject.name=late,reason=TreeLeftOut")]
    assert left_out and "SharedCache pip-again: spec.path 'cache/pip' is already the path of SharedCache pip" \
        in left_out[-1]["message"]
    assert cache_group(lab) == (LAB_GID, acl_before), "the second cache changed the first one's directory"
    lab.kubectl("delete", "workspace", "late", "-n", "lab-ada", "--wait=false")
    lab.kubectl("delete", "sharedcache", "pip-again", "--wait=false")


def copy_text(lab: Lab) -> str | None:
    copy_ = lab.get("configmap", "labkeeper-policy-last-good", SYSTEM_NAMESPACE)
    return ((copy_ or {}).get("data") or {}).get("policy.yaml")


def metric_once_up(port: int, name: str) -> float | None:
    """The metric, or None while a restarted process has not opened its port or registered the family yet."""
    try:
        return metric(port, name)
    except (OSError, AssertionError):
        return None


def restart(lab: Lab, *, operator: bool = True) -> None:
    """A power cut for the lab's processes: SIGKILL, then start again with the same arguments."""
    if operator:
        lab.operator.kill()
    lab.agent.kill()
    if operator:
        lab.operator.start()
    lab.agent.start()


def test_a_restart_while_the_policy_is_broken_runs_on_the_last_good_policy_and_never_on_the_defaults(lab: Lab):
    operator_port, agent_port = lab.ports
    wait_for(lambda: provisioned(lab), timeout=60, what="pip cache provisioned")
    _, acl = cache_group(lab)
    tighter = good_policy()
    tighter["tiers"]["student"]["cpu"] = "3"  # a text of its own: the operator keeps it as the last good copy
    set_and_wait_until_read(lab, tighter, "a new good policy")
    wait_for(lambda: copy_text(lab) and load_policy(copy_text(lab)) == load_policy(yaml.safe_dump(tighter)),
             timeout=10, what="the operator's last good copy of the policy in force")
    wait_for(lambda: lab.status("gpuuser", "ada").get("effectiveLimits", {}).get("cpu", {}).get("value") == "3",
             timeout=10, what="ada's cpu limit 3 from the new policy")

    set_and_wait_until_read(lab, broken("maxWorkspaces", -1), "a broken policy")
    restart(lab)
    wait_for(lambda: metric_once_up(operator_port, "labkeeper_policy_generation") == 1, timeout=60,
             what=lambda: f"the restarted operator on the last good copy\n{lab.log_tail()}")
    wait_for(lambda: metric_once_up(agent_port, "labkeeper_policy_generation") == 1, timeout=60,
             what=lambda: f"the restarted agent on the last good copy\n{lab.agent.log_tail()}")
    for port in lab.ports:
        assert metric(port, "labkeeper_policy_refused") == 1 and metric(port, "labkeeper_policy_paused") == 0
    for component in ("labkeeper-operator", "labkeeper-agent"):
        recovered = [e for e in policy_events(lab, component) if e["reason"] == "PolicyRecovered"]
        assert recovered and "labkeeper-policy-last-good" in recovered[-1]["message"], component
        assert "tiers.student.maxWorkspaces" in recovered[-1]["message"], recovered[-1]
    # a new workspace is entitled by the last good policy, and the host keeps its groups
    lab.apply(workspace("restarted", "ada", state="Running"))
    lab.wait_phase("restarted", "ada", "Running", timeout=RUNNING_WITHIN)
    assert lab.status("gpuuser", "ada")["effectiveLimits"]["cpu"]["value"] == "3"
    assert cache_group(lab) == (LAB_GID, acl) and lab_group_gid(lab) == str(LAB_GID)
    lab.kubectl("delete", "workspace", "restarted", "-n", "lab-ada", "--wait=false")

    # no copy at all (a first install whose policy was broken from the start): the agent changes no host
    lab.kubectl("delete", "configmap", "labkeeper-policy-last-good", "-n", SYSTEM_NAMESPACE)
    restart(lab, operator=False)
    wait_for(lambda: metric_once_up(agent_port, "labkeeper_policy_paused") == 1, timeout=60,
             what=lambda: f"the agent paused\n{lab.agent.log_tail()}")
    lab.add_users(gpuuser("bea"))  # Ready is the operator's word; her account is the agent's, which waits
    home = lab.agent.data / "users" / "bea"
    set_and_wait_until_read(lab, good_policy(), "the fixed policy")
    wait_for(lambda: home.is_dir(), timeout=30, what=lambda: f"bea's home after the fix\n{lab.agent.log_tail()}")
    assert "host pass skipped" in lab.agent.log_tail(20000)
    assert cache_group(lab) == (LAB_GID, acl) and lab_group_gid(lab) == str(LAB_GID)
    assert metric(agent_port, "labkeeper_policy_paused") == 0
    wait_for(lambda: copy_text(lab) and load_policy(copy_text(lab)) == load_policy(yaml.safe_dump(good_policy())),
             timeout=10, what="the operator's copy written again for the fixed policy")
