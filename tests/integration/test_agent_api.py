"""The agent against the real API server: a GPUUser with its uid becomes an account and a home, the
node reports Provisioned, a SIGKILL plus a wiped /etc and /home comes back, deletion archives the data;
two nodes' agents on one SharedCache each keep their own entry and agree on the top level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkeeper.testing.cluster import REPO_ROOT, LocalCluster, NodeSpec
from labkeeper.testing.processes import SYSTEM_NAMESPACE, AgentProcess, seed_host_etc, wait_for

pytestmark = pytest.mark.integration
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlabkeeperExampleKeyForAliceOnlyNotReal0000 alice@laptop"


@pytest.fixture(scope="module")
def crds(tmp_path_factory):
    """A control plane of its own: this test plays the operator's part (uids), so none may run beside it."""
    local = LocalCluster(tmp_path_factory.mktemp("agent-cluster"), (NodeSpec("agent-node", "cpu-only"),),
                         preload=[REPO_ROOT / "crds"])
    local.start()
    local.kubectl("create", "namespace", SYSTEM_NAMESPACE)
    yield local
    local.stop()


@pytest.fixture
def agent_host(tmp_path, crds, unique):
    if os.geteuid() != 0:
        pytest.skip("the agent provisions accounts under a temporary host root as root")
    root = tmp_path / "host"
    agent = AgentProcess(crds.kubeconfig, root, f"node-{unique}", "--selector", f"labkeeper.io/test-agent={unique}",
                         "--resync", "5", log=tmp_path / "agent.log")
    yield root, agent
    agent.kill()


