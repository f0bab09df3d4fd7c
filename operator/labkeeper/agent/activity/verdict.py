"""The activity verdict: a pure function of one workspace's signals, the thresholds and the time."""

from __future__ import annotations

import datetime as dt

from labkeeper.agent.activity.model import GpuReading, Thresholds, Verdict, WorkspaceSignals
from labkeeper.api.units import human_duration


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def gpu_busy(reading: GpuReading, thresholds: Thresholds) -> str | None:
    """Why this device keeps its workspace active, or None when it does not."""
    device = reading.device
    util = device.utilization_percent
    if util is not None and util >= thresholds.gpu_util_percent:
        return f"gpu {util:.0f}% {device.metric} on {device.label}"
    if not reading.pids:
        return None
    held = f"pid {', '.join(map(str, reading.pids))} holds {human_bytes(reading.memory_bytes)}"
    if thresholds.count_gpu_memory_as_active:
        return f"gpu memory on {device.label} ({held})"
    if util is None:
        # the device cannot measure its utilisation: a process on it is the only signal there is
        return f"gpu process on {device.label} ({held}; utilisation not measurable)"
    return None


def judge(signals: WorkspaceSignals, thresholds: Thresholds, now: dt.datetime) -> Verdict:
    busy: list[str] = []
    interval = f"/{human_duration(signals.interval)}" if signals.interval else ""
    if signals.cpu_cores is not None and signals.cpu_cores >= thresholds.cpu_cores:
        busy.append(f"cpu {signals.cpu_cores:.2f} cores")
    if signals.network_bytes is not None and signals.network_bytes >= thresholds.network_bytes_per_interval:
        busy.append(f"network {human_bytes(signals.network_bytes)}{interval}")
    busy += [why for why in (gpu_busy(r, thresholds) for r in signals.gpus) if why]

    gist = ""
    if busy:
        reason = "; ".join(busy)
    else:
        parts = ["cpu not measured yet" if signals.cpu_cores is None else f"cpu {signals.cpu_cores:.2f} cores"]
        gists = ["cpu not measured" if signals.cpu_cores is None else "cpu"]
        if signals.network_bytes is not None:
            parts.append(f"network {human_bytes(signals.network_bytes)}{interval}")
            gists.append("network")
        if signals.gpus or signals.has_gpu:
            since = signals.gpu_busy_at or signals.watching_since
            idle = f"gpu idle {human_duration(now - since)}" if since else "gpu idle"
            held = [f"{r.device.utilization_percent:.0f}% {r.device.metric} on {r.device.label} "
                    f"with {human_bytes(r.memory_bytes)} held" for r in signals.gpus if r.pids]
            parts.append(f"{idle} ({', '.join(held)}; memory not counted)" if held else idle)
            gists.append("gpu idle" + "".join(f", held on {r.device.label}" for r in signals.gpus if r.pids))
        reason = "; ".join(parts)
        gist = "; ".join(gists)

    return Verdict(active=bool(busy), reason=reason, gist=gist, signals={
        "cpuCores": signals.cpu_cores,
        "networkBytes": signals.network_bytes,
        "intervalSeconds": signals.interval.total_seconds() if signals.interval else None,
        "gpus": [{"device": r.device.uuid, "label": r.device.label, "metric": r.device.metric,
                  "utilizationPercent": r.device.utilization_percent, "memoryBytes": r.memory_bytes,
                  "pids": list(r.pids), "busy": gpu_busy(r, thresholds) is not None} for r in signals.gpus],
    })
