"""Which workspaces a node's agent samples, read from Workspace objects as the API returns them."""

from labkeeper.agent.activity_loop import watched_workspaces


def ws(name, *, node="node-a", phase="Running", uid="0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", devices=()):
    return {"metadata": {"namespace": "lab-alice", "name": name},
            "status": {"node": node, "phase": phase, "podUID": uid, "devices": list(devices)}}


def test_the_agent_samples_running_and_warned_workspaces_on_its_own_node_only():
    found = watched_workspaces([
        ws("here"), ws("warned", phase="IdleWarning"), ws("elsewhere", node="node-b"),
        ws("stopping", phase="Stopping"), ws("starting", phase="Starting"), ws("no-pod-yet", uid=None),
    ], "node-a")
    assert [w.name for w in found] == ["here", "warned"]


def test_a_workspaces_gpu_profiles_tell_the_verdict_it_has_a_gpu():
    found = watched_workspaces([ws("mig", devices=["1 x nvidia.com/mig-1g.10gb"]),
                                ws("full", devices=["2 x nvidia.com/gpu"]), ws("cpu")], "node-a")
    assert [w.devices for w in found] == [("1g.10gb",), ("gpu",), ()]
    assert found[0].pod_uid == "0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b" and found[0].key == ("lab-alice", "mig")