def get(cluster, kind, name) -> dict | None:
    out = cluster.kubectl("get", kind, name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def node_entry(cluster, name, node) -> dict:
    status = (get(cluster, "gpuuser", name) or {}).get("status") or {}
    return next((n for n in status.get("nodes") or [] if n["node"] == node), {})


def test_gpuuser_to_account_report_reboot_and_archive(crds, agent_host, unique):
    root, agent = agent_host
    name, node, label = f"al{unique}", f"node-{unique}", {"labkeeper.io/test-agent": unique}
    user = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser",
            "metadata": {"name": name, "labels": label},
            "spec": {"displayName": "Alice", "sshKeys": [KEY], "dataPolicy": "Archive"}}
    cache = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache",
             "metadata": {"name": f"pip-{unique}", "labels": label},
             "spec": {"type": "pip", "path": f"cache/pip-{unique}", "env": [{"name": "PIP_CACHE_DIR", "value": "$(PATH)"}]}}
    crds.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [user, cache]}))
    agent.start()

    wait_for(lambda: node_entry(crds, name, node).get("state") == "Waiting", timeout=30, what="Waiting reported")
    assert not (root / "data/users" / name).exists(), "no account before the operator allocates a uid"
    crds.kubectl("patch", "gpuuser", name, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": {"uid": 31001, "gid": 31001}}))
    wait_for(lambda: node_entry(crds, name, node).get("state") == "Provisioned", timeout=30, what="Provisioned")
    assert f"{name}:x:31001:31001:" in (root / "etc/passwd").read_text()
    assert os.readlink(root / "home" / name) == f"/data/users/{name}"
    assert KEY in (root / "data/users" / name / ".ssh/authorized_keys").read_text()
    assert f"labkeeper.io/agent-{node}" in get(crds, "gpuuser", name)["metadata"]["finalizers"]
    assert f"PIP_CACHE_DIR=/data/cache/pip-{unique}" in (root / "etc/profile.d/labkeeper.sh").read_text()
    wait_for(lambda: (get(crds, "sharedcache", f"pip-{unique}").get("status") or {}).get("phase") == "Ready",
             timeout=30, what="cache Ready")
    (root / "data/users" / name / "thesis.tex").write_text("chapter 1")

    # the node's entry declares how much her home takes there, and `labctl admin user ls` shows it as DISK
    wait_for(lambda: node_entry(crds, name, node).get("homeBytes"), timeout=30, what="her home measured")
    listing = subprocess.run([str(Path(sys.executable).parent / "labctl"), "admin", "user", "ls"], text=True,
                             capture_output=True, timeout=60, env={**os.environ, "KUBECONFIG": str(crds.kubeconfig),
                                                                   "COLUMNS": "200", "NO_COLOR": "1"})
    row = next(line.split() for line in listing.stdout.splitlines() if line.split()[:1] == [name])
    assert row[-1].endswith("KiB") or row[-1].endswith("MiB"), listing.stdout

    agent.kill()
    import shutil
    shutil.rmtree(root / "etc")
    shutil.rmtree(root / "home")
    seed_host_etc(root)
    agent.start()
    wait_for(lambda: (root / "home" / name).is_symlink() and f"{name}:x:31001" in (root / "etc/passwd").read_text(),
             timeout=30, what="recovery after the wipe")
    assert (root / "data/users" / name / "thesis.tex").read_text() == "chapter 1"

    crds.kubectl("delete", "gpuuser", name, "--wait=false")
    wait_for(lambda: get(crds, "gpuuser", name) is None, timeout=30, what="the agent's finalizer released")
    archives = list((root / "data/archive").glob(f"{name}-*.tar.gz"))
    assert len(archives) == 1
    assert not (root / "data/users" / name).exists()
    assert f"{name}:" not in (root / "etc/passwd").read_text()
    crds.kubectl("delete", "sharedcache", f"pip-{unique}", "--wait=false")


def test_two_nodes_report_one_cache_and_a_problem_on_one_is_not_hidden_by_the_other(crds, tmp_path, unique):
    """node b's data root has a symlink planted where the cache belongs: the cache is Failed naming b, and
    stays so however often the healthy node a resyncs; once the symlink is gone both are Ready."""
    if os.geteuid() != 0:
        pytest.skip("the agent provisions trees under a temporary host root as root")
    name, label = f"pip-{unique}", {"labkeeper.io/test-agent": unique}
    good, bad = f"a-{unique}", f"b-{unique}"
    roots = {node: tmp_path / node / "host" for node in (good, bad)}
    for root in roots.values():
        (root / "data/cache").mkdir(parents=True)
    (roots[bad] / "elsewhere").mkdir()
    (roots[bad] / f"data/cache/{name}").symlink_to(roots[bad] / "elsewhere")
    cache = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache", "metadata": {"name": name, "labels": label},
             "spec": {"type": "pip", "path": f"cache/{name}", "env": [{"name": "PIP_CACHE_DIR", "value": "$(PATH)"}]}}
    crds.kubectl("apply", "-f", "-", input=json.dumps(cache))
    agents = [AgentProcess(crds.kubeconfig, root, node, "--selector", f"labkeeper.io/test-agent={unique}",
                           "--resync", "1", log=root.parent / "agent.log").start()
              for node, root in roots.items()]

    def logs() -> str:
        return "\n".join(agent.log_tail(3000) for agent in agents)

    def status() -> dict:
        return (get(crds, "sharedcache", name) or {}).get("status") or {}

    def states(status: dict) -> dict[str, str]:
        return {n["node"]: n.get("state") for n in status.get("nodes") or []}

    try:
        seen = wait_for(lambda: (s := status()) and states(s) == {good: "Ready", bad: "Failed"} and s,
                        timeout=60, what=logs)
        ready = next(c for c in seen["conditions"] if c["type"] == "Ready")
        assert seen["phase"] == "Failed" and ready["status"] == "False"
        assert ready["message"].startswith(f"{bad}: cache/{name}") and good not in ready["message"]
        assert next(n for n in seen["nodes"] if n["node"] == good)["message"] == f"/data/cache/{name} in place"

        # both agents resync every second: the top level must hold, and an unchanged resync writes nothing
        seen = wait_for(lambda: (s := status()) and states(s) == {good: "Ready", bad: "Failed"}
                        and all("sizeBytes" in n for n in s["nodes"] if n["node"] == good) and s,
                        timeout=30, what=logs)
        version = get(crds, "sharedcache", name)["metadata"]["resourceVersion"]
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            now = get(crds, "sharedcache", name)
            assert now["status"]["phase"] == "Failed", f"flapped: {now['status']}"
            assert now["metadata"]["resourceVersion"] == version, f"rewritten on a resync: {now['status']}"
            time.sleep(0.3)

        (roots[bad] / f"data/cache/{name}").unlink()
        healed = wait_for(lambda: (s := status()).get("phase") == "Ready" and s, timeout=30, what=logs)
        assert states(healed) == {good: "Ready", bad: "Ready"}
        assert next(c for c in healed["conditions"] if c["type"] == "Ready")["status"] == "True"
        assert (roots[bad] / f"data/cache/{name}").is_dir() and not (roots[bad] / f"data/cache/{name}").is_symlink()

        # `labctl admin cache clean`: every node cleans its own copy, and the top level names the latest
        for root in roots.values():
            (root / f"data/cache/{name}/stale.whl").write_bytes(b"x" * 4096)
        crds.kubectl("patch", "sharedcache", name, "--type=merge", "-p", json.dumps(
            {"metadata": {"annotations": {"labkeeper.io/clean-requested": "r1"}},
             "spec": {"cleanup": {"maxSize": "1"}}}))
        cleaned = wait_for(lambda: (s := status()) and all((n.get("lastCleanup") or {}).get("request") == "r1"
                                                           for n in s["nodes"]) and s, timeout=30, what=logs)
        assert [n["lastCleanup"]["removedFiles"] for n in cleaned["nodes"]] == [1, 1]
        assert not any((root / f"data/cache/{name}/stale.whl").exists() for root in roots.values())
        assert cleaned["lastCleanup"]["request"] == "r1" and cleaned["lastCleanup"]["node"] in roots
    finally:
        for agent in agents:
            agent.kill()
        crds.kubectl("delete", "sharedcache", name, "--wait=false")


