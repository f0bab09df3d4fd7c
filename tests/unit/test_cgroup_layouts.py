"""The agent finds a pod's cgroup, its CPU time and its pids on every layout a kubelet makes: the cgroupfs and
systemd drivers, cgroup v1 (one hierarchy per controller), v2 (one unified tree) and hybrid hosts, at the
hierarchy's top or below a kubelet's cgroupRoot (the real test node's, or a kubelet in a container).

Each case lays the tree out as a real host does, under a temporary directory: the v1 controller mounts side by
side (with cpu and cpuacct as links to cpu,cpuacct where the host mounts them together), the pod's directory in
every controller, the container's pids in the leaf, the CPU counter in the file that hierarchy keeps it in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from labkeeper.agent.activity.cgroup import HostReader, cpu_seconds, pod_uid_in

UID = "6f0e2c1a-8b3d-4e5f-9a7b-1c2d3e4f5a6b"
OTHER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
CONTAINER = "3c9a5f2e7b1d4a6c8e0f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1c3d"
PID = 4242
V1_CONTROLLERS = ("blkio", "cpuset", "devices", "freezer", "memory", "pids", "systemd")


def cgroupfs(uid: str, qos: str = "burstable", root: str = "") -> str:
    qos_part = "" if qos == "guaranteed" else f"/{qos}"
    return f"{root}/kubepods{qos_part}/pod{uid}/{CONTAINER}"


def systemd(uid: str, qos: str = "burstable") -> str:
    under = uid.replace("-", "_")
    if qos == "guaranteed":
        return f"/kubepods.slice/kubepods-pod{under}.slice/cri-containerd-{CONTAINER}.scope"
    return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{under}.slice"
            f"/cri-containerd-{CONTAINER}.scope")


@dataclass(frozen=True)
class Layout:
    name: str
    version: str  # "v1", "v2" or "hybrid"
    container_path: str  # the container's cgroup, as /proc/<pid>/cgroup names it
    cpu_mount: str = "cpu,cpuacct"  # v1: the hierarchy that keeps cpuacct.usage

    def build(self, root: Path, cpu: float, *, uid: str = UID) -> Path:
        """Lay out the host's cgroup tree with this pod in it; returns the pod's directory that counts CPU."""
        container_path = self.container_path.replace(UID, uid).replace(UID.replace("-", "_"), uid.replace("-", "_"))
        pod_rel = container_path.rsplit("/", 1)[0].lstrip("/")
        if self.version == "v2":
            (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
            (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
            pod = root / pod_rel
            _leaf(pod, container_path, PID)
            (pod / "cpu.stat").write_text(f"usage_usec {int(cpu * 1e6)}\nuser_usec 1\nsystem_usec 2\n"
                                          "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
            (root / pod_rel / container_path.rsplit("/", 1)[1] / "cpu.stat").write_text(
                f"usage_usec {int(cpu * 1e6)}\n")
            return pod
        for controller in V1_CONTROLLERS:
            _leaf(root / controller / pod_rel, container_path, PID)
        hierarchy = root / self.cpu_mount
        _leaf(hierarchy / pod_rel, container_path, PID)
        (hierarchy / pod_rel / "cpuacct.usage").write_text(f"{int(cpu * 1e9)}\n")
        (hierarchy / pod_rel / "cpu.shares").write_text("102\n")
        if self.cpu_mount == "cpu,cpuacct":
            for link in ("cpu", "cpuacct"):
                if not (root / link).exists():
                    (root / link).symlink_to("cpu,cpuacct")
        if self.version == "hybrid":
            unified = root / "unified"
            (unified / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
            (unified / "cgroup.controllers").write_text("")
            # hybrid: the v2 tree holds the pids but no cpu controller; cpu.stat there has usage_usec too
            _leaf(unified / pod_rel, container_path, PID)
            (unified / pod_rel / "cpu.stat").write_text(f"usage_usec {int(cpu * 1e6) + 7}\n")
        return hierarchy / pod_rel

    def proc_cgroup(self) -> str:
        """/proc/<pid>/cgroup of the container's process, as the kernel writes it on this layout."""
        if self.version == "v2":
            return f"0::{self.container_path}\n"
        lines = [f"{i}:{c if c != 'systemd' else 'name=systemd'}:{self.container_path}"
                 for i, c in enumerate(("blkio", "cpu,cpuacct", "cpuset", "devices", "freezer", "memory",
                                        "pids", "systemd"), start=1)]
        if self.version == "hybrid":
            lines.append(f"0::{self.container_path}")
        return "\n".join(reversed(lines)) + "\n"


def _leaf(pod_dir: Path, container_path: str, pid: int) -> None:
    container = pod_dir / container_path.rsplit("/", 1)[1]
    container.mkdir(parents=True, exist_ok=True)
    (pod_dir / "cgroup.procs").write_text("")  # v1 and v2 alike: the pod's own cgroup holds no process
    (container / "cgroup.procs").write_text(f"{pid}\n")


