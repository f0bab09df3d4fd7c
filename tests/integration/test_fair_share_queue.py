"""The fair-share queue on a full box: three students with different past usage wait for the same 1g.10gb slice of a
balanced H100 (two such slices, both taken); a researcher (a higher tier) joins last. As the slices free one by one
they start researcher first, then by lowest decayed usage, although the heaviest user waited longest. At each step
each one's own `labctl status` (with the kubeconfig the operator issued her) names her place, who is ahead and why.
Real API server, scheduler, kwok node, operator and labctl as subprocesses."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration

LABCTL = Path(sys.executable).parent / "labctl"
FULL = "no free 1g.10gb slice (2 in use)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    policy = example_policy()
    policy.update({"gpuHoldAfterStop": "0s", "stoppedRetention": "0s"})
    with Lab((NodeSpec("h100", "h100-balanced"),), policy, tmp_path_factory.mktemp("lab")) as running:
        running.add_users(gpuuser("filla"), gpuuser("fillb"), gpuuser("heavy"), gpuuser("medium"), gpuuser("light"),
                          gpuuser("prof", "researcher"))
        yield running
        print(running.log_tail(120))


def past_usage(lab: Lab, user: str, gpu_hours: float) -> None:
    """What her GPUUser status would hold after `gpu_hours` of decayed use, as of now."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"status": {"accounting": {"through": now, "decayedGpuHours": gpu_hours, "days": []}}}
    lab.kubectl("patch", "gpuuser", user, "--subresource=status", "--type=merge", "-p", json.dumps(patch))


def kubeconfig_of(lab: Lab, user: str) -> Path:
    secret = lab.get("secret", f"kubeconfig-{user}", SYSTEM_NAMESPACE)
    path = lab.workdir / f"{user}.kubeconfig"
    path.write_bytes(base64.b64decode(secret["data"]["config"]))
    return path


def labctl_as(lab: Lab, user: str, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_of(lab, user)), "COLUMNS": "250", "NO_COLOR": "1"}
    result = subprocess.run([str(LABCTL), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def labctl_status(lab: Lab, user: str) -> dict:
    return json.loads(labctl_as(lab, user, "status", "-o", "json"))


def place(lab: Lab, user: str) -> tuple[int, list[str], str] | None:
    """Her waiting workspace's (place, who is ahead, why) as her own labctl status shows it."""
    queue = labctl_status(lab, user)["queue"]
    if not queue:
        return None
    [row] = queue
    return int(row["place"]), [] if row["ahead"] == "-" else row["ahead"].split(", "), row["why"]


def wait_place(lab: Lab, user: str, position: int, ahead: list[str]) -> str:
    def seen():
        got = place(lab, user)
        return got is not None and got[:2] == (position, ahead) and got[2]
    return wait_for(seen, timeout=60, what=lambda: f"{user} #{position} behind {ahead}; has {place(lab, user)}")


def running(lab: Lab, user: str) -> bool:
    return lab.status("workspace", "slice", f"lab-{user}").get("phase") == "Running"


def test_slices_freed_one_by_one_go_to_the_higher_tier_then_to_the_lowest_past_usage(lab: Lab):
    lab.apply(workspace("slice", "filla", profile="1g.10gb"), workspace("slice", "fillb", profile="1g.10gb"))
    lab.wait_phase("slice", "filla", "Running")
    lab.wait_phase("slice", "fillb", "Running")
    # decayed GPU-hours per share (a student's share is her 2 GPU equivalents): heavy 3.0, medium 1.0, light 0
    past_usage(lab, "heavy", 6.0)
    past_usage(lab, "medium", 2.0)

    # they begin to wait in the opposite order of their usage: heavy first
    for user in ("heavy", "medium", "light"):
        lab.apply(workspace("slice", user, profile="1g.10gb"))
        wait_for(lambda u=user: lab.status("workspace", "slice", f"lab-{u}").get("waitingSince"), what=f"{user} waits")
    why = wait_place(lab, "light", 1, [])
    assert why.startswith(f"#1 in the queue: {FULL}; you are next"), why
    # nobody computes on the full box: the first idle deadline frees a slice, and that is when light may start
    assert "; may start at " in why and "reaches its idle deadline)" in why, why
    wait_place(lab, "medium", 2, ["light/slice"])
    why = wait_place(lab, "heavy", 3, ["light/slice", "medium/slice"])
    assert why.startswith(f"#3 in the queue behind light/slice, medium/slice: {FULL}; 2 workspaces ahead of you"), why
    assert "may start" not in why, why  # two slices are known to free, and she needs the third
    heavy = labctl_status(lab, "heavy")["queue"][0]
    assert heavy["your usage"] == "3", heavy  # 6 decayed GPU-hours over her share of 2 (rounded)

    # a researcher comes last and goes first: tier before usage
    lab.apply(workspace("slice", "prof", profile="1g.10gb"))
    wait_place(lab, "prof", 1, [])
    wait_place(lab, "light", 2, ["prof/slice"])
    wait_place(lab, "heavy", 4, ["prof/slice", "light/slice", "medium/slice"])

    order = []
    for freed, starts in (("filla", "prof"), ("fillb", "light"), ("prof", "medium"), ("light", "heavy")):
        lab.kubectl("delete", "workspace", "slice", "-n", f"lab-{freed}", "--wait=false")
        wait_for(lambda s=starts: running(lab, s), timeout=60, what=f"{starts} running after {freed}'s slice freed")
        order.append(starts)
        waiting = [u for u in ("prof", "light", "medium", "heavy") if u not in order]
        # nobody behind her started with her
        assert not any(running(lab, u) for u in waiting), [(u, running(lab, u)) for u in waiting]
        for position, user in enumerate(waiting, start=1):
            why = wait_place(lab, user, position, [f"{u}/slice" for u in waiting[:position - 1]])
            assert FULL in why, why
        assert place(lab, starts) is None  # a running workspace has no place in the queue
    assert order == ["prof", "light", "medium", "heavy"]

    # each sees her own report: her waits, and the past usage that put her last
    mine = json.loads(labctl_as(lab, "heavy", "report", "--since", "1d", "-o", "json"))
    [row] = mine["users"]
    assert row["user"] == "heavy" and mine["lab"] is None, mine
    assert row["waits"] == 1 and row["waitP50Seconds"] > 0, row
    assert 5.9 < row["decayedGpuHours"] < 6.1 and 2.9 < row["relativeUsage"] < 3.1, row
    assert "heavy (student)" in labctl_as(lab, "heavy", "report")
