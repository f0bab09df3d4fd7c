"""The local control plane is a real Kubernetes: scheduling of MIG resources, preemption,
client certificates through the CSR API, garbage collection."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labkeeper.testing.cluster import LocalCluster, NodeSpec, kubeconfig_dict, manifest
from labkeeper.testing.pki import KeyPair

pytestmark = pytest.mark.integration


def _taint_key(unique: str) -> str:
    return f"labkeeper.io/test-{unique}"


@pytest.fixture
def isolated_nodes(cluster: LocalCluster, unique: str):
    """Fake nodes that only this test's pods tolerate, so other tests' pods never land there."""
    created: list[str] = []

    def make(profile: str) -> str:
        name = f"node-{profile}-{unique}"
        manifest = NodeSpec(name, profile, labels={"labkeeper.io/test": unique}).manifest()
        manifest["spec"] = {"taints": [{"key": _taint_key(unique), "value": "yes", "effect": "NoSchedule"}]}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        cluster.kubectl("wait", "--for=condition=Ready", f"node/{name}", "--timeout=60s")
        created.append(name)
        return name

    yield make
    cluster.kubectl("delete", "pods", "-n", "default", "-l", f"labkeeper.io/test={unique}", "--wait=false", check=False)
    for name in created:
        cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def _pod(name: str, unique: str, resources: dict[str, str], *, node: str | None = None,
         priority_class: str | None = None, owner: dict | None = None) -> dict:
    spec: dict = {
        "containers": [{"name": "main", "image": "busybox", "resources": {"limits": resources, "requests": resources}}],
        "tolerations": [{"key": _taint_key(unique), "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 0,
        "nodeSelector": {"labkeeper.io/test": unique} | ({"kubernetes.io/hostname": node} if node else {}),
    }
    if priority_class:
        spec["priorityClassName"] = priority_class
    meta: dict = {"name": name, "namespace": "default", "labels": {"labkeeper.io/test": unique}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _apply(cluster: LocalCluster, *docs: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=manifest(*docs))


def _pod_field(cluster: LocalCluster, name: str, path: str) -> str:
    return cluster.kubectl("get", "pod", name, "-n", "default", "-o", f"jsonpath={path}", check=False).stdout.strip()


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_control_plane_started_and_reports_its_startup_time(cluster: LocalCluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.3"), version
    print(f"control plane startup: {cluster.startup_seconds:.1f}s")
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = {n["metadata"]["name"] for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])}
    assert {"gpu-node-1", "gpu-node-2"} <= ready


def test_mig_slices_are_scheduled_until_the_profile_runs_out(cluster, isolated_nodes, unique):
    node = isolated_nodes("h100-balanced")
    slice_ = {"nvidia.com/mig-1g.10gb": "1"}
    _apply(cluster, *(_pod(f"mig-{i}-{unique}", unique, slice_) for i in range(2)))
    for i in range(2):
        _wait(lambda i=i: _pod_field(cluster, f"mig-{i}-{unique}", "{.status.phase}") == "Running",
              what=f"pod mig-{i} Running")
        assert _pod_field(cluster, f"mig-{i}-{unique}", "{.spec.nodeName}") == node
    _apply(cluster, _pod(f"mig-2-{unique}", unique, slice_))

    def failed_scheduling():
        events = cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                                 f"involvedObject.name=mig-2-{unique},reason=FailedScheduling", "-o", "json")
        return json.loads(events.stdout)["items"]

    event = _wait(failed_scheduling, what="FailedScheduling event for the third pod")[0]
    assert "nvidia.com/mig-1g.10gb" in event["message"]
    assert _pod_field(cluster, f"mig-2-{unique}", "{.status.phase}") == "Pending"
    assert _pod_field(cluster, f"mig-2-{unique}", "{.spec.nodeName}") == ""


def test_a_whole_gpu_request_lands_on_the_full_gpu_node(cluster, isolated_nodes, unique):
    isolated_nodes("h100-balanced")
    full = isolated_nodes("full-gpus")
    _apply(cluster, _pod(f"gpu-{unique}", unique, {"nvidia.com/gpu": "1"}))
    _wait(lambda: _pod_field(cluster, f"gpu-{unique}", "{.status.phase}") == "Running", what="gpu pod Running")
    assert _pod_field(cluster, f"gpu-{unique}", "{.spec.nodeName}") == full


def test_a_higher_priority_pod_preempts_a_lower_one(cluster, isolated_nodes, unique):
    node = isolated_nodes("h100-balanced")
    low, high = f"low-{unique}", f"high-{unique}"
    _apply(
        cluster,
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": low}, "value": 100},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": high}, "value": 1000},
    )
    try:
        whole = {"nvidia.com/mig-3g.40gb": "1"}
        _apply(cluster, _pod(f"victim-{unique}", unique, whole, priority_class=low))
        _wait(lambda: _pod_field(cluster, f"victim-{unique}", "{.status.phase}") == "Running", what="victim Running")
        _apply(cluster, _pod(f"preemptor-{unique}", unique, whole, priority_class=high))
        _wait(lambda: _pod_field(cluster, f"preemptor-{unique}", "{.status.phase}") == "Running",
              timeout=90, what="preemptor Running")
        assert _pod_field(cluster, f"preemptor-{unique}", "{.spec.nodeName}") == node
        # the victim is gone, or on its way out (kwok completes the deletion)
        victim = f"victim-{unique}"
        assert _pod_field(cluster, victim, "{.metadata.name}") == "" or \
            _pod_field(cluster, victim, "{.metadata.deletionTimestamp}") != ""
        preempted = cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                                    f"involvedObject.name={victim},reason=Preempted", "-o", "name").stdout
        assert preempted.strip(), "no Preempted event for the victim"
    finally:
        cluster.kubectl("delete", "priorityclass", low, high, check=False)


def test_a_user_certificate_from_the_csr_api_authenticates_but_grants_nothing(cluster: LocalCluster, unique: str):
    user = f"alice-{unique}"
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labkeeper:users"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, user)]))
        .sign(key, hashes.SHA256())
    )
    request = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": f"csr-{user}"},
        "spec": {
            "request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
            "expirationSeconds": 3600,
        },
    }
    _apply(cluster, request)
    cluster.kubectl("certificate", "approve", f"csr-{user}")
    issued = _wait(lambda: _csr_certificate(cluster, f"csr-{user}"), what="signed certificate")
    cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == user

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    config = cluster.workdir / f"{user}.kubeconfig"
    config.write_text(yaml.safe_dump(kubeconfig_dict(cluster.server, cluster.ca.pair.cert_pem, user,
                                                     KeyPair(base64.b64decode(issued), key_pem))))
    whoami = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=config)
    info = json.loads(whoami.stdout)["status"]["userInfo"]
    assert info["username"] == user
    assert "labkeeper:users" in info["groups"]
    denied = cluster.kubectl("get", "pods", "-n", "default", kubeconfig=config, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower() and user in denied.stderr
    cluster.kubectl("delete", "csr", f"csr-{user}", check=False)


def _csr_certificate(cluster: LocalCluster, name: str) -> str:
    return cluster.kubectl("get", "csr", name, "-o", "jsonpath={.status.certificate}").stdout.strip()


def test_deleting_an_owner_deletes_the_pods_it_owns(cluster, isolated_nodes, unique):
    isolated_nodes("cpu-only")
    owner_name = f"owner-{unique}"
    _apply(cluster, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": owner_name, "namespace": "default"}})
    uid = cluster.kubectl("get", "configmap", owner_name, "-n", "default", "-o", "jsonpath={.metadata.uid}").stdout
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner_name, "uid": uid}
    _apply(cluster, _pod(f"owned-{unique}", unique, {"cpu": "100m"}, owner=owner))
    _wait(lambda: _pod_field(cluster, f"owned-{unique}", "{.status.phase}") == "Running", what="owned pod Running")
    cluster.kubectl("delete", "configmap", owner_name, "-n", "default")
    _wait(lambda: _pod_field(cluster, f"owned-{unique}", "{.metadata.name}") == "", timeout=60,
          what="garbage collector to delete the owned pod")


def test_stopping_ends_exactly_the_processes_it_started(tmp_path):
    local = LocalCluster(tmp_path / "c", (NodeSpec("solo", "cpu-only"),))
    try:
        local.start()
        pids = local.pids
        assert [p.name for p in local.processes] == [
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
        print(f"second control plane startup: {local.startup_seconds:.1f}s")
    finally:
        local.stop()
    for pid in pids:
        alive = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        assert alive in ("", "Z"), f"process {pid} still running ({alive})"
