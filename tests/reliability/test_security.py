"""What a user, a stranger and the agent can be made to do: an RBAC matrix for admin, alice, bob and
a certificate no GPUUser owns; no spec gets a GPU beyond entitlement; SharedCache paths and names that
would escape the data root are refused at apply, and links planted in a home never lead the agent
outside it."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from chaos_support import lab_with_agent, provisioned

from labkeeper.render.access import access_group
from labkeeper.testing.lab import API_VERSION, Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration

NODE = "sec-node"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlabkeeperExampleKeyForAliceOnlyNotReal0000 alice@laptop"


def security_policy() -> dict:
    policy = example_policy()
    # students get one small profile and half a GPU: anything more must be refused
    policy["tiers"]["student"].update({"allowedProfiles": ["1g.10gb"], "maxGpuEquivalents": 0.5})
    return policy


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    with lab_with_agent(tmp_path_factory.mktemp("security"), NODE, security_policy()) as (lab, agent):
        lab.add_users(gpuuser("alice"), gpuuser("bob"))
        # a certificate in the group of each one's current incarnation, as the operator issues it
        configs = {"admin": None, **{name: lab.cluster.user_kubeconfig(name, (
                       access_group(name, lab.status("gpuuser", name)["incarnation"]),)) for name in ("alice", "bob")},
                   "mallory": lab.cluster.user_kubeconfig("mallory", ("labkeeper:users",))}
        yield lab, agent, configs


# (verb, resource, namespace or "" for cluster scope) → who may: admin, alice, bob, mallory
A, AL, B, M = "admin", "alice", "bob", "mallory"
MATRIX = [
    ("create", "workspaces.labkeeper.io", "lab-alice", {A, AL}),
    ("delete", "workspaces.labkeeper.io", "lab-alice", {A, AL}),
    ("list", "workspaces.labkeeper.io", "lab-bob", {A, B}),
    ("create", "workspaces.labkeeper.io", "lab-bob", {A, B}),
    ("patch", "workspaces.labkeeper.io/status", "lab-alice", {A}),
    ("list", "workspaces.labkeeper.io", "", {A}),
    ("get", "pods", "lab-alice", {A, AL}),
    ("create", "pods", "lab-alice", {A}),
    ("delete", "pods", "lab-alice", {A}),
    ("create", "pods/exec", "lab-alice", {A, AL}),
    ("create", "pods/exec", "lab-bob", {A, B}),
    ("list", "pods", "", {A}),
    ("get", "secrets", "lab-alice", {A}),
    ("list", "secrets", SYSTEM_NAMESPACE, {A}),
    ("list", "configmaps", SYSTEM_NAMESPACE, {A}),
    ("update", "configmaps", SYSTEM_NAMESPACE, {A}),
    ("create", "namespaces", "", {A}),
    ("delete", "namespaces", "", {A}),
    ("list", "nodes", "", {A}),
    ("patch", "nodes", "", {A}),
    ("get", "resourcequotas", "lab-alice", {A, AL}),
    ("update", "resourcequotas", "lab-alice", {A}),
    ("delete", "resourcequotas", "lab-alice", {A}),
    ("create", "rolebindings", "lab-alice", {A}),
    ("create", "gpuusers.labkeeper.io", "", {A}),
    ("list", "gpuusers.labkeeper.io", "", {A}),
    ("patch", "gpuusers.labkeeper.io/alice", "", {A}),
    ("get", "gpuusers.labkeeper.io/alice", "", {A, AL}),
    ("get", "gpuusers.labkeeper.io/bob", "", {A, B}),
    ("create", "sharedcaches.labkeeper.io", "", {A}),
    ("delete", "sharedcaches.labkeeper.io", "", {A}),
    ("create", "modelstores.labkeeper.io", "", {A}),
    ("update", "modelstores.labkeeper.io", "", {A}),
    ("create", "priorityclasses", "", {A}),
]


def can_i(lab: Lab, config, verb: str, resource: str, namespace: str) -> bool:
    resource, _, name = resource.partition("/")
    if (resource.endswith("labkeeper.io") is False and name in ("exec", "status")) or name in ("status",):
        args = ["auth", "can-i", verb, resource, f"--subresource={name}"]
    else:
        args = ["auth", "can-i", verb, f"{resource}/{name}" if name else resource]
    args += ["-n", namespace] if namespace else []
    out = lab.kubectl(*args, kubeconfig=config, check=False)
    assert out.stdout.strip() in ("yes", "no"), (args, out.stdout, out.stderr)
    return out.stdout.strip() == "yes"


def test_rbac_matrix_every_identity_gets_exactly_its_own(sec):
    lab, _, configs = sec
    wrong = []
    for verb, resource, namespace, allowed in MATRIX:
        for who, config in configs.items():
            if can_i(lab, config, verb, resource, namespace) != (who in allowed):
                wrong.append(f"{who} {'can' if who not in allowed else 'cannot'} {verb} {resource} in {namespace or 'cluster'}")
    assert wrong == []


def test_a_stranger_certificate_sees_nothing_and_creates_nothing(sec):
    lab, _, configs = sec
    for args in (("get", "workspaces", "-n", "lab-alice"), ("get", "gpuusers"), ("get", "pods", "-A")):
        out = lab.kubectl(*args, kubeconfig=configs[M], check=False)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), (args, out.stdout)
    out = lab.kubectl("apply", "-f", "-", input=json.dumps(workspace("squat", "alice")), kubeconfig=configs[M],
                    check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stdout
    assert lab.get("namespace", "lab-mallory") is None


def test_no_spec_gets_alice_a_gpu_beyond_her_entitlement(sec):
    lab, _, configs = sec
    alice = configs[AL]
    # a profile her tier does not allow
    lab.apply(workspace("big", "alice", profile="3g.40gb"), kubeconfig=alice)
    status = lab.wait_phase("big", "alice", "Pending", timeout=30)
    wait_for(lambda: lab.status("workspace", "big", "lab-alice").get("reason") == "NotEntitled", timeout=30,
             what="big NotEntitled")
    assert lab.get("pod", "ws-big", "lab-alice") is None, status
    # an allowed profile, in a count past her 0.5 GPU-equivalents
    lab.apply(workspace("many", "alice", profile="1g.10gb", count=4), kubeconfig=alice)
    wait_for(lambda: lab.status("workspace", "many", "lab-alice").get("reason") == "QuotaExceeded", timeout=30,
             what="many QuotaExceeded")
    assert lab.get("pod", "ws-many", "lab-alice") is None
    # around the operator: a pod of her own, or a workspace in bob's namespace
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "direct", "namespace": "lab-alice"},
           "spec": {"containers": [{"name": "c", "image": "busybox",
                                    "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}]}}
    out = lab.kubectl("apply", "-f", "-", input=json.dumps(pod), kubeconfig=alice, check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stdout
    out = lab.kubectl("apply", "-f", "-", input=json.dumps(workspace("borrowed", "bob", profile="1g.10gb")),
                      kubeconfig=alice, check=False)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stdout
    # even with admin rights, a pod at another PriorityClass finds no quota in her namespace
    lab.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "vip"},
               "value": 900000})
    pod["spec"]["priorityClassName"] = "vip"
    pod["metadata"]["name"] = "vip-pod"
    out = lab.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0 and "exceeded quota" in out.stderr.lower(), (out.stdout, out.stderr)


@pytest.mark.parametrize(("path", "name"), [
    ("../etc", "escape"), ("cache/../../etc", "escape2"), ("/etc", "absolute"), ("cache/./x/..", "dots"),
    ("c" * 300, "longpath"), ("cache/pip", "n" * 300), ("cache/pip", "caché"), ("cache/pïp", "unicodepath"),
])
def test_sharedcache_paths_and_names_that_could_escape_are_refused_at_apply(sec, path, name):
    lab, _, _ = sec
    cache = {"apiVersion": API_VERSION, "kind": "SharedCache", "metadata": {"name": name},
             "spec": {"type": "pip", "path": path}}
    out = lab.kubectl("apply", "-f", "-", input=json.dumps(cache), check=False)
    assert out.returncode != 0, f"{name}: {path!r} accepted"
    assert any(word in out.stderr for word in ("spec.path", "metadata.name", "name")), out.stderr


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_links_planted_in_a_home_never_lead_the_agent_outside_it(sec, tmp_path):
    lab, agent, _ = sec
    wait_for(lambda: provisioned(lab, "alice", NODE), timeout=60, what="alice's home")
    home = agent.data / "users" / "alice"
    outside = tmp_path / "outside"  # not under the data root
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root:$6$secret:19000::::::\n")
    os.chmod(secret, 0o600)
    before = (sha(secret), secret.stat().st_mode, secret.stat().st_uid, sorted(os.listdir(outside)))
    # alice swaps the files the agent writes for links to what she wants written or chowned
    for rel in (".ssh", ".profile", ".bashrc", ".kube"):
        target = home / rel
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                child.unlink()
            target.rmdir()
        elif target.exists() or target.is_symlink():
            target.unlink()
    (home / ".ssh").symlink_to(outside)
    (home / ".profile").symlink_to(secret)
    (home / ".bashrc").symlink_to(secret)
    (home / ".kube").symlink_to(outside)
    (home / "escape").symlink_to(secret)
    # a new key makes the agent rewrite authorized_keys on its next pass
    lab.kubectl("patch", "gpuuser", "alice", "--type=merge", "-p", json.dumps({"spec": {"sshKeys": [KEY]}}))
    wait_for(lambda: "authorized_keys (1 keys)" in agent.log_tail(20000) or ("authorized_keys" in agent.log_tail(4000)
             and provisioned(lab, "alice", NODE)), timeout=30, what="an agent pass over alice's home")
    wait_for(lambda: provisioned(lab, "alice", NODE), timeout=30, what="alice provisioned after the pass")
    after = (sha(secret), secret.stat().st_mode, secret.stat().st_uid, sorted(os.listdir(outside)))
    assert after == before, "the agent followed a planted link out of the data root"
    assert (home / "escape").is_symlink()
    assert (home / ".ssh").is_dir() and not (home / ".ssh").is_symlink()
    assert KEY in (home / ".ssh" / "authorized_keys").read_text()