LAYOUTS = [
    Layout("v1 cgroupfs (cpu,cpuacct mounted together)", "v1", cgroupfs(UID)),
    Layout("v1 cgroupfs (cpu and cpuacct mounted apart)", "v1", cgroupfs(UID), cpu_mount="cpuacct"),
    Layout("v1 cgroupfs besteffort", "v1", cgroupfs(UID, "besteffort")),
    Layout("v1 cgroupfs guaranteed", "v1", cgroupfs(UID, "guaranteed")),
    Layout("v1 cgroupfs under the real node's cgroupRoot", "v1", cgroupfs(UID, root="/labkeeper-node-a1"),
           cpu_mount="cpuacct"),
    Layout("v1 cgroupfs of a kubelet in a container", "v1", cgroupfs(UID, root="/docker/9f8e7d6c/kubelet")),
    Layout("v1 systemd", "v1", systemd(UID)),
    Layout("v1 systemd guaranteed", "v1", systemd(UID, "guaranteed")),
    Layout("v2 cgroupfs", "v2", cgroupfs(UID)),
    Layout("v2 cgroupfs under a cgroupRoot", "v2", cgroupfs(UID, root="/k3s")),
    Layout("v2 systemd (k3s on a current host)", "v2", systemd(UID)),
    Layout("v2 systemd besteffort", "v2", systemd(UID, "besteffort")),
    Layout("v2 systemd guaranteed", "v2", systemd(UID, "guaranteed")),
    Layout("hybrid systemd", "hybrid", systemd(UID)),
    Layout("hybrid cgroupfs", "hybrid", cgroupfs(UID)),
]


@pytest.fixture(params=LAYOUTS, ids=[layout.name for layout in LAYOUTS])
def layout(request) -> Layout:
    return request.param


def host(tmp_path: Path) -> HostReader:
    return HostReader(proc_root=tmp_path / "proc", cgroup_root=tmp_path / "cgroup")


def test_the_pods_cgroup_is_found_and_its_cpu_time_read_in_the_file_that_hierarchy_keeps(layout, tmp_path):
    pod_dir = layout.build(tmp_path / "cgroup", cpu=12.5)
    found = host(tmp_path).find_pod_cgroup(UID)
    assert found == pod_dir
    # v1 keeps nanoseconds in cpuacct.usage of the cpu hierarchy, v2 microseconds in cpu.stat
    assert cpu_seconds(found) == pytest.approx(12.5)


def test_a_neighbour_pod_is_never_taken_for_this_one(layout, tmp_path):
    layout.build(tmp_path / "cgroup", cpu=3.0, uid=OTHER)
    reader = host(tmp_path)
    assert reader.find_pod_cgroup(UID) is None
    mine = layout.build(tmp_path / "cgroup", cpu=5.0)
    assert reader.find_pod_cgroup(UID) == mine
    assert cpu_seconds(reader.find_pod_cgroup(OTHER)) == pytest.approx(3.0)


def test_the_pids_of_the_pods_containers_are_found_in_its_leaves(layout, tmp_path):
    layout.build(tmp_path / "cgroup", cpu=1.0)
    reader = host(tmp_path)
    assert reader.pids_in(reader.find_pod_cgroup(UID)) == [PID]


def test_a_process_is_mapped_back_to_its_pod_from_proc_pid_cgroup(layout, tmp_path):
    proc = tmp_path / "proc" / str(PID)
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(layout.proc_cgroup())
    assert host(tmp_path).pod_uid_of(PID) == UID
    assert pod_uid_in(layout.container_path) == UID


@pytest.mark.parametrize("line, uid", [
    # a process outside Kubernetes, or the agent's own cgroup namespace hiding the path
    ("0::/system.slice/containerd.service", None),
    ("0::/user.slice/user-1000.slice/session-3.scope", None),
    # inside a private cgroup namespace the kernel names the path relative to the reader's own cgroup
    (f"0::/../../kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope", UID),
    (f"4:cpu,cpuacct:/kubepods/burstable/pod{UID.upper()}/{CONTAINER}", UID),
])
def test_pod_uid_of_a_cgroup_line(line, uid):
    assert pod_uid_in(line.split(":", 2)[-1]) == uid



def test_from_another_pid_namespace_the_pods_pid_is_found_in_the_hosts_proc_and_checked_on_reuse(layout, tmp_path):
    # cgroup.procs lists only the reader's PID namespace: the agent pod (no hostPID) sees every pod cgroup empty
    pod_dir = layout.build(tmp_path / "cgroup", cpu=1.0)
    for directory in [pod_dir, *pod_dir.rglob("*")]:
        if (directory / "cgroup.procs").is_file():
            (directory / "cgroup.procs").write_text("")
    for pid, text in ((7, "0::/system.slice/containerd.service\n"), (PID, layout.proc_cgroup())):
        (tmp_path / "proc" / str(pid)).mkdir(parents=True)
        (tmp_path / "proc" / str(pid) / "cgroup").write_text(text)
    reader = host(tmp_path)
    assert reader.pid_of_pod(UID, pod_dir) == PID
    assert reader.pid_of_pod(UID, pod_dir) == PID and reader.proc_scans == 1  # known: checked, not scanned
    # the pid now belongs to something else: looked up again, and the pod is gone
    (tmp_path / "proc" / str(PID) / "cgroup").write_text("0::/user.slice\n")
    assert reader.pid_of_pod(UID, pod_dir) is None and reader.proc_scans == 2
