"""`kubectl get` of live objects: every printer column shows something true (a size, how long a workspace
has run and idled, the keep-alive in force), nothing reads <invalid>, and the short names reach labkeeper's
kinds, not core ones. Real API server, operator and node agents (processes, as `make dev` runs them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from labkeeper.testing.processes import AgentProcess, wait_for

pytestmark = pytest.mark.integration
LABCTL = os.path.join(os.path.dirname(sys.executable), "labctl")


def columns(text: str) -> list[dict[str, str]]:
    """kubectl's table as dicts, cut at the header's column starts (values may contain single spaces)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
            for line in lines[1:]]


def get_row(cluster, *args) -> dict[str, str]:
    rows = columns(cluster.kubectl("get", *args).stdout)
    assert len(rows) == 1, rows
    return rows[0]


def apply(cluster, *objects: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


@pytest.fixture
def agents(crds, tmp_path, unique):
    """An agent process per session node, as `make dev` runs them, acting only on this test's objects."""
    if os.geteuid() != 0:
        pytest.skip("the agent provisions trees under a temporary host root as root")
    started = [AgentProcess(crds.kubeconfig, tmp_path / node / "host", node, "--selector",
                            f"labkeeper.io/test-columns={unique}", "--resync", "1").start()
               for node in ("gpu-node-1", "gpu-node-2")]
    yield started
    for agent in started:
        agent.kill()


def test_printer_columns_of_live_caches_stores_and_workspaces_say_what_is_true(crds, operator, agents, unique):
    label = {"labkeeper.io/test-columns": unique}
    cache, store, user = f"pip-{unique}", f"hf-{unique}", f"col-{unique}"
    namespace = f"lab-{user}"
    # files already on the data disk (the agents measure a tree when they take it on, then every few minutes)
    for agent in agents:
        (agent.data / f"cache/{cache}").mkdir(parents=True)
        (agent.data / f"cache/{cache}/wheel.whl").write_bytes(b"x" * 3 * 1024 * 1024)
        (agent.data / f"models/{store}").mkdir(parents=True)
        (agent.data / f"models/{store}/model.bin").write_bytes(b"x" * 5 * 1024)
    apply(crds,
          {"apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache", "metadata": {"name": cache, "labels": label},
           "spec": {"type": "pip", "path": f"cache/{cache}", "env": [{"name": "PIP_CACHE_DIR", "value": "$(PATH)"}]}},
          {"apiVersion": "labkeeper.io/v1alpha1", "kind": "ModelStore", "metadata": {"name": store, "labels": label},
           "spec": {"type": "huggingface", "path": f"models/{store}",
                    "env": [{"name": "HF_HUB_CACHE", "value": "$(PATH)"}]}},
          {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": user},
           "spec": {"tier": "student"}})
    try:
        # `scache` reaches SharedCaches (`sc` is StorageClass's); SIZE is the agents' measurement
        cached = wait_for(lambda: (row := get_row(crds, "scache", cache))["SIZE"] == "3Mi" and row,
                          timeout=90, what=lambda: f"the cache's SIZE column: {get_row(crds, 'scache', cache)}")
        assert cached["TYPE"] == "pip" and cached["PATH"] == f"cache/{cache}"
        stored = wait_for(lambda: (row := get_row(crds, "ms", store))["SIZE"] == "12Ki" and row,
                          timeout=90, what=lambda: f"the model store's SIZE column: {get_row(crds, 'ms', store)}")
        assert stored["PHASE"] == "Ready"
        assert "StorageClass" not in crds.kubectl("get", "scache", "-o", "name").stdout

        wait_for(lambda: (json.loads(crds.kubectl("get", "gu", user, "-o", "json").stdout).get("status") or {})
                 .get("phase") == "Ready", timeout=60, what=f"GPUUser {user} Ready")
        workspace = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
                     "metadata": {"namespace": namespace},
                     "spec": {"image": "busybox", "cpu": "100m", "memory": "64Mi"}}
        apply(crds,
              # kept active for an hour after its last activity: not idle, and never <invalid>
              {**workspace, "metadata": {**workspace["metadata"], "name": "kept"},
               "spec": {**workspace["spec"], "keepAlive": "1h"}},
              {**workspace, "metadata": {**workspace["metadata"], "name": "plain"}},
              # no node has a 7g.80gb slice: it waits, with no run and no idle time to show
              {**workspace, "metadata": {**workspace["metadata"], "name": "waiting"},
               "spec": {**workspace["spec"], "gpu": {"profile": "7g.80gb", "count": 1}}})

        def running(name):
            row = get_row(crds, "ws", name, "-n", namespace)
            return row["PHASE"] == "Running" and row

        kept = wait_for(lambda: running("kept"), timeout=60, what="kept Running")
        plain = wait_for(lambda: running("plain"), timeout=60, what="plain Running")
        assert list(kept) == ["NAME", "STATE", "PHASE", "GPU", "RUNNING FOR", "IDLE FOR", "KEPT UNTIL", "AGE"]
        for row in (kept, plain):
            assert re.fullmatch(r"\d+s|\d+m\d*s?", row["RUNNING FOR"]), row  # live, not a 0 written at the end
        assert kept["IDLE FOR"] == "" and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]+Z", kept["KEPT UNTIL"]), kept
        assert re.fullmatch(r"\d+s|\d+m\d*s?", plain["IDLE FOR"]) and plain["KEPT UNTIL"] == "", plain
        waiting = wait_for(lambda: (row := get_row(crds, "ws", "waiting", "-n", namespace))["PHASE"] == "Pending"
                           and row, timeout=30, what="waiting Pending")
        assert (waiting["RUNNING FOR"], waiting["IDLE FOR"], waiting["KEPT UNTIL"]) == ("", "", ""), waiting
        assert "<invalid>" not in crds.kubectl("get", "ws", "-n", namespace).stdout

        # kubectl leaves a column empty when its field is unset; the one that ran and waits again keeps no stale one
        crds.kubectl("patch", "ws", "plain", "-n", namespace, "--type=merge", "-p", '{"spec":{"state":"Stopped"}}')
        wait_for(lambda: get_row(crds, "ws", "plain", "-n", namespace)["PHASE"] == "Stopped", timeout=60,
                 what="plain Stopped")
        crds.kubectl("patch", "ws", "plain", "-n", namespace, "--type=merge", "-p",
                     json.dumps({"spec": {"state": "Running", "gpu": {"profile": "7g.80gb", "count": 1}}}))
        again = wait_for(lambda: (row := get_row(crds, "ws", "plain", "-n", namespace))["PHASE"] == "Pending"
                         and row, timeout=60, what="plain waiting again")
        assert (again["RUNNING FOR"], again["IDLE FOR"]) == ("", ""), again
    finally:
        crds.kubectl("delete", "gu", user, "--wait=false", check=False)
        crds.kubectl("delete", "sharedcache", cache, "--wait=false", check=False)
        crds.kubectl("delete", "modelstore", store, "--wait=false", check=False)


def test_doctor_counts_agents_running_as_processes_when_there_is_no_daemonset(crds, operator, agents, unique):
    cache = f"doc-{unique}"
    apply(crds, {"apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache",
                 "metadata": {"name": cache, "labels": {"labkeeper.io/test-columns": unique}},
                 "spec": {"type": "pip", "path": f"cache/{cache}"}})
    try:
        def reported():
            status = json.loads(crds.kubectl("get", "sharedcache", cache, "-o", "json").stdout).get("status") or {}
            return {n["node"] for n in status.get("nodes") or []} == {"gpu-node-1", "gpu-node-2"}

        wait_for(reported, timeout=60, what="both agents' entries")
        result = subprocess.run([LABCTL, "admin", "doctor", "-o", "json"], capture_output=True, text=True,
                                env={**os.environ, "KUBECONFIG": str(crds.kubeconfig)}, timeout=120, check=False)
        agent = next(c for c in json.loads(result.stdout) if c["name"] == "node agent")
        assert agent["state"] == "ok", agent
        assert "no agent DaemonSet" in agent["detail"] and "gpu-node-1, gpu-node-2" in agent["detail"]
    finally:
        crds.kubectl("delete", "sharedcache", cache, "--wait=false", check=False)
