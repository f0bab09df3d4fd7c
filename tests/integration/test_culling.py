"""Idle culling and runtime limits end to end: the agent samples real cgroups and the activity file,
publishes verdicts to the API, and the operator warns and stops at the deadline.

One lab for the module, one fake H100 node ("cull-node", 2 x 1g.10gb among others), the operator and
the agent as real subprocesses. Durations are seconds: idle timeouts of 12s, warnings at 50% and 80%,
sampling and checks every second. The agent runs as root with this machine's /proc and cgroup mounts."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import AgentProcess, wait_for

pytestmark = pytest.mark.integration

NODE = "cull-node"
IDLE = 12  # seconds, every user's idle timeout
RUNTIME = 14  # seconds, runner's maximum runtime
CHECK = 1.0  # the policy's checkInterval
CGROUP_ROOT = Path("/sys/fs/cgroup")


def module_policy() -> dict:
    policy = example_policy()
    # the Workspace CRD takes no limit under a minute, so the short ones come from the policy
    policy["defaults"].update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h"})
    for tier in policy["tiers"].values():
        tier.update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h", "maxWorkspaces": 6})
    policy["users"] = {"runner": {"idleTimeout": "60s", "maxRuntime": f"{RUNTIME}s"}}
    policy.update({"gpuHoldAfterStop": "2s", "stoppedRetention": "0s", "keepAliveMax": "40s",
                   "terminationGracePeriod": "1s", "warnings": {"idle": [0.5, 0.8], "runtime": [0.5, 0.8]}})
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": "2s", "checkInterval": f"{CHECK:.0f}s"})
    return policy


def parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def culling_agent(lab: Lab, root: Path, gpu_file: Path) -> AgentProcess:
    """`labkeeper agent` for the lab's node, sampling with the activity file and this host's cgroups."""
    # the selector matches only idler: the agent provisions her account and home under the temporary
    # host root (where her warning notices land) and only samples everyone else's activity
    return AgentProcess(lab.cluster.kubeconfig, root, NODE, "--selector", "labkeeper.io/test-culling=home",
                        "--sampler", f"file:{gpu_file}", "--cgroup-root", str(CGROUP_ROOT), "--proc-root", "/proc",
                        log=root / "agent.log")


class GpuFile:
    """The activity file the agent reads every sample: one H100 in MIG mode with two 1g.10gb instances."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(smutil={"MIG-cull-a": 0, "MIG-cull-b": 0}, processes=[])

    def set(self, smutil: dict[str, int], processes: list[dict]) -> None:
        doc = {"devices": [{"uuid": "GPU-cull-0", "name": "NVIDIA H100 80GB HBM3", "migInstances": [
            {"uuid": uuid_, "profile": "1g.10gb", "smUtilization": util} for uuid_, util in smutil.items()]}],
            "processes": processes}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(self.path)  # atomic: the agent never reads half a file


@pytest.fixture(scope="module")
def culling_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the agent reads this host's cgroups and the test creates one: run as root")
    workdir = tmp_path_factory.mktemp("culling")
    gpus = GpuFile(workdir / "gpus.yaml")
    with Lab((NodeSpec(NODE, "h100-balanced"),), module_policy(), workdir / "lab") as lab:
        agent = culling_agent(lab, workdir / "host", gpus.path).start()
        idler = gpuuser("idler")
        idler["metadata"]["labels"] = {"labkeeper.io/test-culling": "home"}
        lab.add_users(idler, gpuuser("miga"), gpuuser("migb"), gpuuser("keeper"), gpuuser("runner"),
                      gpuuser("sleeper"))
        try:
            yield lab, agent, gpus
        finally:
            agent.kill()
            print(lab.log_tail())
            print(agent.log_tail())


def running(lab: Lab, name: str, user: str, **spec) -> dict:
    lab.apply(workspace(name, user, **spec))
    return lab.wait_phase(name, user, "Running", timeout=60)


