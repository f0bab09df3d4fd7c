"""Activity sampling on a node: what each running workspace is doing, and whether that counts as active.

The agent's loop, every `sampleInterval`::

    monitor = ActivityMonitor(sampler_from_arg(args.sampler),          # nvml | file:PATH | none
                              Thresholds.from_policy(policy["activity"], sample_interval),
                              clock, metrics=ActivityMetrics())
    throttle = PublishThrottle(report_interval)
    verdicts = monitor.observe([WatchedWorkspace(ns, name, pod_uid, devices, cgroup_path_or_None), ...])
    for key, verdict in verdicts.items():
        patch = throttle.decide(key, verdict, clock())   # WorkspaceStatus(lastActivity, activityReason) or None
        if patch:
            kube.patch_status(Workspace, *key, wire(patch))
    throttle.retain(set(verdicts))

- `ActivityMonitor.observe` takes one GPU snapshot from the sampler, maps GPU processes to pods through
  `/proc/<pid>/cgroup`, reads each pod's cgroup CPU time and its netns byte counters, turns the counters
  into a rate and a per-interval delta against the previous call, and returns a `Verdict(active, reason,
  signals)` per workspace (key: (namespace, name)). Workspaces left out of a call are forgotten.
- `judge` (verdict.py) is the pure decision: any signal at or above its threshold is activity.
- `PublishThrottle` writes on a flip between active and idle and at most once per report interval while
  active; an unchanged idle verdict is never rewritten.
- The agent reports; the operator decides (it reads `status.lastActivity` and `status.activityReason`).
"""

from labkeeper.agent.activity.cgroup import HostReader
from labkeeper.agent.activity.metrics import ActivityMetrics
from labkeeper.agent.activity.model import (
    GpuDevice,
    GpuProcess,
    GpuSnapshot,
    Thresholds,
    Verdict,
    WatchedWorkspace,
    WorkspaceKey,
)
from labkeeper.agent.activity.monitor import ActivityMonitor
from labkeeper.agent.activity.samplers import (
    FileSampler,
    GpuSampler,
    NoGpuSampler,
    NvmlSampler,
    SamplerUnavailable,
    sampler_from_arg,
)
from labkeeper.agent.activity.throttle import PublishThrottle
from labkeeper.agent.activity.verdict import judge

__all__ = [
    "ActivityMetrics",
    "ActivityMonitor",
    "FileSampler",
    "GpuDevice",
    "GpuProcess",
    "GpuSampler",
    "GpuSnapshot",
    "HostReader",
    "NoGpuSampler",
    "NvmlSampler",
    "PublishThrottle",
    "SamplerUnavailable",
    "Thresholds",
    "Verdict",
    "WatchedWorkspace",
    "WorkspaceKey",
    "judge",
    "sampler_from_arg",
]
