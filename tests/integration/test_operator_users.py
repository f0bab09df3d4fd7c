"""An admin applies a GPUUser; the operator makes her a person who can use the cluster,
with exactly her tier's rights and limits and nothing of anyone else's."""

from __future__ import annotations

import base64
import json
import time

import pytest
import yaml

from labkeeper.testing.cluster import REPO_ROOT, manifest
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration


def gpuuser(name: str, tier: str = "student", **spec) -> dict:
    return {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": name},
            "spec": {"displayName": name.title(), "tier": tier, **spec}}


def get_json(cluster, *args) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def user_ready(cluster, name: str) -> dict | None:
    result = cluster.kubectl("get", "gpuuser", name, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    user = json.loads(result.stdout)
    return user if (user.get("status") or {}).get("phase") == "Ready" else None


def kubeconfig_of(cluster, name: str, tmp_path) -> str:
    secret = get_json(cluster, "secret", f"kubeconfig-{name}", "-n", SYSTEM_NAMESPACE)
    path = tmp_path / f"{name}.kubeconfig"
    path.write_bytes(base64.b64decode(secret["data"]["config"]))
    return str(path)


@pytest.fixture(scope="module")
def alice_and_bob(crds, operator, tmp_path_factory):
    alice = yaml.safe_load((REPO_ROOT / "examples" / "alice.yaml").read_text())
    crds.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "alice.yaml"))
    crds.kubectl("apply", "-f", "-", input=json.dumps(gpuuser("bob")))
    for name in (alice["metadata"]["name"], "bob"):
        wait_for(lambda n=name: user_ready(crds, n), timeout=90, what=f"GPUUser {name} Ready")
    tmp = tmp_path_factory.mktemp("kubeconfigs")
    return {"alice": kubeconfig_of(crds, "alice", tmp), "bob": kubeconfig_of(crds, "bob", tmp)}


def test_alice_is_ready_with_uid_namespace_and_conditions(crds, alice_and_bob):
    alice = get_json(crds, "gpuuser", "alice")
    status = alice["status"]
    assert status["uid"] >= 20000 and status["gid"] == status["uid"]
    assert status["namespace"] == "lab-alice"
    assert status["observedGeneration"] == alice["metadata"]["generation"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True" and conditions["AccessGranted"] == "True"
    assert conditions["QuotaApplied"] == "True"
    assert status["effectiveLimits"]["maxGpuEquivalents"]["source"] in ("default", "tier", "override")
    namespace = get_json(crds, "namespace", "lab-alice")
    assert namespace["metadata"]["labels"]["labkeeper.io/user"] == "alice"
    assert namespace["metadata"]["ownerReferences"][0]["name"] == "alice"


# (verb, resource, namespace of the check ("own" = lab-alice, "bob" = lab-bob, "" = cluster), allowed)
MATRIX = [
    ("create", "workspaces.labkeeper.io", "own", True),
    ("get", "workspaces.labkeeper.io", "own", True),
    ("list", "workspaces.labkeeper.io", "own", True),
    ("update", "workspaces.labkeeper.io", "own", True),
    ("delete", "workspaces.labkeeper.io", "own", True),
    ("get", "pods", "own", True),
    ("list", "pods", "own", True),
    ("watch", "pods", "own", True),
    ("get", "pods/log", "own", True),
    ("create", "pods/exec", "own", True),
    ("create", "pods/portforward", "own", True),
    ("create", "pods/eviction", "own", False),
    ("patch", "workspaces.labkeeper.io/status", "own", False),
    ("update", "pods/status", "own", False),
    ("list", "events", "own", True),
    ("create", "pods", "own", False),
    ("delete", "pods", "own", False),
    ("list", "secrets", "own", False),
    ("get", "secrets", "own", False),
    ("create", "rolebindings", "own", False),
    ("delete", "resourcequotas", "own", False),
    ("update", "resourcequotas", "own", False),
    ("create", "pods", "", False),
    ("list", "secrets", "", False),
    ("list", "secrets", SYSTEM_NAMESPACE, False),
    ("get", "workspaces.labkeeper.io", "bob", False),
    ("list", "workspaces.labkeeper.io", "bob", False),
    ("create", "workspaces.labkeeper.io", "bob", False),
    ("delete", "workspaces.labkeeper.io", "bob", False),
    ("list", "pods", "bob", False),
    ("create", "pods/exec", "bob", False),
    ("get", "pods/log", "bob", False),
    ("list", "events", "bob", False),
    ("list", "namespaces", "", False),
    ("list", "nodes", "", False),
    ("create", "gpuusers.labkeeper.io", "", False),
    ("list", "gpuusers.labkeeper.io", "", False),
    ("create", "priorityclasses", "", False),
]


@pytest.mark.parametrize(("verb", "resource", "where", "allowed"), MATRIX,
                         ids=[f"{v}-{r}-{w or 'cluster'}" for v, r, w, _ in MATRIX])
def test_alices_rights_are_exactly_her_own_workspaces(crds, alice_and_bob, verb, resource, where, allowed):
    namespace = {"own": "lab-alice", "bob": "lab-bob"}.get(where, where)
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource] + ([f"--subresource={subresource}"] if subresource else [])
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    result = crds.kubectl(*args, kubeconfig=alice_and_bob["alice"], check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), (args, result.stdout, result.stderr)


