"""The chart's RBAC is enough and no more: a real operator process, authenticated with a token issued
for the chart's own ServiceAccount, takes alice from GPUUser to a running workspace, stops it, restarts
it and picks up a `helm upgrade` of the policy, without one request refused; the agent's and the
operator's accounts are refused what they must never do."""

from __future__ import annotations

import json

import pytest
import yaml
from chartlib import CHART, run_helm

from labkeeper.testing.cluster import manifest
from labkeeper.testing.lab import gpuuser, workspace
from labkeeper.testing.processes import OperatorProcess, wait_for

pytestmark = pytest.mark.integration

# a release of its own, so nothing here touches the `labkeeper` release of test_chart_install or the
# session operator's Lease and uid ledger in labkeeper-system
RELEASE = "lkrbac"
NAMESPACE = "lkrbac-system"
OPERATOR_SA = f"{RELEASE}-operator"
AGENT_SA = f"{RELEASE}-agent"
# the session cluster already has the CRDs and PriorityClasses; the operator applies its classes itself
RELEASE_VALUES = {"fullnameOverride": RELEASE, "crds": {"install": False}, "priorityClasses": {"create": False},
                  "runtimeClass": {"create": False}}


def helm(cluster, *args: str, check: bool = True):
    return run_helm(*args, "--kubeconfig", str(cluster.kubeconfig), "--namespace", NAMESPACE, check=check,
                    timeout=240)


def token_kubeconfig(cluster, account: str, path) -> str:
    """A kubeconfig that authenticates as the ServiceAccount with a token the API server issued."""
    token = cluster.kubectl("create", "token", account, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
              "users": [{"name": account, "user": {"token": token}}],
              "contexts": [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}],
              "current-context": account}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def can_i(cluster, kubeconfig: str, verb: str, resource: str, namespace: str, subresource: str = "") -> bool:
    extra = [f"--subresource={subresource}"] if subresource else []
    answer = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, *extra, kubeconfig=kubeconfig,
                             check=False).stdout.strip()
    assert answer in {"yes", "no"}, answer
    return answer == "yes"


def status(cluster, kind: str, name: str, namespace: str | None = None) -> dict:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    result = cluster.kubectl(*args, check=False)
    return (json.loads(result.stdout).get("status") or {}) if result.returncode == 0 else {}


def policy_events(cluster) -> list[dict]:
    events = json.loads(cluster.kubectl("get", "events", "-n", NAMESPACE, "-o", "json", "--field-selector",
                                        "involvedObject.kind=ConfigMap,involvedObject.name=labkeeper-policy").stdout)
    return [e for e in events["items"] if e["reason"] == "PolicyApplied"]


