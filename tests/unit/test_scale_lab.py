"""bench/scale.py's lab at rest, which `--only views` writes straight into the API server: it must be a lab the
board can show as the operator would have left it, or the views are timed on something no lab looks like."""

from __future__ import annotations

import datetime as dt
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import scale

from labkeeper.api.admission import QUEUE_AHEAD_LISTED
from labkeeper.api.policy import DEFAULT_WEIGHTS
from labkeeper.cli import board
from labkeeper.render.pod import PodInputs, workspace_pod
from labkeeper.testing.cluster import NODE_PROFILES

NOW = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)


def node_objects(specs) -> list[dict]:
    return [{"metadata": {"name": s.name}, "status": {"allocatable": dict(NODE_PROFILES[s.profile])}} for s in specs]


def bound_pods(workspaces: list[dict]) -> list[dict]:
    """The running workspaces' pods as bench/scale.py builds them, bound where they are pinned (the scheduler's part)."""
    pods = []
    for ws in workspaces:
        status, gpu = ws["status"], ws["spec"].get("gpu") or {}
        if status["phase"] not in ("Running", "IdleWarning"):
            continue
        pod = workspace_pod(PodInputs(
            workspace=ws["metadata"]["name"], namespace=ws["metadata"]["namespace"], owner={}, username="u", uid=1,
            gid=1, supplemental_gids=[2000], home_host_path="/data/users/u", image="busybox",
            gpu_profile=gpu.get("profile", "none"), node_name=status["node"]))
        pod["spec"]["nodeName"] = status["node"]
        pod["status"] = {"phase": "Running"}
        pods.append(pod)
    return pods


def test_a_lab_at_rest_uses_every_device_once_and_queues_the_rest_in_order():
    specs = scale.nodes(10)
    users, workspaces = scale.lab_at_rest(scale.user_docs(40), specs, stopped=300, cpu=60, gpu=150, now=NOW,
                                          weights=DEFAULT_WEIGHTS)
    devices = sum(int(n) for s in specs for n in NODE_PROFILES[s.profile].values())
    phases = Counter(w["status"]["phase"] for w in workspaces)
    gpu_running = [w for w in workspaces if w["spec"].get("gpu") and w["status"]["phase"] in ("Running", "IdleWarning")]
    holds = [w for w in workspaces if w["status"].get("holdNode")]
    assert phases["Stopped"] == 300 and phases["Pending"] == 150 - len(gpu_running) > 0
    assert len(gpu_running) + len(holds) == devices  # more asked than the lab has: every device is taken
    assert all(len(u["status"]["accounting"]["days"]) > 0 for u in users[:10])

    data = board.board_model(node_objects(specs), bound_pods(workspaces), workspaces, users, NOW)
    in_use = [s for s in data.slots if s.user and not s.state.startswith("held")]
    assert len(data.slots) == devices and len(in_use) == len(gpu_running)
    assert sum(1 for s in data.slots if s.state.startswith("held")) == len(holds)
    assert len(data.queue) == phases["Pending"]
    assert any(a.endswith("failed: ImagePullBackOff image busybox cannot be pulled: not found") for a in data.alerts)

    # each waiter's queue place names those before it, as admission writes it
    for resource in {w["status"]["queue"]["reason"].split(" (")[0] for w in workspaces if w["status"].get("queue")}:
        line = [w for w in workspaces if (w["status"].get("queue") or {}).get("reason", "").startswith(resource)]
        for position, ws in enumerate(line, 1):
            assert ws["status"]["queue"]["position"] == position
            assert ws["status"]["queue"]["ahead"] == [f"{w['metadata']['namespace'][4:]}/{w['metadata']['name']}"
                                                       for w in line[:position - 1]][:QUEUE_AHEAD_LISTED]
