"""A real process burning CPU in a real cgroup, laid out as the kubelet lays out a pod, seen by the agent.

Runs as root against this machine's own cgroup mounts (v2, and v1 cpuacct where the host still mounts
it); the unit tests cover the same code on a cgroup-shaped directory."""

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from labkeeper.agent.activity import (
    ActivityMonitor,
    FileSampler,
    HostReader,
    PublishThrottle,
    Thresholds,
    WatchedWorkspace,
)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_mounts() -> dict[str, Path]:
    """The writable-by-root hierarchies that account CPU: 'v2' and 'v1 cpuacct', where mounted."""
    found = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mountpoint, fstype, options, *_ = line.split()
        if fstype == "cgroup2" and mountpoint.startswith(str(CGROUP_ROOT)):
            found.setdefault("v2", Path(mountpoint))
        elif fstype == "cgroup" and "cpuacct" in options.split(","):
            found.setdefault("v1 cpuacct", Path(mountpoint))
    return found


MOUNTS = cgroup_mounts()


@pytest.fixture(params=sorted(MOUNTS) or ["none"])
def pod_cgroup(request):
    """A burstable pod's cgroup with one container directory, under a kubepods tree of its own."""
    if request.param == "none":
        pytest.skip(f"no cgroup hierarchy accounting CPU is mounted under {CGROUP_ROOT}")
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    pod_uid = str(uuid.uuid4())
    top = MOUNTS[request.param] / f"kubepods-labkeeper-test-{pod_uid[:8]}"
    container = top / "burstable" / f"pod{pod_uid}" / "0123abcd"
    try:
        container.mkdir(parents=True)
    except OSError as err:
        pytest.skip(f"cannot create a cgroup under {MOUNTS[request.param]}: {err}")
    try:
        yield pod_uid, container
    finally:
        for path in (container, container.parent, container.parent.parent, top):
            path.rmdir()


def start_busy_process_in(container: Path) -> subprocess.Popen:
    # the shell joins the cgroup first, then becomes the busy loop: no CPU is spent outside it
    script = f'echo $$ > {container / "cgroup.procs"} && exec {sys.executable} -c "while True: pass"'
    proc = subprocess.Popen(["sh", "-c", script])
    deadline = time.monotonic() + 5
    while str(proc.pid) not in (container / "cgroup.procs").read_text().split():
        assert time.monotonic() < deadline, "the busy process never joined its cgroup"
        time.sleep(0.01)
    return proc


def test_a_process_burning_cpu_in_its_pod_cgroup_keeps_the_workspace_active_until_it_stops(pod_cgroup, tmp_path):
    pod_uid, container = pod_cgroup
    busy = start_busy_process_in(container)
    # the GPU file names the pid but not its pod: the agent must find the pod from the real /proc/<pid>/cgroup
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps({
        "devices": [{"uuid": "GPU-0", "name": "NVIDIA H100 80GB HBM3",
                     "migInstances": [{"uuid": "MIG-0", "profile": "1g.10gb", "smUtilization": 0}]}],
        "processes": [{"pid": busy.pid, "device": "MIG-0", "usedMemory": "1Gi"}]}))
    workspace = WatchedWorkspace("lab-alice", "train", pod_uid)
    monitor = ActivityMonitor(FileSampler(gpus), Thresholds(cpu_cores=0.1), lambda: dt.datetime.now(dt.UTC),
                              host=HostReader(cgroup_root=CGROUP_ROOT))
    throttle = PublishThrottle(dt.timedelta(minutes=5))
    published = []

    def observe():
        verdict = monitor.observe([workspace])[workspace.key]
        patch = throttle.decide(workspace.key, verdict, dt.datetime.now(dt.UTC))
        if patch:
            published.append((verdict.active, patch))
        return verdict

    try:
        observe()
        time.sleep(0.6)
        burning = observe()
    finally:
        busy.kill()
        busy.wait()
    print(f"\nwhile burning: {burning.reason} (pod cgroup {container.parent})")
    assert burning.active
    assert burning.reason.startswith("cpu ") and burning.reason.endswith(" cores")
    assert burning.signals["cpuCores"] > 0.1
    assert burning.signals["gpus"][0]["pids"] == [busy.pid], "the pid maps to its pod through /proc/<pid>/cgroup"

    observe()  # this interval still holds the last moments of the loop
    time.sleep(0.6)
    stopped = observe()
    print(f"after it stopped: {stopped.reason}")
    assert not stopped.active
    assert stopped.reason.startswith("cpu 0.00 cores")
    assert any(p.activity_reason == burning.reason for _, p in published), "becoming active was published"
    # going idle is published once, at the first idle sample: the one right after the kill may hold the loop's
    # last moments (still active, on a quiet machine) or already be idle (a slow one); later idle ones are not news
    active, last = published[-1]
    assert not active and (last.activity_reason or "").startswith("cpu 0.0"), f"going idle was published: {published}"
