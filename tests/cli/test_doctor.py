"""`labctl admin doctor` finds what is missing in a lab and says how to fix each thing."""

from __future__ import annotations

import json

import pytest

from labkeeper.testing.cluster import LocalCluster, NodeSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory):
    """A cluster on which nothing of labkeeper was installed, with one node and no GPUs."""
    with LocalCluster(tmp_path_factory.mktemp("bare"), [NodeSpec("cpu-node", "cpu-only")]) as cluster:
        yield cluster


def test_doctor_on_a_bare_cluster_names_each_missing_piece_and_its_fix(bare_cluster, labctl):
    result = labctl("admin", "doctor", kubeconfig=bare_cluster.kubeconfig)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "[ok  ] API server: " in out
    assert "[FAIL] CRDs: missing: gpuusers.labkeeper.io, workspaces.labkeeper.io" in out
    assert "fix: kubectl apply --server-side -f crds/" in out
    assert "[FAIL] operator: no Lease labkeeper-system/labkeeper-operator" in out
    assert "[FAIL] GPU resources: none of 1 node(s) advertises nvidia.com/mig-* or nvidia.com/gpu" in out
    assert 'MIG strategy "mixed"' in out
    assert "[FAIL] nvidia RuntimeClass: RuntimeClass 'nvidia' does not exist" in out
    assert "Traceback" not in result.stderr


def test_doctor_sees_a_dead_operator_by_its_stale_lease_and_the_runtime_class_once_made(bare_cluster, labctl):
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "labkeeper-operator", "namespace": "labkeeper-system"},
             "spec": {"holderIdentity": "op-1", "leaseDurationSeconds": 15,
                      "renewTime": "2020-01-01T00:00:00.000000Z", "acquireTime": "2020-01-01T00:00:00.000000Z"}}
    runtime_class = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                     "handler": "nvidia"}
    bare_cluster.kubectl("create", "namespace", "labkeeper-system", check=False)
    bare_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                "items": [lease, runtime_class]}))
    result = labctl("admin", "doctor", "-o", "json", kubeconfig=bare_cluster.kubeconfig)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 1
    assert checks["operator"]["state"] == "fail"
    assert "held by op-1" in checks["operator"]["detail"] and "ago" in checks["operator"]["detail"]
    assert checks["nvidia RuntimeClass"]["state"] == "ok"


def test_doctor_as_a_lab_member_says_it_needs_the_admin_kubeconfig(bare_cluster, labctl):
    alice = bare_cluster.user_kubeconfig("alice")
    result = labctl("admin", "doctor", kubeconfig=alice)
    assert result.returncode == 1
    assert "[FAIL] CRDs: cannot check: Forbidden: doctor needs an admin kubeconfig" in result.stdout
