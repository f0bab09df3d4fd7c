"""CPU cost of activity sampling at 100 workspaces, as % of one core per sample interval.

One node under a temporary directory: 8 H100s cut into 56 1g.10gb MIG instances (file-backed sampler
standing in for NVML), 100 pods in a kubelet-shaped cgroup v2 tree, their pids in a /proc-shaped tree.
Each round: one GPU snapshot, pid -> pod mapping, cgroup CPU and netns reads, 100 verdicts, the
publish throttle and the Prometheus gauges. Writes bench/results/culling_sampler.json."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from labkeeper.agent.activity import (
    ActivityMetrics,
    ActivityMonitor,
    FileSampler,
    HostReader,
    PublishThrottle,
    Thresholds,
    WatchedWorkspace,
)

RESULTS = Path(__file__).resolve().parent / "results"
NET_DEV = ("Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n"
           "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n")


def build_node(root: Path, count: int) -> tuple[list[WatchedWorkspace], Path, HostReader]:
    devices, processes, workspaces = [], [], []
    migs = []
    for g in range(8):
        instances = [{"uuid": f"MIG-{g}-{i}", "profile": "1g.10gb", "smUtilization": (g * 7 + i) % 60}
                     for i in range(7)]
        devices.append({"uuid": f"GPU-{g}", "name": "NVIDIA H100 80GB HBM3", "migInstances": instances})
        migs += [m["uuid"] for m in instances]
    for n in range(count):
        pod_uid, pid = str(uuid.uuid4()), 10_000 + n
        rel = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice"
        ctr = root / "cgroup" / rel / "cri-containerd-abc.scope"
        ctr.mkdir(parents=True)
        (ctr / "cgroup.procs").write_text(f"{pid}\n")
        (ctr.parent / "cpu.stat").write_text(f"usage_usec {n * 1000}\nuser_usec 0\nsystem_usec 0\n")
        (root / "proc" / str(pid) / "net").mkdir(parents=True)
        (root / "proc" / str(pid) / "cgroup").write_text(f"0::/{rel}/cri-containerd-abc.scope\n")
        (root / "proc" / str(pid) / "net" / "dev").write_text(NET_DEV.format(rx=n * 10**6, tx=n))
        devs: tuple[str, ...] = ()
        if n < len(migs):
            devs = (migs[n],)
            processes.append({"pid": pid, "device": migs[n], "usedMemory": "4Gi"})
        workspaces.append(WatchedWorkspace(f"lab-user{n % 40}", f"ws-{n}", pod_uid, devs))
    gpu_file = root / "gpus.json"
    gpu_file.write_text(json.dumps({"devices": devices, "processes": processes}))
    return workspaces, gpu_file, HostReader(proc_root=root / "proc", cgroup_root=root / "cgroup")


def measure(count: int = 100, rounds: int = 30, sample_interval: float = 60.0) -> dict:
    """Sampler CPU per round at `count` workspaces, as figures for the results file."""
    with tempfile.TemporaryDirectory() as tmp:
        workspaces, gpu_file, host = build_node(Path(tmp), count)
        now = [dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)]
        monitor = ActivityMonitor(FileSampler(gpu_file), Thresholds(), lambda: now[0], host=host,
                                  metrics=ActivityMetrics(CollectorRegistry()))
        throttle = PublishThrottle(dt.timedelta(minutes=5))
        costs, writes = [], 0
        for _ in range(rounds):
            started = time.process_time()
            for key, verdict in monitor.observe(workspaces).items():
                writes += throttle.decide(key, verdict, now[0]) is not None
            costs.append(time.process_time() - started)
            now[0] += dt.timedelta(seconds=sample_interval)
    steady = sorted(costs[1:])[len(costs[1:]) // 2]
    return {"sampler_cpu_percent_100": round(100 * steady / sample_interval, 3), "round_cpu_ms": round(steady * 1000, 2),
            "first_round_cpu_ms": round(costs[0] * 1000, 2),
            "first_round_cpu_percent": round(100 * costs[0] / sample_interval, 3),
            "workspaces": count, "sample_interval_s": sample_interval, "api_writes": writes, "rounds": rounds}


def report(figures: dict) -> None:
    print(f"activity sampling, {figures['workspaces']} workspaces, 56 MIG instances, file-backed GPU sampler:")
    print(f"  one round: {figures['round_cpu_ms']:.1f} ms CPU (median of {figures['rounds'] - 1}; first round "
          f"{figures['first_round_cpu_ms']:.1f} ms including the cgroup lookups)")
    print(f"  = {figures['sampler_cpu_percent_100']} % of one core at a {figures['sample_interval_s']:.0f} s sample "
          "interval (target < 5 %)")
    print(f"  API writes: {figures['api_writes']} over {figures['rounds']} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sample-interval", type=float, default=60.0, help="seconds between samples")
    args = parser.parse_args()
    figures = measure(args.workspaces, args.rounds, args.sample_interval)
    report(figures)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "culling_sampler.json").write_text(json.dumps(figures, indent=2))

if __name__ == "__main__":
    main()
