"""ActivityMonitor: one observation of every watched workspace per call, verdicts out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkeeper.agent.activity.cgroup import HostReader, cpu_seconds
from labkeeper.agent.activity.metrics import ActivityMetrics
from labkeeper.agent.activity.model import (
    GpuProcess,
    GpuReading,
    GpuSnapshot,
    Thresholds,
    Verdict,
    WatchedWorkspace,
    WorkspaceKey,
    WorkspaceSignals,
)
from labkeeper.agent.activity.samplers import GpuSampler
from labkeeper.agent.activity.verdict import gpu_busy, judge


@dataclass
class _Memory:
    watching_since: dt.datetime
    cgroup: Path | None = None
    at: dt.datetime | None = None
    cpu_seconds: float | None = None
    network_bytes: int | None = None
    gpu_busy_at: dt.datetime | None = None


class ActivityMonitor:
    def __init__(self, sampler: GpuSampler, thresholds: Thresholds, clock: Callable[[], dt.datetime], *,
                 host: HostReader | None = None, metrics: ActivityMetrics | None = None) -> None:
        self.sampler = sampler
        self.thresholds = thresholds
        self.clock = clock
        self.host = host or HostReader()
        self.metrics = metrics
        self._memory: dict[WorkspaceKey, _Memory] = {}

    def observe(self, workspaces: Sequence[WatchedWorkspace]) -> dict[WorkspaceKey, Verdict]:
        now = self.clock()
        snapshot = self.sampler.sample()
        by_pod: dict[str, list[GpuProcess]] = {}
        for proc in snapshot.processes:
            uid = proc.pod_uid or self.host.pod_uid_of(proc.pid)
            if uid:
                by_pod.setdefault(uid, []).append(proc)

        verdicts = {}
        for ws in workspaces:
            memory = self._memory.setdefault(ws.key, _Memory(watching_since=now))
            signals = self._signals(ws, memory, snapshot, by_pod.get(ws.pod_uid, []), now)
            verdict = judge(signals, self.thresholds, now)
            if any(gpu_busy(r, self.thresholds) for r in signals.gpus):
                memory.gpu_busy_at = now
            if self.metrics:
                self.metrics.record(ws.key, verdict)
            verdicts[ws.key] = verdict

        for key in set(self._memory) - set(verdicts):
            del self._memory[key]
            if self.metrics:
                self.metrics.forget(key)
        return verdicts

    def _signals(self, ws: WatchedWorkspace, memory: _Memory, snapshot: GpuSnapshot,
                 processes: list[GpuProcess], now: dt.datetime) -> WorkspaceSignals:
        cgroup = ws.cgroup_path or memory.cgroup or self.host.find_pod_cgroup(ws.pod_uid)
        memory.cgroup = None if ws.cgroup_path else cgroup
        cpu_total = cpu_seconds(cgroup) if cgroup else None
        pid = self.host.pid_of_pod(ws.pod_uid, cgroup) if cgroup else None
        network_total = self.host.network_bytes_of(pid) if pid is not None else None
        if cpu_total is None:
            memory.cgroup = None  # the pod restarted or moved: look it up again next time

        interval = now - memory.at if memory.at else None
        seconds = interval.total_seconds() if interval else 0.0
        cpu_cores = network = None
        # a counter that went backwards belongs to a new pod or netns: no rate this interval
        if seconds > 0 and cpu_total is not None and memory.cpu_seconds is not None \
                and cpu_total >= memory.cpu_seconds:
            cpu_cores = (cpu_total - memory.cpu_seconds) / seconds
        if network_total is not None and memory.network_bytes is not None and network_total >= memory.network_bytes:
            network = network_total - memory.network_bytes
        memory.at, memory.cpu_seconds, memory.network_bytes = now, cpu_total, network_total

        readings: dict[str, list[GpuProcess]] = {uuid: [] for uuid in ws.devices if uuid in snapshot.devices}
        for proc in processes:
            if proc.device_uuid in snapshot.devices:
                readings.setdefault(proc.device_uuid, []).append(proc)
        gpus = tuple(
            GpuReading(snapshot.devices[uuid], tuple(p.pid for p in procs),
                       sum(p.used_memory_bytes or 0 for p in procs))
            for uuid, procs in sorted(readings.items()))
        return WorkspaceSignals(cpu_cores, network, interval if seconds > 0 else None, gpus,
                                has_gpu=bool(ws.devices), gpu_busy_at=memory.gpu_busy_at,
                                watching_since=memory.watching_since)
