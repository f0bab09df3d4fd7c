"""Every status the agent and the operator write is one their api/ model declares, field by field and nested: a
status keeps unknown fields when it is read (a newer agent's), so without this a misspelt or undeclared field
would be stored, and shown by nobody. Each writer runs against a stand-in client that checks what it patches."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from test_user_decisions import AGENT, COUNTED, GRANTED, scope

from labkeeper.agent import desired
from labkeeper.agent.activity import Verdict
from labkeeper.agent.activity_loop import ActivityLoop
from labkeeper.agent.main import Agent
from labkeeper.agent.model import Report
from labkeeper.agent.recovery import Host, HostResult
from labkeeper.api.names import CLEAN_ANNOTATION
from labkeeper.api.policy import LabPolicy
from labkeeper.api.resources import GPUUser, ModelStore, SharedCache, check_status, read_object
from labkeeper.controller.accounting import Accountant
from labkeeper.controller.failures import record_failure
from labkeeper.controller.nodes import NodePruner
from labkeeper.controller.usage import UsageWriter
from labkeeper.controller.user_decisions import held, uid_unavailable, user_status
from labkeeper.controller.users import UserReconciler

NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


class CheckingKube:
    """Answers reads from a dict of objects; every status it is asked to write must pass check_status."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.events: list[str] = []
        self.api = None

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def list(self, kind: str, namespace: str | None = None, **_: Any) -> list[dict[str, Any]]:
        return [o for (k, _), o in self.objects.items() if k == kind]

    def event(self, obj: dict[str, Any], reason: str, message: str, **_: Any) -> None:
        self.events.append(reason)

    def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
              subresource: str | None = None) -> dict[str, Any]:
        if subresource == "status":
            check_status(kind, patch["status"])
            self.statuses.append((kind, patch["status"]))
        obj = self.objects.get((kind, name)) or {"metadata": {"name": name, "resourceVersion": "1"}}
        return {**obj, "status": {**(obj.get("status") or {}), **patch.get("status", {})}}

    def patch_status(self, kind: str, obj: dict[str, Any], desired_status: dict[str, Any]) -> bool:
        self.patch(kind, obj["metadata"]["name"], {"status": desired_status}, subresource="status")
        return True


def written(kube: CheckingKube, kind: str) -> list[dict[str, Any]]:
    return [status for k, status in kube.statuses if k == kind]


# ---- the check itself --------------------------------------------------------------------------------------

def test_a_field_the_model_lacks_is_refused_with_its_path_and_a_declared_one_passes():
    with pytest.raises(ValueError, match=r"GPUUserStatus declares no nodes\[0\]\.homeByte$"):
        check_status("GPUUser", {"nodes": [{"node": "node-a", "homeByte": 4096}]})
    with pytest.raises(ValueError, match=r"declares no queue\.place, meter\[0\]\.gpus"):
        check_status("Workspace", {"queue": {"position": 1, "place": 1},
                                   "meter": [{"state": "active", "since": "2026-12-01T09:00:00Z", "gpus": 1}]})
    with pytest.raises(ValueError, match="position"):
        check_status("Workspace", {"queue": {"position": 0}})  # declared, but a value the model refuses
    check_status("GPUUser", {"nodes": [{"node": "node-a", "homeBytes": 4096}], "usage": {"workspaces": 1}})


# ---- the agent ------------------------------------------------------------------------------------------------

