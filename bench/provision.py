"""User provisioning: p50/p99 time from `kubectl apply` of a GPUUser to Ready for N users, and the
API writes the operator makes over a window of an idle cluster afterwards (target: 0, leader-lease
renewals reported apart). Prints its figures and writes bench/results/provision.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kubernetes import client, watch

from labkeeper.testing.cluster import NodeSpec, free_port
from labkeeper.testing.lab import Lab, gpuuser

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def watch_ready(lab: Lab, names: set[str], ready_at: dict[str, float], started: threading.Event) -> None:
    api = client.CustomObjectsApi(lab.cluster.api_client())
    stream = watch.Watch()
    started.set()
    for event in stream.stream(api.list_cluster_custom_object, "labkeeper.io", "v1alpha1", "gpuusers",
                               timeout_seconds=600):
        obj = event["object"]
        name = obj["metadata"]["name"]
        if name in names and name not in ready_at and (obj.get("status") or {}).get("phase") == "Ready":
            ready_at[name] = time.monotonic()
            if len(ready_at) == len(names):
                stream.stop()


def operator_writes(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    writes = {}
    for line in text.splitlines():
        if line.startswith("labkeeper_operator_api_writes_total{"):
            labels, value = line.rsplit(" ", 1)
            writes[labels] = float(value)
    return writes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--idle-window", type=float, default=60.0)
    args = parser.parse_args()
    port = free_port()
    with Lab((NodeSpec("gpu-node-1", "h100-balanced"),), operator_args=("--metrics-port", str(port))) as lab:
        names = [f"bench{i:03d}" for i in range(args.users)]
        ready_at: dict[str, float] = {}
        started = threading.Event()
        watcher = threading.Thread(target=watch_ready, args=(lab, set(names), ready_at, started), daemon=True)
        watcher.start()
        started.wait(10)
        time.sleep(1.0)
        applied_at: dict[str, float] = {}
        for name in names:
            applied_at[name] = time.monotonic()
            lab.apply(gpuuser(name))
        watcher.join(timeout=300)
        missing = [n for n in names if n not in ready_at]
        latencies = [ready_at[n] - applied_at[n] for n in names if n in ready_at]
        time.sleep(5)  # let in-flight follow-ups land before the idle window opens
        before = operator_writes(port)
        time.sleep(args.idle_window)
        after = operator_writes(port)
        delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        lease = sum(v for k, v in delta.items() if 'kind="Lease"' in k)
        other = sum(v for k, v in delta.items() if 'kind="Lease"' not in k)
        result = {
            "users": args.users,
            "ready": len(latencies),
            "missing": missing,
            "apply_to_ready_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "apply_to_ready_p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
            "idle_window_s": args.idle_window,
            "api_writes_while_idle": int(other),
            "lease_renewals_while_idle": int(lease),
            "idle_writes_by_kind": delta,
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "provision.json").write_text(json.dumps(result, indent=2))
    print(f"users provisioned: {result['ready']}/{args.users}")
    print(f"apply -> Ready p50: {result['apply_to_ready_p50_s']} s (target <= 1 s)")
    print(f"apply -> Ready p99: {result['apply_to_ready_p99_s']} s (target <= 3 s)")
    print(f"operator API writes over {args.idle_window:.0f} s idle: {result['api_writes_while_idle']} (target 0); "
          f"leader-lease renewals: {result['lease_renewals_while_idle']}")
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
