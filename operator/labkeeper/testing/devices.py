"""The MIG devices a test node offers, named as NVIDIA's device plugin names them. Pure data, no gRPC:
the plugin itself runs in its own process (`python -m labkeeper.testing.deviceplugin`), so the test
process never loads gRPC, whose fork handlers crash a process that forks after loading it.

`fake_nvml` is the node's stand-in for NVML: the plugin process writes it as the activity file the agent's
file sampler reads, so the device ids the kubelet handed out reach the GPU sampler as NVML's would."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MigDevice:
    """One MIG instance as NVIDIA's plugin names it: `MIG-<uuid>` ids are stable across restarts."""

    profile: str
    id: str

    @property
    def resource(self) -> str:
        return f"nvidia.com/mig-{self.profile}"


def mig_devices(layout: Mapping[str, int], gpu: str = "GPU-5f0c6a62-9d6e-4b7a-8a51-labkeeper000") -> list[MigDevice]:
    """Devices for a MIG layout such as {"1g.10gb": 2, "2g.20gb": 1}; the ids depend only on the GPU and
    the layout, so a restarted plugin advertises the same ones (as MIG UUIDs do until a reboot)."""
    return [MigDevice(profile, f"MIG-{uuid.uuid5(uuid.NAMESPACE_URL, f'{gpu}/{profile}/{index}')}")
            for profile in sorted(layout) for index in range(layout[profile])]


# a process in a workspace container that says it uses its GPU at this utilisation (percent), e.g.
# `env LABKEEPER_FAKE_GPU_UTIL=60 sleep infinity`: the node's stand-in for NVML lists it on the device ids the
# device plugin gave its container (NVIDIA_VISIBLE_DEVICES, set by the kubelet from the plugin's Allocate)
FAKE_GPU_UTIL_ENV = "LABKEEPER_FAKE_GPU_UTIL"
# where a real test node's stand-in for NVML writes the activity file (docs/activity-file.md), in the node's view
ACTIVITY_FILE = "/run/labkeeper-fake-nvml/gpus.json"
DEFAULT_GPU = "GPU-5f0c6a62-9d6e-4b7a-8a51-labkeeper000"


def process_environ(proc_root: Path, pid: int) -> dict[str, str]:
    try:
        raw = (proc_root / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def fake_nvml(devices: Sequence[MigDevice], pids: Iterable[int], proc_root: Path = Path("/proc"),
              gpu: str = DEFAULT_GPU) -> dict:
    """What NVML would report on this node, as an activity file document: the GPU and its MIG instances (the
    device plugin's ids), and every process that declares GPU use (FAKE_GPU_UTIL_ENV) on the devices its
    container was given; an instance's SM utilisation is the highest its processes declare, else 0."""
    known = {d.id for d in devices}
    utilization = dict.fromkeys(known, 0.0)
    processes = []
    for pid in sorted(set(pids)):
        env = process_environ(proc_root, pid)
        if FAKE_GPU_UTIL_ENV not in env:
            continue
        try:
            util = min(100.0, max(0.0, float(env[FAKE_GPU_UTIL_ENV])))
        except ValueError:
            continue
        for device in env.get("NVIDIA_VISIBLE_DEVICES", "").split(","):
            if device in known:
                utilization[device] = max(utilization[device], util)
                processes.append({"pid": pid, "device": device, "usedMemory": "1Gi"})
    return {
        "devices": [{"uuid": gpu, "name": "NVIDIA H100 80GB HBM3 (fake)",
                     "migInstances": [{"uuid": d.id, "profile": d.profile, "smUtilization": utilization[d.id]}
                                      for d in devices]}],
        "processes": processes,
    }


def cgroup_pids(cgroup_dir: Path) -> set[int]:
    """Every pid in a cgroup and below it (a node's cgroup: all its containers)."""
    pids: set[int] = set()
    for directory, _, files in os.walk(cgroup_dir):
        if "cgroup.procs" in files:
            try:
                pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
    return pids