class Sizes:
    """The disk scanner's last figures, as the agent asks for them."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def get(self, path: str) -> int | None:
        return self.sizes.get(path)

    def set_targets(self, paths: list[str]) -> None:
        pass


def agent_on(tmp_path: Path, kube: CheckingKube, sizes: dict[str, int]) -> Agent:
    for root in ("host", "data/cache/pip"):
        (tmp_path / root).mkdir(parents=True)
    (tmp_path / "data/cache/pip/wheel").write_bytes(b"x" * 100)
    agent = Agent(kube, Host(tmp_path / "host", tmp_path / "data"), "node-a", "labkeeper-system",  # type: ignore[arg-type]
                  clock=lambda: NOW)
    agent.scanner = Sizes(sizes)  # type: ignore[assignment]
    return agent


def read(model: Any, body: dict[str, Any]) -> Any:
    return read_object(model, body)[0]


def test_the_agents_user_and_tree_statuses_are_what_the_models_declare(tmp_path):
    kube = CheckingKube()
    agent = agent_on(tmp_path, kube, {"users/alice": 8192, "cache/pip": 600, "models/hf": 2 ** 30})
    alice = read(GPUUser, {"kind": "GPUUser", "metadata": {"name": "alice", "resourceVersion": "3"},
                              "spec": {"tier": "student"}, "status": {"uid": 20001, "gid": 20001}})
    # stored before the rule that refuses privileged groups: her node entry says why nothing was done
    mallory = read(GPUUser, {"kind": "GPUUser", "metadata": {"name": "mallory", "resourceVersion": "4"},
                                      "spec": {"groups": ["sudo"]}, "status": {"uid": 20009, "gid": 20009}})
    pip = read(SharedCache, {
        "kind": "SharedCache", "metadata": {"name": "pip", "resourceVersion": "5", "generation": 2,
                                            "annotations": {CLEAN_ANNOTATION: "now-1"}},
        "spec": {"type": "pip", "path": "cache/pip", "cleanup": {"maxAge": "1d"},
                 "alerts": {"sizeLimit": "1Ki", "warnPercent": 50, "criticalPercent": 90}}})
    hf = read(ModelStore, {"kind": "ModelStore", "metadata": {"name": "hf", "resourceVersion": "6"},
                              "spec": {"type": "huggingface", "path": "models/hf", "sizeAlert": "1Gi"}})
    want = desired.desired_state([alice, mallory], [pip], [hf], {}, 2000)
    result = HostResult(Report(), tree_paths={"cache/pip": "/data/cache/pip"})
    for user in (alice, mallory):
        agent._user_status(user, want, result)
    fs = type("Fs", (), {"used": 10, "total": 100, "ratio": 0.1})()
    agent._tree_status("SharedCache", pip, want, result, fs)  # type: ignore[arg-type]
    agent._tree_status("ModelStore", hf, want, result, fs)  # type: ignore[arg-type]

    [alices], [mallorys] = (status["nodes"] for status in written(kube, "GPUUser"))
    assert (alices["state"], alices["homeBytes"]) == ("Provisioned", 8192)
    assert mallorys["state"] == "Failed" and "spec.groups[0]: group 'sudo'" in mallorys["message"]
    cache, store = written(kube, "SharedCache")[0], written(kube, "ModelStore")[0]
    assert cache["nodes"][0]["lastCleanup"]["request"] == "now-1" and cache["nodes"][0]["diskAlert"] == "Warning"
    assert cache["observedGeneration"] == 2 and store["nodes"][0]["diskAlert"] == "Critical"


def test_the_activity_the_agent_reports_is_what_the_workspace_model_declares():
    running = {"metadata": {"namespace": "lab-alice", "name": "nb"},
               "status": {"node": "node-a", "phase": "Running", "podUID": "0b8f3a4e",
                          "devices": ["1 x nvidia.com/mig-1g.10gb"]}}
    kube = CheckingKube({("Workspace", "nb"): running})

    class Monitor:
        thresholds = None

        def observe(self, workspaces: list[Any]) -> dict[tuple[str, str], Verdict]:
            assert [w.devices for w in workspaces] == [("1g.10gb",)]
            return {w.key: Verdict(True, "gpu 41% SM on 1g.10gb", {}) for w in workspaces}

    loop = ActivityLoop(kube, "node-a", Monitor(), LabPolicy, lambda: NOW)  # type: ignore[arg-type]
    assert loop.tick() == 1
    assert written(kube, "Workspace") == [{"activityReason": "gpu 41% SM on 1g.10gb",
                                           "lastActivity": "2026-12-01T09:00:00Z"}]


# ---- the operator ----------------------------------------------------------------------------------------------

def test_the_gpuuser_statuses_the_operator_decides_are_what_the_model_declares():
    decided = [user_status(scope(status={"nodes": AGENT}), 20001, GRANTED, COUNTED),
               user_status(scope("Suspended", status={"nodes": AGENT}), 20001, GRANTED, COUNTED),
               uid_unavailable(scope(), "no uid left in the lab's range")]
    unknown_tier = held(scope(tier="ta"))
    assert unknown_tier is not None
    for status in [*decided, unknown_tier.status]:
        check_status("GPUUser", status)


def test_her_incarnation_is_recorded_in_a_field_the_model_declares():
    kube = CheckingKube({("GPUUser", "alice"): {"metadata": {"name": "alice", "resourceVersion": "3"}, "spec": {}}})
    reconciler = UserReconciler(kube, None, None, None, lambda: NOW)  # type: ignore[arg-type]
    _, incarnation = reconciler._incarnation(kube.objects[("GPUUser", "alice")])
    assert written(kube, "GPUUser") == [{"incarnation": incarnation}] and len(incarnation) == 8


def test_the_operators_usage_accounting_pruning_and_failure_writes_are_what_the_models_declare():
    alice = {"kind": "GPUUser", "metadata": {"name": "alice", "resourceVersion": "7", "generation": 2},
             "spec": {}, "status": {"nodes": [{"node": "node-a", "state": "Provisioned"},
                                              {"node": "gone", "state": "Failed"}]}}
    pip = {"kind": "SharedCache", "metadata": {"name": "pip", "resourceVersion": "8"},
           "spec": {"type": "pip", "path": "cache/pip"},
           "status": {"nodes": [{"node": "node-a", "state": "Ready", "sizeBytes": 10},
                                {"node": "gone", "state": "Failed", "message": "no ACLs"}]}}
    meter = [{"state": "active", "since": "2026-12-01T07:00:00Z", "gpuEquivalents": 0.5}]
    nb = {"kind": "Workspace", "metadata": {"name": "nb", "namespace": "lab-alice"},
          "spec": {"image": "x", "gpu": {"profile": "1g.10gb"}},
          "status": {"phase": "Running", "meter": meter, "holdNode": "node-a",
                     "holdResource": "nvidia.com/mig-1g.10gb", "holdCount": 1,
                     "holdUntil": "2026-12-01T10:00:00Z"}}
    kube = CheckingKube({("GPUUser", "alice"): alice, ("SharedCache", "pip"): pip, ("Workspace", "nb"): nb,
                         ("Node", "node-a"): {"metadata": {"name": "node-a"}}})
    policy = type("Store", (), {"current": LabPolicy()})()
    assert UsageWriter(kube, policy, lambda: NOW).refresh("alice")  # type: ignore[arg-type]
    assert Accountant(kube, policy, lambda: NOW).flush("alice")  # type: ignore[arg-type]
    pruned = NodePruner(kube, lambda: NOW).sweep()  # type: ignore[arg-type]
    assert sorted(pruned.entries) == ["GPUUser/alice: gone", "SharedCache/pip: gone"]
    record_failure(kube, "Workspace", nb, RuntimeError("the API went away"), NOW)  # type: ignore[arg-type]
    assert [sorted(s) for _, s in kube.statuses] == [
        ["usage"], ["accounting"], ["nodes"], ["conditions", "nodes", "phase", "size", "sizeBytes"], ["conditions"]]


def test_the_client_holds_a_lab_kinds_status_patch_to_its_model_before_it_writes(monkeypatch):
    from labkeeper.kube.client import Kube

    kube = Kube.__new__(Kube)  # no API server: a patch that gets through is recorded, not sent
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(kube, "patch", lambda kind, name, body, namespace=None, **_: sent.append(body) or body)
    ws = {"metadata": {"name": "nb", "namespace": "lab-alice"},
          "status": {"phase": "Running", "runningSince": "2026-12-01T08:00:00Z"}}
    with pytest.raises(ValueError, match="lastSeenRuning"):
        kube.patch_status("Workspace", ws, {"phase": "Stopped", "lastSeenRuning": "2026-12-01T09:00:00Z"})
    with pytest.raises(ValueError):
        kube.patch_status("Workspace", ws, {"runtimeSeconds": "a while"})
    assert sent == []
    assert kube.patch_status("Workspace", ws, {"phase": "Stopped", "runningSince": None})
    assert sent == [{"status": {"phase": "Stopped", "runningSince": None}}]
    # kinds with no model of labkeeper's are written as given
    assert kube.patch_status("Pod", {"metadata": {"name": "p"}}, {"anything": 1})


def test_a_null_inside_a_desired_object_matches_the_field_the_api_server_never_stored(monkeypatch):
    """A merge patch stores no null: a queue place with no estimate is kept without one, and the next pass that
    finds the same place writes nothing (it wrote every waiter's status again on every pass)."""
    from labkeeper.kube.client import Kube

    kube = Kube.__new__(Kube)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(kube, "patch", lambda kind, name, body, namespace=None, **_: sent.append(body) or body)
    place = {"position": 2, "ahead": ["bob/ws"], "reason": "no free 1g.10gb slice", "relativeUsage": None,
             "estimatedStart": None, "estimateBasis": None}
    stored = {"position": 2, "ahead": ["bob/ws"], "reason": "no free 1g.10gb slice"}
    ws = {"metadata": {"name": "nb", "namespace": "lab-alice"}, "status": {"phase": "Pending", "queue": stored}}
    assert kube.patch_status("Workspace", ws, {"phase": "Pending", "queue": place}) is None
    assert sent == []
    # a field the status has and the desired one drops is still written away, and a moved place is written
    with_estimate = {"status": {"phase": "Pending", "queue": {**stored, "estimatedStart": "2026-12-07T12:00:00Z"}}}
    assert kube.patch_status("Workspace", {**ws, **with_estimate}, {"queue": place})
    assert kube.patch_status("Workspace", ws, {"queue": {**place, "position": 1}})
    assert [body["status"]["queue"]["position"] for body in sent] == [2, 1]
