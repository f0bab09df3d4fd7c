"""Plain data shared by the samplers, the verdict and the monitor."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

WorkspaceKey = tuple[str, str]
"""(namespace, name) of a Workspace."""


@dataclass(frozen=True)
class WatchedWorkspace:
    """A running workspace on this node, as the agent knows it from the API."""

    namespace: str
    name: str
    pod_uid: str
    # GPU-… / MIG-… uuids assigned to the pod, or profile names (1g.10gb) when the uuid is unknown
    devices: tuple[str, ...] = ()
    # the pod's (or its container's) cgroup directory; None: found under the cgroup root by pod UID
    cgroup_path: Path | None = None

    @property
    def key(self) -> WorkspaceKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class GpuDevice:
    """A whole GPU, or one MIG instance of a GPU."""

    uuid: str
    label: str  # MIG profile (1g.10gb) for an instance, the model name for a whole GPU
    parent_uuid: str | None = None  # the GPU a MIG instance lives on
    utilization_percent: float | None = None  # None: this device cannot measure it
    metric: str = "busy"  # what utilization_percent counts: "SM" (GPM activity) or "busy" (device time)


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    device_uuid: str
    used_memory_bytes: int | None = None
    pod_uid: str | None = None  # given by the file sampler; otherwise found from /proc/<pid>/cgroup


@dataclass(frozen=True)
class GpuSnapshot:
    devices: Mapping[str, GpuDevice] = field(default_factory=dict)
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuReading:
    """One device as one workspace sees it: its utilisation and the workspace's own processes there."""

    device: GpuDevice
    pids: tuple[int, ...] = ()
    memory_bytes: int = 0


@dataclass(frozen=True)
class WorkspaceSignals:
    """Everything measured for one workspace over one interval."""

    cpu_cores: float | None  # None: no baseline yet, or no cgroup found
    network_bytes: int | None  # bytes in + out during the interval; None as for cpu
    interval: dt.timedelta | None
    gpus: tuple[GpuReading, ...] = ()
    has_gpu: bool = False  # a GPU is assigned even if no reading names it (a profile without a uuid)
    gpu_busy_at: dt.datetime | None = None  # last moment any of its GPUs counted as busy
    watching_since: dt.datetime | None = None  # when this agent began watching the workspace


@dataclass(frozen=True)
class Thresholds:
    """What counts as activity; any one signal at or above its threshold keeps a workspace active."""

    gpu_util_percent: float = 5.0
    cpu_cores: float = 0.1
    network_bytes_per_interval: int = 614_400  # 10 KiB/s over a 60 s sample interval
    count_gpu_memory_as_active: bool = False

    @classmethod
    def from_policy(cls, activity: Mapping, sample_interval: dt.timedelta) -> Thresholds:
        """From the policy's `activity` block (camelCase keys); a per-second network rate is scaled to the interval."""
        default = cls()
        network = activity.get("networkBytesPerInterval")
        if network is None and activity.get("networkBytesPerSecond") is not None:
            network = float(activity["networkBytesPerSecond"]) * sample_interval.total_seconds()
        return cls(
            gpu_util_percent=float(activity.get("gpuUtilPercent", activity.get("gpuUtilization",
                                                                                default.gpu_util_percent))),
            cpu_cores=float(activity.get("cpuCores", default.cpu_cores)),
            network_bytes_per_interval=int(network if network is not None else default.network_bytes_per_interval),
            count_gpu_memory_as_active=bool(activity.get("countGpuMemoryAsActive",
                                                         default.count_gpu_memory_as_active)),
        )


@dataclass(frozen=True)
class Verdict:
    active: bool
    reason: str
    signals: dict
    # what an idle verdict says without its numbers: a new gist is worth a write, a new duration is not
    gist: str = ""
