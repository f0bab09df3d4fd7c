"""A node as the activity sampler sees it, under a temporary directory: a cgroup tree shaped like the
kubelet's, a /proc with the pids' cgroup and net/dev files, and the file sampler's GPU state."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from labkeeper.agent.activity import HostReader

T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
NET_DEV_HEADER = ("Inter-|   Receive                                                |  Transmit\n"
                  " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
                  "colls carrier compressed\n")


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


class Node:
    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.cgroup = root / "cgroup"
        self.gpu_file = root / "gpus.yaml"
        self.host = HostReader(proc_root=self.proc, cgroup_root=self.cgroup)
        self.pod_dirs: dict[str, Path] = {}
        self.gpu_state({"devices": [], "processes": []})

    def pod(self, uid: str, pid: int, *, layout: str = "cgroupfs", v1: bool = False) -> Path:
        """A burstable pod with one container holding `pid`, as cgroupfs or the systemd driver names it."""
        if layout == "systemd":
            under = uid.replace("-", "_")
            rel = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice"
            ctr = "cri-containerd-0123abcd.scope"
        else:
            rel, ctr = f"kubepods/burstable/pod{uid}", "0123abcd"
        pod_dir = self.cgroup / ("cpuacct" if v1 else "") / rel
        (pod_dir / ctr).mkdir(parents=True)
        (pod_dir / ctr / "cgroup.procs").write_text(f"{pid}\n")
        self.pod_dirs[uid] = pod_dir
        self.set_cpu(uid, 0.0, v1=v1)
        proc = self.proc / str(pid)
        (proc / "net").mkdir(parents=True)
        line = f"2:cpuacct:/{rel}/{ctr}" if v1 else f"0::/{rel}/{ctr}"
        (proc / "cgroup").write_text(f"12:pids:/\n{line}\n")
        self.set_network(pid, 0, 0)
        return pod_dir

    def set_cpu(self, uid: str, seconds: float, *, v1: bool = False) -> None:
        pod_dir = self.pod_dirs[uid]
        if v1:
            (pod_dir / "cpuacct.usage").write_text(f"{int(seconds * 1e9)}\n")
        else:
            usec = int(seconds * 1e6)
            (pod_dir / "cpu.stat").write_text(f"usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n")

    def set_network(self, pid: int, received: int, sent: int) -> None:
        (self.proc / str(pid) / "net" / "dev").write_text(
            NET_DEV_HEADER
            + "    lo: 999999999 10 0 0 0 0 0 0 999999999 10 0 0 0 0 0 0\n"
            + f"  eth0: {received} 10 0 0 0 0 0 0 {sent} 10 0 0 0 0 0 0\n")

    def gpu_state(self, doc: dict) -> None:
        self.gpu_file.write_text(json.dumps(doc))


ALICE_UID = "0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
BOB_UID = "7d6c5b4a-3f2e-4d1c-9b8a-7f6e5d4c3b2a"
