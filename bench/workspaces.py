"""Workspaces: p50/p99 time from `kubectl apply` to Running for N workspaces across M users, and the
operator's resident memory while it holds K workspaces. Prints its figures and writes
bench/results/workspaces.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from kubernetes import client, watch

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, gpuuser, workspace
from labkeeper.testing.processes import wait_for

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watch_running(lab: Lab, keys: set[tuple[str, str]], running_at: dict, started: threading.Event) -> None:
    api = client.CustomObjectsApi(lab.cluster.api_client())
    stream = watch.Watch()
    started.set()
    for event in stream.stream(api.list_cluster_custom_object, "labkeeper.io", "v1alpha1", "workspaces",
                               timeout_seconds=900):
        obj = event["object"]
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in keys and key not in running_at and (obj.get("status") or {}).get("phase") == "Running":
            running_at[key] = time.monotonic()
            if len(running_at) == len(keys):
                stream.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspaces", type=int, default=200)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--hold", type=int, default=1000, help="workspaces held for the memory figure")
    args = parser.parse_args()
    # enough fake capacity for every pod: 1000 workspaces need 10 nodes of 110 pods
    nodes = [NodeSpec(f"cpu-{i}", "cpu-only") for i in range(max(2, args.hold // 100 + 1))]
    with Lab(nodes) as lab:
        users = [gpuuser(f"wsb{i:03d}", "researcher", limits={"maxWorkspaces": 20, "cpu": "64", "memory": "256Gi"})
                 for i in range(args.users)]
        lab.add_users(*users, timeout=600)
        docs = [workspace(f"w{j}", f"wsb{j % args.users:03d}", cpu="10m", memory="16Mi")
                for j in range(args.workspaces)]
        keys = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs}
        running_at: dict = {}
        started = threading.Event()
        watcher = threading.Thread(target=watch_running, args=(lab, keys, running_at, started), daemon=True)
        watcher.start()
        started.wait(10)
        time.sleep(1.0)
        applied_at = {}
        for doc in docs:
            applied_at[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = time.monotonic()
            lab.apply(doc)
        watcher.join(timeout=600)
        latencies = [running_at[k] - applied_at[k] for k in keys if k in running_at]
        extra = [workspace(f"m{j}", f"wsb{j % args.users:03d}", cpu="10m", memory="16Mi")
                 for j in range(args.hold - args.workspaces)]
        for start in range(0, len(extra), 100):
            lab.apply(*extra[start:start + 100])
        wait_for(lambda: sum(1 for ws in lab.items("workspaces", "-A")
                             if (ws.get("status") or {}).get("phase") == "Running") >= args.hold,
                 timeout=900, interval=5, what=f"{args.hold} workspaces Running")
        time.sleep(5)
        memory = rss_mib(lab.operator.proc.pid)
        result = {
            "workspaces": args.workspaces,
            "users": args.users,
            "running": len(latencies),
            "apply_to_running_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "apply_to_running_p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
            "held_workspaces": args.hold,
            "operator_rss_mib": round(memory, 1),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workspaces.json").write_text(json.dumps(result, indent=2))
    print(f"workspaces Running: {result['running']}/{args.workspaces}")
    print(f"apply -> Running p50: {result['apply_to_running_p50_s']} s")
    print(f"apply -> Running p99: {result['apply_to_running_p99_s']} s (target <= 2 s)")
    print(f"operator RSS holding {args.hold} workspaces: {result['operator_rss_mib']} MiB (target <= 200 MiB)")
    return 0 if len(latencies) == args.workspaces else 1


if __name__ == "__main__":
    sys.exit(main())