def test_alice_can_read_but_not_change_her_own_gpuuser(crds, alice_and_bob):
    mine = crds.kubectl("get", "gpuuser", "alice", "-o", "name", kubeconfig=alice_and_bob["alice"], check=False)
    assert mine.returncode == 0, mine.stderr
    theirs = crds.kubectl("get", "gpuuser", "bob", kubeconfig=alice_and_bob["alice"], check=False)
    assert "forbidden" in theirs.stderr.lower()
    patch = crds.kubectl("patch", "gpuuser", "alice", "--type=merge", "-p", '{"spec":{"tier":"faculty"}}',
                         kubeconfig=alice_and_bob["alice"], check=False)
    assert patch.returncode != 0 and "forbidden" in patch.stderr.lower()


def test_alice_creates_a_workspace_but_cannot_create_a_pod(crds, alice_and_bob):
    workspace = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
                 "metadata": {"name": "rbac-probe", "namespace": "lab-alice"},
                 "spec": {"image": "busybox", "state": "Stopped"}}
    made = crds.kubectl("apply", "-f", "-", input=json.dumps(workspace), kubeconfig=alice_and_bob["alice"],
                        check=False)
    assert made.returncode == 0, made.stderr
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky", "namespace": "lab-alice"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    denied = crds.kubectl("apply", "-f", "-", input=json.dumps(pod), kubeconfig=alice_and_bob["alice"], check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    crds.kubectl("delete", "workspace", "rbac-probe", "-n", "lab-alice", "--wait=false")


def test_a_tier_change_updates_quota_and_priority_scope_in_place(crds, alice_and_bob):
    crds.kubectl("apply", "-f", "-", input=json.dumps(gpuuser("tiered", "student")))
    wait_for(lambda: user_ready(crds, "tiered"), timeout=60, what="GPUUser tiered Ready")
    ns_uid = get_json(crds, "namespace", "lab-tiered")["metadata"]["uid"]
    before = get_json(crds, "resourcequota", "labkeeper-limits", "-n", "lab-tiered")["spec"]["hard"]
    crds.kubectl("patch", "gpuuser", "tiered", "--type=merge", "-p", '{"spec":{"tier":"researcher"}}')

    def researcher_quota():
        hard = get_json(crds, "resourcequota", "labkeeper-limits", "-n", "lab-tiered")["spec"]["hard"]
        return hard if hard["requests.memory"] != before["requests.memory"] else None

    after = wait_for(researcher_quota, what="quota to follow the tier")
    assert after["requests.memory"] == "64Gi" and before["requests.memory"] == "32Gi"
    scope = get_json(crds, "resourcequota", "labkeeper-priority", "-n", "lab-tiered")["spec"]["scopeSelector"]
    assert "labkeeper-researcher" in scope["matchExpressions"][0]["values"]
    assert get_json(crds, "namespace", "lab-tiered")["metadata"]["uid"] == ns_uid
    crds.kubectl("delete", "gpuuser", "tiered", "--wait=false")