def test_offboarded_twice_the_same_day_the_node_keeps_both_generations_of_her_files(crds, agent_host, unique):
    """dave is offboarded with --archive, comes back, writes more, and is offboarded again the same day: two
    archives, each with what his home held then, and the node reports Offboarded each time."""
    root, agent = agent_host
    name, node, label = f"dv{unique}", f"node-{unique}", {"labkeeper.io/test-agent": unique}
    user = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": name, "labels": label},
            "spec": {"displayName": "Dave", "dataPolicy": "Archive"}}
    crds.kubectl("apply", "-f", "-", input=json.dumps(user))
    crds.kubectl("patch", "gpuuser", name, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": {"uid": 31002, "gid": 31002}}))
    agent.start()
    home = root / "data/users" / name

    def set_state(state: str) -> None:
        crds.kubectl("patch", "gpuuser", name, "--type=merge", "-p", json.dumps({"spec": {"state": state}}))

    for generation, text in enumerate(("first draft", "second draft"), start=1):
        wait_for(lambda: node_entry(crds, name, node).get("state") == "Provisioned", timeout=30, what="Provisioned")
        (home / f"draft-{generation}.txt").write_text(text)
        set_state("Offboarded")
        wait_for(lambda: node_entry(crds, name, node).get("state") == "Offboarded" and not home.exists(),
                 timeout=30, what=lambda: agent.log_tail())
        assert len(list((root / "data/archive").glob(f"{name}-*.tar.gz"))) == generation
        set_state("Active")

    import tarfile
    archives = sorted((root / "data/archive").glob(f"{name}-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    contents = []
    for archive in archives:
        with tarfile.open(archive) as tar:
            contents.append({m.name: tar.extractfile(m).read() for m in tar if m.isfile()})
    assert contents[0][f"{name}/draft-1.txt"] == b"first draft" and f"{name}/draft-2.txt" not in contents[0]
    assert contents[1][f"{name}/draft-2.txt"] == b"second draft"
    crds.kubectl("delete", "gpuuser", name, "--wait=false")
