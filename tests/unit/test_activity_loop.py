"""Which workspaces a node's agent samples, read from Workspace objects as the API returns them."""

import datetime as dt
import threading
import time

from labkeeper.agent.activity_loop import ActivityLoop, watched_workspaces
from labkeeper.api.policy import LabPolicy
from labkeeper.api.resources import Workspace


def ws(name, *, node="node-a", phase="Running", uid="0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", devices=()):
    return Workspace.model_validate({"metadata": {"namespace": "lab-alice", "name": name}, "spec": {"image": "x"},
                                     "status": {"node": node, "phase": phase, "podUID": uid, "devices": list(devices)}})


def test_the_agent_samples_running_and_warned_workspaces_on_its_own_node_only():
    found = watched_workspaces([
        ws("here"), ws("warned", phase="IdleWarning"), ws("elsewhere", node="node-b"),
        ws("stopping", phase="Stopping"), ws("starting", phase="Starting"), ws("no-pod-yet", uid=None),
    ], "node-a")
    assert [w.name for w in found] == ["here", "warned"]


def test_a_workspaces_gpu_profiles_tell_the_verdict_it_has_a_gpu():
    found = watched_workspaces([ws("mig", devices=["1 x nvidia.com/mig-1g.10gb"]),
                                ws("full", devices=["2 x nvidia.com/gpu"]), ws("cpu")], "node-a")
    assert [w.devices for w in found] == [("1g.10gb",), ("full",), ()]
    assert found[0].pod_uid == "0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b" and found[0].key == ("lab-alice", "mig")


def test_a_new_policys_shorter_sample_interval_counts_at_once_not_after_the_old_interval():
    slow = LabPolicy()  # samples every 30 s
    fast = slow.model_copy(update={"activity": slow.activity.model_copy(
        update={"sample_interval": dt.timedelta(seconds=0.05)})})
    in_force = [slow]
    loop = ActivityLoop(None, "node-a", None, lambda: in_force[0], lambda: dt.datetime.now(dt.UTC))
    ticks: list[float] = []
    loop.tick = lambda: ticks.append(time.monotonic())
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), kwargs={"recheck": 0.05}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not ticks and time.monotonic() < deadline:
            time.sleep(0.01)
        in_force[0] = fast  # the ConfigMap changed: a sample every 50 ms from now on
        changed = time.monotonic()
        while len(ticks) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ticks) >= 3 and ticks[1] - changed < 1.0, [t - changed for t in ticks]
    finally:
        stop.set()
        runner.join(timeout=5)


def test_a_workspace_is_parsed_again_only_when_its_resource_version_moved(monkeypatch):
    from labkeeper.agent import activity_loop

    parsed: list[str] = []
    real = activity_loop.read_object

    def counting(model, body):
        parsed.append(body["metadata"]["name"])
        return real(model, body)

    monkeypatch.setattr(activity_loop, "read_object", counting)
    loop = ActivityLoop(None, "node-a", None, LabPolicy, lambda: dt.datetime.now(dt.UTC))

    def body(name, version, phase="Running"):
        return {"metadata": {"namespace": "lab-alice", "name": name, "resourceVersion": version},
                "spec": {"image": "x"}, "status": {"node": "node-a", "phase": phase, "podUID": "p"}}

    first = loop._read([body("a", "1"), body("b", "1")])
    again = loop._read([body("a", "1"), body("b", "2", phase="IdleWarning")])
    assert parsed == ["a", "b", "b"]  # a kept, b read again
    assert again[0] is first[0] and again[1].status is not None and again[1].status.phase == "IdleWarning"
    loop._read([body("a", "1")])
    assert ("lab-alice", "b") not in loop._parsed  # gone from the list, gone from the table