@pytest.fixture(scope="module")
def release(crds, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rbac")
    values = workdir / "values.yaml"
    values.write_text(yaml.safe_dump(RELEASE_VALUES))
    helm(crds, "install", RELEASE, str(CHART), "--create-namespace", "--values", str(values))
    yield crds, workdir, values
    helm(crds, "uninstall", RELEASE, "--wait", check=False)
    crds.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator_as_its_account(release):
    cluster, workdir, _ = release
    kubeconfig = token_kubeconfig(cluster, OPERATOR_SA, workdir / "operator.kubeconfig")
    op = OperatorProcess(cluster, workdir, "--kubeconfig", kubeconfig, "--namespace", NAMESPACE,
                         "--no-require-host", "--lease-duration", "3").start()
    yield op
    op.stop()


def test_the_operator_on_its_chart_account_runs_a_workspace_and_follows_a_policy_upgrade(
        release, operator_as_its_account, unique):
    cluster, _, values = release
    op = operator_as_its_account
    user, namespace = f"rb{unique}", f"lab-rb{unique}"

    cluster.kubectl("apply", "-f", "-", input=manifest(gpuuser(user)))
    wait_for(lambda: status(cluster, "gpuuser", user).get("phase") == "Ready", timeout=90,
             what=lambda: f"GPUUser {user} Ready\n{op.log_tail()}")
    assert cluster.kubectl("get", "secret", f"kubeconfig-{user}", "-n", NAMESPACE, check=False).returncode == 0

    ws = workspace("box", user, profile="1g.10gb", command=["sleep", "infinity"])
    cluster.kubectl("apply", "-f", "-", input=manifest(ws))
    wait_for(lambda: status(cluster, "workspace", "box", namespace).get("phase") == "Running", timeout=90,
             what=lambda: f"workspace Running\n{op.log_tail()}")

    # stopping keeps the GPU as a hold that admission counts (it reads nodes, pods and every Workspace);
    # starting again gives it back to its holder
    cluster.kubectl("patch", "workspace", "box", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"state": "Stopped"}}')
    wait_for(lambda: status(cluster, "workspace", "box", namespace).get("phase") == "Stopped"
             and status(cluster, "workspace", "box", namespace).get("holdNode"),
             timeout=60, what=lambda: f"workspace Stopped with a hold\n{op.log_tail()}")
    cluster.kubectl("patch", "workspace", "box", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"state": "Running"}}')
    wait_for(lambda: status(cluster, "workspace", "box", namespace).get("phase") == "Running"
             and not status(cluster, "workspace", "box", namespace).get("holdNode"),
             timeout=90, what=lambda: f"workspace Running again, hold released\n{op.log_tail()}")

    # helm upgrade with a changed policy: the operator applies it and re-derives alice's limits
    applied_before = len(policy_events(cluster))
    helm(cluster, "upgrade", RELEASE, str(CHART), "--values", str(values),
         "--set", "policy.defaults.maxWorkspaces=4")
    wait_for(lambda: len(policy_events(cluster)) > applied_before, timeout=60,
             what=lambda: f"PolicyApplied after the upgrade\n{op.log_tail()}")
    wait_for(lambda: (status(cluster, "gpuuser", user).get("effectiveLimits") or {})
             .get("maxWorkspaces", {}).get("value") == "4", timeout=60, what="maxWorkspaces 4 in effect")

    # the GPUUser's finalizer runs on the same account: namespace, RBAC and credentials go
    cluster.kubectl("delete", "gpuuser", user, "--timeout=90s")
    wait_for(lambda: cluster.kubectl("get", "clusterrole", f"labkeeper-user:{user}", check=False).returncode != 0,
             timeout=60, what="her ClusterRole removed")

    # nothing the operator did along the way was refused (kopf logs a refused watch, events are best effort)
    log = op.log_tail(100000)
    assert "forbidden" not in log.lower(), log


def test_the_agent_account_cannot_create_pods_or_read_secrets_elsewhere(release):
    cluster, workdir, _ = release
    agent = token_kubeconfig(cluster, AGENT_SA, workdir / "agent.kubeconfig")
    for namespace in ("lab-alice", NAMESPACE, "default"):
        assert not can_i(cluster, agent, "create", "pods", namespace)
    assert not can_i(cluster, agent, "patch", "workspaces.labkeeper.io", "lab-alice")
    assert can_i(cluster, agent, "patch", "workspaces.labkeeper.io", "lab-alice", subresource="status")
    assert can_i(cluster, agent, "watch", "secrets", NAMESPACE)
    assert not can_i(cluster, agent, "get", "secrets", "kube-system")
    # the token really is the agent's: it lists what it watches and is refused the rest
    assert cluster.kubectl("get", "gpuusers", kubeconfig=agent).returncode == 0
    assert cluster.kubectl("get", "secrets", "-n", "default", kubeconfig=agent, check=False).returncode != 0


def test_the_operator_account_reads_secrets_only_in_its_own_namespace(release):
    cluster, workdir, _ = release
    operator = token_kubeconfig(cluster, OPERATOR_SA, workdir / "operator-check.kubeconfig")
    assert can_i(cluster, operator, "get", "secrets", NAMESPACE)
    for namespace in ("default", "kube-system", "lab-alice", "labkeeper-system"):
        assert not can_i(cluster, operator, "get", "secrets", namespace)
        assert not can_i(cluster, operator, "list", "secrets", namespace)
    assert cluster.kubectl("get", "secrets", "-n", "kube-system", kubeconfig=operator, check=False).returncode != 0
