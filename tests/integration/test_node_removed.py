"""A node removed from the cluster (issue 17, point 5): what its agent wrote, its entries in GPUUser, SharedCache
and ModelStore status.nodes and its finalizer on every GPUUser, would stay forever, since no agent of that node
writes again. The operator watches Nodes and prunes them; a Failed entry of the deleted node no longer keeps a
tree Failed, and a user deleted afterwards is not held by the gone node's finalizer.

Two kwok nodes, each with its agent as a process under its own temporary host root, and the operator as a
process. The agent of the node to be removed finds a symlink planted where the cache belongs: Failed there."""

from __future__ import annotations

import os

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import API_VERSION, Lab, gpuuser
from labkeeper.testing.processes import AgentProcess, wait_for

pytestmark = pytest.mark.integration

KEPT, GONE = "keep-node", "gone-node"


def states(status: dict) -> dict[str, str]:
    return {n["node"]: n.get("state") for n in status.get("nodes") or []}


def tree(kind: str, name: str, path: str) -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name},
            "spec": {"type": "pip" if kind == "SharedCache" else "huggingface", "path": path,
                     "env": [{"name": "PIP_CACHE_DIR" if kind == "SharedCache" else "HF_HUB_CACHE",
                              "value": "$(PATH)"}]}}


@pytest.fixture(scope="module")
def two_node_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the agents provision accounts and trees under temporary host roots as root")
    workdir = tmp_path_factory.mktemp("noderemoved")
    with Lab((NodeSpec(KEPT, "cpu-only"), NodeSpec(GONE, "cpu-only")), workdir=workdir / "lab") as lab:
        roots = {node: workdir / node / "host" for node in (KEPT, GONE)}
        for root in roots.values():
            (root / "data" / "cache").mkdir(parents=True)
        # on the node that will go, something else sits where the cache belongs: its entry is Failed
        (roots[GONE] / "elsewhere").mkdir()
        (roots[GONE] / "data" / "cache" / "pip").symlink_to(roots[GONE] / "elsewhere")
        agents = {node: AgentProcess(lab.cluster.kubeconfig, root, node, "--sampler", "none", "--resync", "2").start()
                  for node, root in roots.items()}
        try:
            yield lab, agents
        finally:
            for agent in agents.values():
                agent.kill()
            print(lab.log_tail())
            for agent in agents.values():
                print(agent.log_tail())


def test_a_deleted_nodes_entries_and_finalizers_are_pruned_and_its_failed_entry_no_longer_fails_the_tree(
        two_node_lab):
    lab, agents = two_node_lab
    lab.apply(tree("SharedCache", "pip", "cache/pip"), tree("ModelStore", "hf", "models/hf"))
    lab.add_users(gpuuser("ann"), gpuuser("bob"))
    both = {KEPT: "Provisioned", GONE: "Provisioned"}
    for name in ("ann", "bob"):
        wait_for(lambda n=name: states(lab.status("gpuuser", n)) == both, timeout=60, what=f"{name} on both nodes")
        assert f"labkeeper.io/agent-{GONE}" in lab.get("gpuuser", name)["metadata"]["finalizers"]
    cache = wait_for(lambda: (s := lab.status("sharedcache", "pip")) and states(s) == {KEPT: "Ready", GONE: "Failed"}
                     and s, timeout=60, what="the cache Ready on one node and Failed on the other")
    assert cache["phase"] == "Failed"
    wait_for(lambda: states(lab.status("modelstore", "hf")) == {KEPT: "Ready", GONE: "Ready"}, timeout=60,
             what="the model store on both nodes")

    # the node is removed for good: its agent goes with it, then the Node object
    agents[GONE].kill()
    lab.kubectl("delete", "node", GONE, "--wait=true")

    healed = wait_for(lambda: (s := lab.status("sharedcache", "pip")).get("phase") == "Ready" and s, timeout=30,
                      what="the cache Ready once the node that failed it is gone")
    assert states(healed) == {KEPT: "Ready"}
    ready = next(c for c in healed["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and GONE not in ready["message"], ready
    wait_for(lambda: states(lab.status("modelstore", "hf")) == {KEPT: "Ready"}, timeout=30,
             what="the model store's entry of the gone node pruned")
    for name in ("ann", "bob"):
        wait_for(lambda n=name: states(lab.status("gpuuser", n)) == {KEPT: "Provisioned"}
                 and f"labkeeper.io/agent-{GONE}" not in lab.get("gpuuser", n)["metadata"].get("finalizers", []),
                 timeout=30, what=f"{name}'s entry and finalizer of the gone node pruned")
        assert f"labkeeper.io/agent-{KEPT}" in lab.get("gpuuser", name)["metadata"]["finalizers"]
        assert lab.status("gpuuser", name)["phase"] == "Ready"

    # a user deleted now waits for the agents that exist, not for the gone node's
    lab.kubectl("delete", "gpuuser", "bob", "--wait=false")
    wait_for(lambda: lab.get("gpuuser", "bob") is None, timeout=60, what="bob's GPUUser gone")
