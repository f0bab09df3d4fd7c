"""What the host says about a pod: CPU time from its cgroup, pod UID of a pid, network bytes of its netns.

All paths hang off two injectable roots, so tests point them at real temporary trees. The agent pod
keeps its own PID namespace and reads the host's `/proc` and `/sys/fs/cgroup`, mounted read-only
(NVML's pids are the host's). A cgroup's `cgroup.procs` lists only the pids of the reader's PID
namespace, so from such a pod every pod cgroup looks empty: a pod's pid is then found in the host's
`/proc` by its cgroup path, once, and checked again on every later use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# cgroupfs: .../kubepods/burstable/pod<uid>/<ctr>; systemd: .../kubepods-burstable-pod<uid_with_underscores>.slice/...
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})", re.I)
# pure v2 first, then v1 cpu accounting, then the v2 tree of a hybrid host
_CPU_HIERARCHIES = ("", "cpu,cpuacct", "cpuacct", "unified")
# v1 mounts beside each other under the cgroup root: each is a hierarchy of its own, not a v2 tree to search
_V1_MOUNTS = frozenset({"blkio", "cpu", "cpuacct", "cpu,cpuacct", "cpuacct,cpu", "cpuset", "devices", "freezer",
                        "hugetlb", "memory", "misc", "net_cls", "net_prio", "net_cls,net_prio", "net_prio,net_cls",
                        "perf_event", "pids", "rdma", "systemd", "unified"})
# a kubelet's cgroupRoot puts kubepods below the hierarchy's root (/<cgroupRoot>/kubepods, /docker/<id>/kubelet/kubepods)
_KUBEPODS_DEPTH = 4


def pod_uid_in(cgroup_path: str) -> str | None:
    """The pod UID in a kubepods cgroup path, with dashes; None outside kubepods."""
    if "kubepods" not in cgroup_path:
        return None
    found = _POD_UID.findall(cgroup_path)
    return found[-1].replace("_", "-").lower() if found else None


def cpu_seconds(cgroup_dir: Path) -> float | None:
    """Cumulative CPU time of a cgroup: v2 `cpu.stat` usage_usec, else v1 `cpuacct.usage` (ns)."""
    try:
        for line in (cgroup_dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except FileNotFoundError:
        pass
    try:
        return int((cgroup_dir / "cpuacct.usage").read_text()) / 1e9
    except FileNotFoundError:
        return None


def network_bytes(net_dev: str) -> int:
    """Bytes received plus sent on every interface but loopback, from a `/proc/<pid>/net/dev` text."""
    total = 0
    for line in net_dev.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        total += int(fields[0]) + int(fields[8])
    return total


class HostReader:
    def __init__(self, proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> None:
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self._pod_pids: dict[str, int] = {}  # pod UID -> a host pid in it, found through /proc
        self.proc_scans = 0

    def pid_of_pod(self, pod_uid: str, cgroup_dir: Path | None) -> int | None:
        """A host pid in the pod (any: they share its network namespace). From the pod cgroup's
        `cgroup.procs` when the reader shares the host's PID namespace; otherwise from the host's /proc,
        scanned once for every pod not yet known and checked again on each use (a pid is reused)."""
        if cgroup_dir is not None:
            pids = self.pids_in(cgroup_dir)
            if pids:
                return pids[0]
        known = self._pod_pids.get(pod_uid)
        if known is not None and self.pod_uid_of(known) == pod_uid:
            return known
        self._pod_pids = self._scan_pods()
        return self._pod_pids.get(pod_uid)

    def _scan_pods(self) -> dict[str, int]:
        self.proc_scans += 1
        found: dict[str, int] = {}
        try:
            entries = [e.name for e in os.scandir(self.proc_root) if e.name.isdigit()]
        except OSError:
            return found
        for name in sorted(entries, key=int):
            uid = self.pod_uid_of(int(name))
            if uid and uid not in found:
                found[uid] = int(name)
        return found

    def pod_uid_of(self, pid: int) -> str | None:
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        for line in text.splitlines():
            uid = pod_uid_in(line.split(":", 2)[-1])
            if uid:
                return uid
        return None

    def find_pod_cgroup(self, pod_uid: str) -> Path | None:
        """The pod's cgroup directory in the first hierarchy that accounts CPU, or None."""
        wanted = {f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}"}
        for hierarchy in _CPU_HIERARCHIES:
            root = self.cgroup_root / hierarchy if hierarchy else self.cgroup_root
            for top in _kubepods_dirs(root, skip=_V1_MOUNTS if not hierarchy else frozenset()):
                for dirpath, dirnames, _ in os.walk(top):
                    name = os.path.basename(dirpath)
                    if any(name == w or name.endswith(f"-{w}.slice") for w in wanted):
                        path = Path(dirpath)
                        if cpu_seconds(path) is not None:
                            return path
                        break
                    # pods sit at most two levels below kubepods (QoS class, then pod)
                    if dirpath.count(os.sep) - str(top).count(os.sep) >= 2:
                        dirnames.clear()
        return None

    def pids_in(self, cgroup_dir: Path) -> list[int]:
        """Pids in a cgroup and its descendants (v2 keeps them in the leaves, the containers)."""
        pids: list[int] = []
        for dirpath, _, _ in os.walk(cgroup_dir):
            try:
                pids += [int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split()]
            except (FileNotFoundError, ValueError):
                continue
        return pids

    def network_bytes_of(self, pid: int) -> int | None:
        """Cumulative bytes in + out of the network namespace that pid lives in."""
        try:
            return network_bytes((self.proc_root / str(pid) / "net" / "dev").read_text())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None


def _kubepods_dirs(root: Path, *, skip: frozenset[str] = frozenset()) -> list[Path]:
    """The kubepods cgroups of a hierarchy, at its top or a few levels below it (a kubelet's cgroupRoot)."""
    found: list[Path] = []
    level = [root]
    for _ in range(_KUBEPODS_DEPTH):
        below = []
        for parent in level:
            try:
                children = sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
            for child in children:
                if child.name.startswith("kubepods"):
                    found.append(child)
                elif not (parent == root and child.name in skip):
                    below.append(child)
        level = below
    return found
