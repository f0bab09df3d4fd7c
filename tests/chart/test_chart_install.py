"""The chart on a real API server: install, upgrade, uninstall, and what its accounts may do."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from chartlib import CHART, NAMESPACE, run_helm

from labkeeper.testing.cluster import manifest

pytestmark = pytest.mark.integration

RELEASE = "labkeeper"
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:labkeeper-operator"
AGENT_SA = f"system:serviceaccount:{NAMESPACE}:labkeeper-agent"
# the local nodes have no nvidia container runtime; the chart creates the class so agent pods are admitted
INSTALL_VALUES = {"runtimeClass": {"create": True}}


def helm(cluster, *args: str, check: bool = True):
    return run_helm(*args, "--kubeconfig", str(cluster.kubeconfig), "--namespace", NAMESPACE, check=check,
                    timeout=240)


def kubectl_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def policy_in_cluster(cluster) -> dict:
    cm = kubectl_json(cluster, "get", "configmap", "labkeeper-policy", "-n", NAMESPACE)
    return yaml.safe_load(cm["data"]["policy.yaml"])


def can_i(cluster, who: str, verb: str, resource: str, namespace: str | None = None, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={who}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    args += [f"--subresource={subresource}"] if subresource else []
    answer = cluster.kubectl(*args, check=False).stdout.strip()
    assert answer in {"yes", "no"}, answer
    return answer == "yes"


def may_approve_for_signer(cluster, who: str, signer: str) -> bool:
    """`signers` is an authorization-only resource kubectl cannot resolve, so ask with a SubjectAccessReview."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": who, "groups": ["system:serviceaccounts", "system:authenticated"],
        "resourceAttributes": {"group": "certificates.k8s.io", "resource": "signers", "name": signer,
                               "verb": "approve"}}}
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
    return json.loads(out)["status"].get("allowed", False)


