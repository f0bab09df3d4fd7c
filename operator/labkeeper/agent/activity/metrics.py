"""Prometheus gauges for every activity signal, labelled by namespace, workspace and (for GPUs) device."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from labkeeper.agent.activity.model import Verdict, WorkspaceKey

_WS = ("namespace", "workspace")
_DEV = (*_WS, "device", "label")


class ActivityMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, text: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(f"labkeeper_workspace_{name}", text, labels, registry=registry)

        self.active = gauge("active", "1 while the workspace's last verdict is active", _WS)
        self.cpu_cores = gauge("cpu_cores", "CPU cores used over the last sample interval", _WS)
        self.network_bytes = gauge("network_bytes_per_interval", "Network bytes in + out over the last interval", _WS)
        self.gpu_util = gauge("gpu_utilization_percent",
                              "Utilisation of a GPU or MIG instance the workspace uses (SM activity or busy time)", _DEV)
        self.gpu_memory = gauge("gpu_memory_bytes", "GPU memory held by the workspace's processes", _DEV)
        self.gpu_processes = gauge("gpu_processes", "The workspace's processes on a GPU or MIG instance", _DEV)
        self._series: dict[WorkspaceKey, set[tuple[str, ...]]] = {}

    def record(self, key: WorkspaceKey, verdict: Verdict) -> None:
        signals = verdict.signals
        self.active.labels(*key).set(1 if verdict.active else 0)
        for gauge, value in ((self.cpu_cores, signals["cpuCores"]), (self.network_bytes, signals["networkBytes"])):
            if value is None:
                gauge.remove(*key)  # not measured yet: no series rather than a made-up zero
            else:
                gauge.labels(*key).set(value)
        devices = set()
        for gpu in signals["gpus"]:
            labels = (*key, gpu["device"], gpu["label"])
            devices.add(labels)
            if gpu["utilizationPercent"] is None:
                self.gpu_util.remove(*labels)
            else:
                self.gpu_util.labels(*labels).set(gpu["utilizationPercent"])
            self.gpu_memory.labels(*labels).set(gpu["memoryBytes"])
            self.gpu_processes.labels(*labels).set(len(gpu["pids"]))
        for labels in self._series.get(key, set()) - devices:
            self._remove_device(labels)
        self._series[key] = devices

    def forget(self, key: WorkspaceKey) -> None:
        for gauge in (self.active, self.cpu_cores, self.network_bytes):
            gauge.remove(*key)
        for labels in self._series.pop(key, set()):
            self._remove_device(labels)

    def _remove_device(self, labels: tuple[str, ...]) -> None:
        for gauge in (self.gpu_util, self.gpu_memory, self.gpu_processes):
            gauge.remove(*labels)