def events(lab: Lab, name: str, user: str) -> list[dict]:
    out = lab.items("events", "-n", f"lab-{user}", "--field-selector", f"involvedObject.name={name}")
    return sorted(out, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def watch_until_stopped(lab: Lab, name: str, user: str, timeout: float) -> tuple[dict, float, list[dict]]:
    """Poll the workspace until the operator records a stop; returns that status, when it was seen and
    every status seen on the way (warnings are cleared once the workspace stops)."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = lab.status("workspace", name, f"lab-{user}")
        seen.append(status)
        if status.get("stopReason"):
            return status, time.time(), seen
        time.sleep(0.2)
    raise AssertionError(f"{user}/{name} never stopped in {timeout:.0f}s; last status {seen[-1] if seen else None}")


# ---- 1. a real process in a real cgroup --------------------------------------------------------------------
def cgroup_hierarchy() -> Path | None:
    """A hierarchy that accounts CPU and that root can write: v1 cpuacct, else v2."""
    found = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mountpoint, fstype, options, *_ = line.split()
        if fstype == "cgroup" and "cpuacct" in options.split(","):
            found.setdefault("v1", Path(mountpoint))
        elif fstype == "cgroup2" and mountpoint.startswith(str(CGROUP_ROOT)):
            found.setdefault("v2", Path(mountpoint))
    return found.get("v1") or found.get("v2")


def pod_cgroup(pod_uid: str) -> tuple[Path, list[Path]]:
    """The pod's container cgroup, laid out as the kubelet's cgroupfs driver does, under a kubepods tree of ours."""
    hierarchy = cgroup_hierarchy()
    if hierarchy is None:
        pytest.skip(f"no cgroup hierarchy accounting CPU under {CGROUP_ROOT}")
    top = hierarchy / f"kubepods-labkeeper-culling-{uuid.uuid4().hex[:8]}"
    container = top / "burstable" / f"pod{pod_uid}" / "ctr0"
    container.mkdir(parents=True)
    return container, [container, container.parent, container.parent.parent, top]


def test_a_process_burning_cpu_in_the_pods_cgroup_keeps_it_running_and_when_it_ends_it_is_warned_and_culled(
        culling_lab):
    lab, _, _ = culling_lab
    status = running(lab, "busy", "idler")
    container, cleanup = pod_cgroup(status["podUID"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        (container / "cgroup.procs").write_text(str(busy.pid))
        # activity reported past the deadline it would have had without it: still running, and the reason says
        # what kept it
        would_be_deadline = parse(status["runningSince"]) + dt.timedelta(seconds=IDLE)
        status = wait_for(lambda: (s := lab.status("workspace", "busy", "lab-idler")).get("lastActivity")
                          and parse(s["lastActivity"]) > would_be_deadline + dt.timedelta(seconds=2) and s,
                          timeout=IDLE + 30, what="the burner's activity reported past its would-be idle deadline")
        assert status["phase"] == "Running" and not status.get("stopReason"), status
        assert status["activityReason"].startswith("cpu ") and "cores" in status["activityReason"], status
        assert not status.get("warnings"), status["warnings"]
        last_busy = parse(status["lastActivity"])
        assert (now() - last_busy).total_seconds() < 8

        busy.kill()
        busy.wait()
        stopped, seen_at, seen = watch_until_stopped(lab, "busy", "idler", timeout=IDLE + 15)
    finally:
        if busy.poll() is None:
            busy.kill()
        for path in cleanup:
            wait_for(lambda p=path: not p.exists() or _rmdir(p), timeout=10, what=f"{path} removed")

    assert stopped["stopReason"] == "Idle"
    assert any(s.get("phase") == "IdleWarning" for s in seen)
    keys = {w["key"] for s in seen for w in s.get("warnings") or []}
    assert {"idle-50", "idle-80"} <= keys, keys
    assert "cpu 0.0" in stopped["activityReason"], stopped["activityReason"]
    # the deadline counts from the last busy sample, and the stop came a few seconds after it at most
    # (check interval 1s, one-second timestamps, a loaded 2-core CI machine), far inside the minute allowed
    deadline = parse(stopped["idleDeadline"])
    assert deadline >= last_busy + dt.timedelta(seconds=IDLE)
    assert seen_at - deadline.timestamp() <= CHECK + 4, (seen_at - deadline.timestamp())
    reasons = [e["reason"] for e in events(lab, "busy", "idler")]
    assert reasons.count("IdleWarning") >= 2 and "Culled" in reasons, reasons
    culled = next(e for e in events(lab, "busy", "idler") if e["reason"] == "Culled")
    assert "idle for" in culled["message"] and "cpu 0.0" in culled["message"], culled["message"]
    # and the agent left her a notice in her home saying what happened
    notice = culling_lab[1].root / "data" / "users" / "idler" / ".labkeeper" / "notices" / "busy"
    text = wait_for(lambda: notice.is_file() and "was stopped at" in notice.read_text() and notice.read_text(),
                    timeout=15, what=f"the stop notice in {notice}")
    assert "because it was idle" in text and "labctl start busy" in text, text


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except OSError:
        return False  # the killed process may take a moment to leave the cgroup


# ---- 2. MIG neighbours -------------------------------------------------------------------------------------
def test_gpu_activity_on_one_mig_instance_keeps_only_its_own_workspace_alive(culling_lab):
    lab, _, gpus = culling_lab
    a = running(lab, "train", "miga", profile="1g.10gb")
    b = running(lab, "notebook", "migb", profile="1g.10gb")
    # both on the same H100; a computes, b only holds memory at 0% SM (idle: countGpuMemoryAsActive is false)
    gpus.set({"MIG-cull-a": 63, "MIG-cull-b": 0}, [
        {"pid": 4_000_001, "device": "MIG-cull-a", "usedMemory": "7Gi", "podUid": a["podUID"]},
        {"pid": 4_000_002, "device": "MIG-cull-b", "usedMemory": "6Gi", "podUid": b["podUID"]},
    ])
    try:
        stopped, _, _ = watch_until_stopped(lab, "notebook", "migb", timeout=IDLE + 15)
        assert stopped["stopReason"] == "Idle"
        assert "gpu idle" in stopped["activityReason"] and "memory not counted" in stopped["activityReason"], \
            stopped["activityReason"]
        # the neighbour has idled as long, yet its instance is busy: still running, and it says why
        train = lab.status("workspace", "train", "lab-miga")
        assert train["phase"] == "Running" and not train.get("stopReason"), train
        assert train["activityReason"] == "gpu 63% SM on 1g.10gb", train["activityReason"]
        assert (now() - parse(train["runningSince"])).total_seconds() > IDLE
    finally:
        gpus.set({"MIG-cull-a": 0, "MIG-cull-b": 0}, [])
        for name, user in (("train", "miga"), ("notebook", "migb")):
            lab.kubectl("patch", "workspace", name, "-n", f"lab-{user}", "--type=merge",
                        "-p", '{"spec":{"state":"Stopped"}}')


# ---- 3. keep-alive ------------------------------------------------------------------------------------------
def test_keep_alive_within_the_cap_postpones_the_stop_beyond_it_is_capped_and_when_it_expires_culling_resumes(
        culling_lab):
    lab, _, _ = culling_lab
    until = now() + dt.timedelta(seconds=24)
    running(lab, "kept", "keeper", keepAliveUntil=fmt(until))
    # the cap is 40s: an hour ahead is cut to 40s from when the operator saw it, and the status says so
    greedy = running(lab, "greedy", "keeper",
                     keepAliveUntil=fmt(now() + dt.timedelta(hours=1)))
    started = parse(greedy["runningSince"])

    def capped():
        status = lab.status("workspace", "greedy", "lab-keeper")
        cond = next((c for c in status.get("conditions") or [] if c["type"] == "KeepAliveCapped"), {})
        return cond.get("status") == "True" and (status, cond)

    status, cond = wait_for(capped, timeout=10, what="greedy's KeepAliveCapped condition")
    assert "beyond the policy cap" in cond["message"] and "beyond the policy cap" in status["message"]
    granted = parse(status["keepAliveUntil"])
    assert 35 <= (granted - started).total_seconds() <= 45, (started, granted)

    # kept has idled past its timeout but stays until its keep-alive expires, then stops without further delay
    kept = lab.status("workspace", "kept", "lab-keeper")
    assert kept["phase"] in ("Running", "IdleWarning") and not kept.get("stopReason"), kept
    assert "kept alive until" in kept["message"], kept["message"]
    stopped, seen_at, _ = watch_until_stopped(lab, "kept", "keeper", timeout=30)
    assert stopped["stopReason"] == "Idle"
    assert seen_at >= until.timestamp() - 1
    assert seen_at - until.timestamp() <= CHECK + 4

    # greedy stays until the granted cap, not an hour, and not its own idle timeout either
    stopped, seen_at, _ = watch_until_stopped(lab, "greedy", "keeper", timeout=40)
    assert stopped["stopReason"] == "Idle"
    assert seen_at >= granted.timestamp() - 1
    assert seen_at - granted.timestamp() <= CHECK + 4


# ---- 4. runtime across restarts ----------------------------------------------------------------------------
def test_max_runtime_counts_every_run_so_the_stop_comes_when_the_total_reaches_the_limit(culling_lab):
    lab, _, _ = culling_lab
    limit = RUNTIME
    # runner's idle timeout is 60s: the only limit that can bite is the 14s of runtime
    running(lab, "marathon", "runner")
    time.sleep(6)
    lab.kubectl("patch", "workspace", "marathon", "-n", "lab-runner", "--type=merge", "-p",
                '{"spec":{"state":"Stopped"}}')
    first = lab.wait_phase("marathon", "runner", "Stopped", timeout=30)
    assert first["stopReason"] == "Stopped" and 5 <= first["runtimeSeconds"] < limit, first

    lab.kubectl("patch", "workspace", "marathon", "-n", "lab-runner", "--type=merge", "-p",
                '{"spec":{"state":"Running"}}')
    second = lab.wait_phase("marathon", "runner", "Running", "IdleWarning", timeout=30)
    second_start = parse(second["runningSince"])
    stopped, seen_at, seen = watch_until_stopped(lab, "marathon", "runner", timeout=limit + 10)
    assert stopped["stopReason"] == "MaxRuntime"
    segment = seen_at - second_start.timestamp()
    # the second run was cut when the total reached 14s: well before a fresh 14s
    assert segment <= limit - first["runtimeSeconds"] + CHECK + 3, (segment, first["runtimeSeconds"])
    assert {"runtime-50", "runtime-80"} <= {w["key"] for s in seen for w in s.get("warnings") or []}
    assert "MaxRuntime" in [e["reason"] for e in events(lab, "marathon", "runner")]
    final = lab.wait_phase("marathon", "runner", "Stopped", timeout=30)
    assert limit <= final["runtimeSeconds"] <= limit + 3, final


# ---- 5. restarts -------------------------------------------------------------------------------------------
def test_after_operator_and_agent_restart_idle_workspaces_get_a_full_timeout_again(culling_lab):
    lab, agent, _ = culling_lab
    # applied together, so their idle clocks start within a sample of each other
    lab.apply(*(workspace(name, "sleeper") for name in ("nap1", "nap2")))
    for name in ("nap1", "nap2"):
        lab.wait_phase(name, "sleeper", "Running", "IdleWarning", timeout=60)
    # idle for ~90% of their timeout, then both processes die and come back
    wait_for(lambda: all("idle-80" in {w["key"] for w in lab.status("workspace", n, "lab-sleeper").get("warnings") or []}
                         for n in ("nap1", "nap2")), timeout=IDLE + 5, what="both at 80% of their idle timeout")
    # kill at 90% of the timeout of whichever is closer to its deadline, measured from the operator's own
    # idleDeadline (not from when we noticed): the two started a moment apart, more so on a loaded machine
    deadline = min(parse(lab.status("workspace", n, "lab-sleeper")["idleDeadline"]).timestamp()
                   for n in ("nap1", "nap2"))
    time.sleep(max(0.0, deadline - IDLE * 0.1 - time.time()))
    for name in ("nap1", "nap2"):
        assert lab.status("workspace", name, "lab-sleeper")["phase"] in ("Running", "IdleWarning"), name
    lab.operator.kill()
    agent.kill()
    restarted = time.time()
    lab.operator.start()
    agent.start()
    for name in ("nap1", "nap2"):
        stopped, seen_at, _ = watch_until_stopped(lab, name, "sleeper", timeout=IDLE + 30)
        assert stopped["stopReason"] == "Idle"
        # a whole idle timeout after the restart (timestamps in status have one-second resolution)
        assert seen_at - restarted >= IDLE - 1, (name, seen_at - restarted)
        assert parse(stopped["idleSince"]).timestamp() >= restarted - 1, stopped["idleSince"]



# ---- 6. batch runs (issue 20) --------------------------------------------------------------------------------
def test_a_batch_run_stuck_at_zero_gpu_and_cpu_is_warned_and_culled_like_a_workspace_and_keeps_no_hold(culling_lab):
    lab, _, _ = culling_lab
    running(lab, "stuck", "migb", profile="1g.10gb", mode="Batch", command=["python", "train.py"])
    stopped, _, seen = watch_until_stopped(lab, "stuck", "migb", timeout=IDLE + 15)
    assert stopped["stopReason"] == "Idle"
    keys = {w["key"] for s in seen for w in s.get("warnings") or []}
    assert {"idle-50", "idle-80"} <= keys, keys
    reasons = [e["reason"] for e in events(lab, "stuck", "migb")]
    assert reasons.count("IdleWarning") >= 2 and "Culled" in reasons, reasons
    # a workspace here would hold its slice for gpuHoldAfterStop; a run's goes back at once
    final = lab.wait_phase("stuck", "migb", "Stopped", timeout=30)
    assert final["reason"] == "Idle" and not final.get("holdNode") and final.get("exitCode") is None, final
    assert "HoldReleased" not in [e["reason"] for e in events(lab, "stuck", "migb")]
    lab.kubectl("delete", "workspace", "stuck", "-n", "lab-migb", "--wait=false")