def adopt_existing(cluster) -> None:
    """Objects another test in this session applied by hand are adopted by the release, as an admin would."""
    found = cluster.kubectl("get", "crd", "-o", "name", check=False).stdout.split()
    targets = [[name] for name in found if name.endswith(".labkeeper.io")]
    if cluster.kubectl("get", "configmap", "labkeeper-policy", "-n", NAMESPACE, check=False).returncode == 0:
        targets.append(["configmap/labkeeper-policy", "-n", NAMESPACE])
    for target in targets:
        cluster.kubectl("label", "--overwrite", *target, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl("annotate", "--overwrite", *target, f"meta.helm.sh/release-name={RELEASE}",
                        f"meta.helm.sh/release-namespace={NAMESPACE}")


@pytest.fixture(scope="module")
def installed(cluster, tmp_path_factory):
    values = tmp_path_factory.mktemp("chart") / "install.yaml"
    values.write_text(yaml.safe_dump(INSTALL_VALUES))
    adopt_existing(cluster)
    result = helm(cluster, "install", RELEASE, str(CHART), "--create-namespace", "--values", str(values),
                  "--wait", "--timeout", "180s")
    yield cluster, result.stdout, values
    helm(cluster, "uninstall", RELEASE, "--wait", check=False)


def test_install_is_accepted_by_the_api_server_and_tells_the_admin_what_next(installed):
    cluster, notes, _ = installed
    status = json.loads(helm(cluster, "status", RELEASE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    assert "kubectl apply -f -" in notes and "GPUUser" in notes
    for crd in ("gpuusers", "workspaces", "sharedcaches", "modelstores"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}.labkeeper.io", "--timeout=30s")
    deploy = kubectl_json(cluster, "get", "deployment", "labkeeper-operator", "-n", NAMESPACE)
    assert deploy["status"].get("readyReplicas") == 1
    classes = {pc["metadata"]["name"]: pc["value"] for pc in kubectl_json(cluster, "get", "priorityclass")["items"]}
    # a held GPU is never preempted: its class is above every tier's
    assert classes["labkeeper-student"] < classes["labkeeper-faculty"] < classes["labkeeper-hold"]


def test_an_agent_pod_runs_on_every_gpu_node(installed):
    cluster, _, _ = installed
    gpu_nodes = {n["metadata"]["name"] for n in
                 kubectl_json(cluster, "get", "nodes", "-l", "nvidia.com/gpu.present=true")["items"]}
    assert gpu_nodes
    deadline = time.monotonic() + 60
    while True:
        pods = kubectl_json(cluster, "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=agent")
        running = {p["spec"].get("nodeName") for p in pods["items"] if p["status"].get("phase") == "Running"}
        if running == gpu_nodes or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert running == gpu_nodes


def test_upgrade_with_a_changed_policy_updates_the_configmap_and_rolls_the_agents(installed, tmp_path):
    cluster, _, values = installed
    before = kubectl_json(cluster, "get", "daemonset", "labkeeper-agent", "-n", NAMESPACE)
    changed = {**INSTALL_VALUES, "policy": yaml.safe_load((CHART / "values.yaml").read_text())["policy"]}
    changed["policy"]["defaults"]["maxWorkspaces"] = 4
    changed["policy"]["tiers"]["student"]["priority"] = 11000
    path = tmp_path / "upgrade.yaml"
    path.write_text(yaml.safe_dump(changed))
    helm(cluster, "upgrade", RELEASE, str(CHART), "--values", str(path), "--wait", "--timeout", "120s")
    assert policy_in_cluster(cluster)["defaults"]["maxWorkspaces"] == 4
    after = kubectl_json(cluster, "get", "daemonset", "labkeeper-agent", "-n", NAMESPACE)
    hash_of = lambda ds: ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
    assert hash_of(after) != hash_of(before)
    # an immutable PriorityClass value changed: the upgrade hook replaced the class
    assert kubectl_json(cluster, "get", "priorityclass", "labkeeper-student")["value"] == 11000
    helm(cluster, "upgrade", RELEASE, str(CHART), "--values", str(values), "--wait", "--timeout", "120s")


def test_the_agent_account_cannot_create_pods(installed):
    cluster, _, _ = installed
    assert not can_i(cluster, AGENT_SA, "create", "pods", "lab-alice")
    assert not can_i(cluster, AGENT_SA, "create", "pods", NAMESPACE)
    assert not can_i(cluster, AGENT_SA, "patch", "workspaces.labkeeper.io", "lab-alice")
    assert can_i(cluster, AGENT_SA, "patch", "workspaces.labkeeper.io", "lab-alice", subresource="status")
    assert can_i(cluster, AGENT_SA, "watch", "secrets", NAMESPACE)
    assert not can_i(cluster, AGENT_SA, "get", "secrets", "lab-alice")


def test_the_operator_account_reads_secrets_only_in_the_system_namespace(installed):
    cluster, _, _ = installed
    assert can_i(cluster, OPERATOR_SA, "get", "secrets", NAMESPACE)
    for namespace in ("default", "kube-system", "lab-alice"):
        assert not can_i(cluster, OPERATOR_SA, "get", "secrets", namespace)
    assert not can_i(cluster, OPERATOR_SA, "list", "secrets")
    assert can_i(cluster, OPERATOR_SA, "create", "pods", "lab-alice")
    assert may_approve_for_signer(cluster, OPERATOR_SA, "kubernetes.io/kube-apiserver-client")
    assert not may_approve_for_signer(cluster, OPERATOR_SA, "kubernetes.io/kubelet-serving")


def test_the_operator_account_can_grant_a_user_her_role(installed, unique):
    """RBAC escalation checks run for real: the operator's account creates the Role it gives users."""
    from labkeeper.render import access

    cluster, _, _ = installed
    user = f"chart{unique}"
    namespace = access.namespace_for(user)
    cluster.kubectl("create", "namespace", namespace)
    try:
        docs = [access.user_role(user), access.user_role_binding(user, access.access_group(user, "chart"))]
        # server-side apply under the operator's field manager, as the operator does it
        result = cluster.kubectl("apply", "--server-side", "--field-manager=labkeeper-operator", f"--as={OPERATOR_SA}",
                                 "-f", "-", input=manifest(*docs), check=False)
        assert result.returncode == 0, result.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_bad_value_stops_helm_install_before_anything_is_applied(installed, tmp_path):
    cluster, _, _ = installed
    bad = tmp_path / "bad.yaml"
    policy = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]
    policy["defaults"]["maxGpuEquivalents"] = -1
    bad.write_text(yaml.safe_dump({"policy": policy}))
    result = helm(cluster, "install", "labkeeper-bad", str(CHART), "--values", str(bad), check=False)
    assert result.returncode != 0
    assert "/policy/defaults/maxGpuEquivalents" in result.stderr
    assert "labkeeper-bad" not in helm(cluster, "list", "-q").stdout


def test_uninstall_keeps_the_crds_and_the_lab_objects(installed, unique):
    cluster, _, _ = installed
    name = f"keep{unique}"
    cluster.kubectl("apply", "-f", "-", input=manifest({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache", "metadata": {"name": name},
        "spec": {"type": "pip", "path": f"cache/{name}"},
    }))
    helm(cluster, "uninstall", RELEASE, "--wait")
    assert cluster.kubectl("get", "deployment", "labkeeper-operator", "-n", NAMESPACE, check=False).returncode != 0
    for crd in ("gpuusers", "workspaces", "sharedcaches", "modelstores"):
        assert cluster.kubectl("get", f"crd/{crd}.labkeeper.io", check=False).returncode == 0
    assert cluster.kubectl("get", "sharedcache", name, check=False).returncode == 0
    cluster.kubectl("delete", "sharedcache", name, "--wait=false")