def test_an_invalid_policy_is_refused_and_the_last_good_one_stays(crds, operator):
    good = crds.kubectl("get", "configmap", "labkeeper-policy", "-n", SYSTEM_NAMESPACE, "-o", "json").stdout
    try:
        bad = json.loads(good)
        bad["data"]["policy.yaml"] = "tiers:\n  student:\n    limits:\n      maxGpuEquivalents: -3\n"
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            bad["metadata"].pop(key, None)
        crds.kubectl("apply", "-f", "-", input=json.dumps(bad))

        def refusal():
            events = get_json(crds, "events", "-n", SYSTEM_NAMESPACE,
                              "--field-selector", "reason=InvalidPolicy,involvedObject.name=labkeeper-policy")
            return events["items"]

        event = wait_for(refusal, what="InvalidPolicy event")[-1]
        assert "maxGpuEquivalents" in event["message"] and event["type"] == "Warning"
        # the last good policy is still in force: a new student still gets the student quota
        crds.kubectl("apply", "-f", "-", input=json.dumps(gpuuser("afterbad")))
        wait_for(lambda: user_ready(crds, "afterbad"), timeout=60, what="GPUUser afterbad Ready")
        hard = get_json(crds, "resourcequota", "labkeeper-limits", "-n", "lab-afterbad")["spec"]["hard"]
        assert hard["requests.memory"] == "32Gi"
    finally:
        restored = json.loads(good)
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            restored["metadata"].pop(key, None)
        crds.kubectl("apply", "-f", "-", input=json.dumps(restored))
        crds.kubectl("delete", "gpuuser", "afterbad", "--wait=false", check=False)


def test_fifty_users_at_once_get_fifty_distinct_uids_even_across_a_sigkill(crds, operator):
    names = [f"bulk{i:02d}" for i in range(50)]
    crds.kubectl("apply", "-f", "-", input=manifest(*[gpuuser(n) for n in names]))
    time.sleep(1.5)
    operator.kill()
    operator.start()

    def all_ready():
        users = get_json(crds, "gpuusers", "-l", "")["items"]
        ready = [u for u in users if u["metadata"]["name"] in names and (u.get("status") or {}).get("phase") == "Ready"]
        return ready if len(ready) == len(names) else None

    ready = wait_for(all_ready, timeout=180, interval=1.0, what="50 users Ready after a SIGKILL")
    uids = [u["status"]["uid"] for u in ready]
    assert len(set(uids)) == 50
    ledger = get_json(crds, "configmap", "labkeeper-uid-ledger", "-n", SYSTEM_NAMESPACE)["data"]
    assert len(set(ledger.values())) == len(ledger), "the ledger handed a uid out twice"
    namespaces = [n["metadata"]["name"] for n in get_json(crds, "namespaces")["items"]]
    assert sorted(n for n in namespaces if n.startswith("lab-bulk")) == sorted(f"lab-{n}" for n in names)
    for kind, name in (("resourcequota", "labkeeper-limits"), ("rolebinding", "labkeeper-user")):
        items = get_json(crds, kind, "-A", "--field-selector", f"metadata.name={name}")["items"]
        per_ns = [i["metadata"]["namespace"] for i in items if i["metadata"]["namespace"].startswith("lab-bulk")]
        assert sorted(per_ns) == sorted(f"lab-{n}" for n in names)
    crds.kubectl("delete", "gpuusers", *names, "--wait=false")
