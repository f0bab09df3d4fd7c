"""A department-sized lab on kwok: 100 nodes (all-balanced H100s, all-1g H100s, boxes of two whole GPUs), 1000 users,
10 000 workspaces, with the real operator as a subprocess against a real control plane on this machine.

The lab is loaded in steps, each timed:
1. the nodes, then the users (researchers, students and a few faculty) until all are Ready;
2. the workspaces nobody runs now (`--stopped`, spec.state Stopped: a lab keeps far more than it runs) and the
   CPU-only ones (`--cpu`), created as fast as the API takes them;
3. the GPU workspaces (`--gpu`, more than the lab has devices: 1g.10gb, 2g.20gb, 3g.40gb and whole GPUs), applied at
   `--rate` per second: apply -> Running p50/p99 of those admitted (a device was free), apply -> a queue place
   (WaitingForDevice) p50/p99 of the rest;
4. quiet: nothing applied for `--quiet` seconds; the operator's API writes in that window, by verb and kind
   (its labkeeper_operator_api_writes counter, the leader Lease apart), and its resident memory;
5. bulk free: `--free` running GPU workspaces deleted at once (a deletion keeps no hold): admission decisions per
   second, as waiting workspaces admitted per second until as many are Running again;
6. `labctl admin board --once` and `labctl admin report --since 7d`, each timed as a user runs them.

Prints its figures and writes bench/results/scale.json. `make bench-scale`; not part of `make test`."""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import yaml
from kubernetes import client, watch

from labkeeper.api.policy import load_policy
from labkeeper.controller.admission import Admissions
from labkeeper.kube.client import Kube
from labkeeper.testing.cluster import NodeSpec, free_port
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import wait_for

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
# GPU demand by profile, in proportion to the devices of that kind the node mix offers, with 1g.10gb the most wanted
PROFILES = (("1g.10gb", 0.70), ("2g.20gb", 0.10), ("3g.40gb", 0.08), ("full", 0.12))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def memory_mib(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def operator_writes(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    writes = {}
    for line in text.splitlines():
        if line.startswith(("labkeeper_operator_api_writes_total{", "labkeeper_admission_views_total{")):
            labels, value = line.rsplit(" ", 1)
            writes[labels] = float(value)
    return writes


def nodes(count: int) -> list[NodeSpec]:
    """40 % all-balanced H100s, 30 % all-1g H100s, 30 % boxes of two whole GPUs."""
    balanced, all_1g = round(count * 0.4), round(count * 0.3)
    return ([NodeSpec(f"bal-{i:03d}", "h100-balanced") for i in range(balanced)]
            + [NodeSpec(f"one-{i:03d}", "h100-all-1g") for i in range(all_1g)]
            + [NodeSpec(f"gpu-{i:03d}", "full-gpus") for i in range(count - balanced - all_1g)])


def user_docs(count: int) -> list[dict]:
    docs = []
    for i in range(count):
        tier = "faculty" if i % 20 == 0 else "researcher" if i % 4 == 0 else "student"
        docs.append(gpuuser(f"s{i:04d}", tier, limits={"maxWorkspaces": 40, "maxGpuEquivalents": 8}))
    return docs


class Watcher:
    """The moments (monotonic) each Workspace was first seen Running and first seen waiting for a device."""

    def __init__(self, lab: Lab) -> None:
        self.api = client.CustomObjectsApi(lab.cluster.api_client())
        self.running: dict[tuple[str, str], float] = {}
        self.waiting: dict[tuple[str, str], float] = {}
        self.phase: dict[tuple[str, str], str] = {}
        self.started = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        self.started.wait(30)
        return self

    def _run(self) -> None:
        version = None
        while not self._stop:
            stream = watch.Watch()
            try:
                if version is None:
                    listed = self.api.list_cluster_custom_object("labkeeper.io", "v1alpha1", "workspaces")
                    version = listed["metadata"]["resourceVersion"]
                    for obj in listed["items"]:
                        self._see(obj)
                    self.started.set()
                for event in stream.stream(self.api.list_cluster_custom_object, "labkeeper.io", "v1alpha1",
                                           "workspaces", resource_version=version, timeout_seconds=120,
                                           allow_watch_bookmarks=True):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self._see(obj, deleted=event["type"] == "DELETED")
            except client.exceptions.ApiException as err:
                if err.status == 410:
                    version = None  # too old: list again
            except Exception:  # the connection dropped: watch again from where it was
                time.sleep(0.5)

    def _see(self, obj: dict, deleted: bool = False) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if deleted:
            self.phase.pop(key, None)
            return
        status = obj.get("status") or {}
        now = time.monotonic()
        self.phase[key] = status.get("phase") or ""
        if status.get("phase") == "Running":
            self.running.setdefault(key, now)
        if status.get("reason") == "WaitingForDevice":
            self.waiting.setdefault(key, now)

    def count(self, phase: str) -> int:
        return sum(1 for p in list(self.phase.values()) if p == phase)


def timed(what: str, func, *args):
    started = time.monotonic()
    result = func(*args)
    seconds = time.monotonic() - started
    print(f"  {what}: {seconds:.1f} s", flush=True)
    return result, seconds


def create_all(kube: Kube, docs: list[dict], threads: int = 4) -> None:
    def create(doc: dict) -> None:
        for attempt in range(20):
            try:
                kube.create(doc)
                return
            except client.exceptions.ApiException as err:
                if err.status == 409:
                    return
                if attempt == 19 or err.status not in (429, 500, 503, 504, 404):
                    raise
                time.sleep(0.5)  # a namespace a moment old, an apiserver under load

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, docs))


def labctl(kubeconfig: Path, *args: str) -> float:
    started = time.monotonic()
    result = subprocess.run([str(Path(sys.executable).parent / "labctl"), "--kubeconfig", str(kubeconfig), *args],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"labctl {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--stopped", type=int, default=7500)
    parser.add_argument("--cpu", type=int, default=1000)
    parser.add_argument("--gpu", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=5.0, help="GPU workspaces applied per second")
    parser.add_argument("--quiet", type=float, default=60.0, help="seconds of the quiet window")
    parser.add_argument("--free", type=int, default=200, help="running GPU workspaces deleted at once")
    parser.add_argument("--settle", type=float, default=900.0,
                        help="seconds the GPU workspaces get to be Running or in the queue before the figures are taken")
    args = parser.parse_args()
    started_all = time.monotonic()
    policy = example_policy()
    policy["stoppedRetention"] = "0s"  # the stopped workspaces stay, as a lab's do
    port = free_port()
    figures: dict = {"nodes": args.nodes, "users": args.users,
                     "workspaces": args.stopped + args.cpu + args.gpu, "gpu_workspaces": args.gpu}
    print(f"scale: {args.nodes} nodes, {args.users} users, {figures['workspaces']} workspaces "
          f"({args.gpu} want a GPU, {args.cpu} CPU only running, {args.stopped} stopped)", flush=True)
    with Lab(nodes(args.nodes), policy, operator_args=("--metrics-port", str(port))) as lab:
        kube = Kube.from_kubeconfig(str(lab.cluster.kubeconfig))
        devices = sum(int(q) for n in kube.list("Node") for r, q in n["status"]["allocatable"].items()
                      if r.startswith("nvidia.com/"))
        figures["devices"] = devices
        print(f"  lab up: control plane {lab.cluster.startup_seconds:.1f} s, {devices} devices", flush=True)
        users = user_docs(args.users)
        _, figures["users_ready_s"] = timed(f"{args.users} users Ready", lambda: (
            create_all(kube, users), wait_for(lambda: sum(1 for u in kube.list("GPUUser")
                                                          if (u.get("status") or {}).get("phase") == "Ready")
                                              >= args.users, timeout=1800, interval=5, what="users Ready")))
        names = [u["metadata"]["name"] for u in users]
        watcher = Watcher(lab).start()
        stopped = [workspace(f"old{j}", names[j % len(names)], state="Stopped", cpu="10m", memory="16Mi")
                   for j in range(args.stopped)]
        cpu = [workspace(f"cpu{j}", names[(j * 7) % len(names)], cpu="10m", memory="16Mi") for j in range(args.cpu)]
        _, figures["stopped_created_s"] = timed(f"{args.stopped} stopped workspaces created",
                                                create_all, kube, stopped)
        _, figures["cpu_running_s"] = timed(f"{args.cpu} CPU workspaces Running", lambda: (
            create_all(kube, cpu), wait_for(lambda: all((d["metadata"]["namespace"], d["metadata"]["name"])
                                                        in watcher.running for d in cpu),
                                            timeout=2400, interval=2, what="CPU workspaces Running")))
        rss_before_gpu = memory_mib(lab.operator.proc.pid)[0]

        # the GPU workspaces, at a steady rate
        gpu = []
        for j in range(args.gpu):
            share, profile = (j * 0.618034) % 1.0, "full"
            for name, weight in PROFILES:
                if share < weight:
                    profile = name
                    break
                share -= weight
            gpu.append(workspace(f"g{j}", names[(j * 13) % len(names)], profile=profile, cpu="10m", memory="16Mi"))
        applied: dict[tuple[str, str], float] = {}
        views_before = operator_writes(port)
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for i, doc in enumerate(gpu):
                pause = began + i / args.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                applied[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = time.monotonic()
                pool.submit(create_all, kube, [doc], 1)
        settled = lambda: sum(1 for k in applied if k in watcher.running or k in watcher.waiting)  # noqa: E731
        figures["gpu_progress"] = []
        while settled() < len(applied) and time.monotonic() - began < args.settle:
            time.sleep(min(30.0, max(1.0, began + args.settle - time.monotonic())))
            phases = Counter(watcher.phase.get(k) or "not seen" for k in applied)
            figures["gpu_progress"].append({"s": round(time.monotonic() - began), **phases})
            print(f"    after {time.monotonic() - began:.0f} s: {dict(phases)}", flush=True)
        figures["gpu_settled"] = settled() >= len(applied)
        views = {k: v - views_before.get(k, 0) for k, v in operator_writes(port).items() if "admission_views" in k}
        figures["admission_views_gpu_phase"] = views
        reader = Admissions(kube, SimpleNamespace(current=load_policy(yaml.safe_dump(policy))))  # type: ignore[arg-type]
        read_started = time.monotonic()
        reader.read(dt.datetime.now(dt.UTC))
        figures["one_lab_read_s"] = round(time.monotonic() - read_started, 2)
        print(f"  admission's views of the whole lab in the GPU phase: {views}; one read of the lab (every node, pod, "
              f"user and workspace) takes {figures['one_lab_read_s']} s", flush=True)
        gpu_seconds = time.monotonic() - began
        admitted = [watcher.running[k] - applied[k] for k in applied if k in watcher.running]
        queued = [watcher.waiting[k] - applied[k] for k in applied if k in watcher.waiting and k not in watcher.running]
        figures.update({
            "gpu_apply_s": round(gpu_seconds, 1),
            "admitted": len(admitted), "queued": len(queued),
            "apply_to_running_p50_s": round(statistics.median(admitted), 2) if admitted else None,
            "apply_to_running_p99_s": round(percentile(admitted, 0.99), 2) if admitted else None,
            "apply_to_queue_place_p50_s": round(statistics.median(queued), 2) if queued else None,
            "apply_to_queue_place_p99_s": round(percentile(queued, 0.99), 2) if queued else None,
        })
        print(f"  {args.gpu} GPU workspaces at {args.rate:g}/s: {len(admitted)} Running, {len(queued)} waiting, "
              f"in {gpu_seconds:.0f} s; apply -> Running p50/p99 {figures['apply_to_running_p50_s']} / "
              f"{figures['apply_to_running_p99_s']} s; apply -> queue place p50/p99 "
              f"{figures['apply_to_queue_place_p50_s']} / {figures['apply_to_queue_place_p99_s']} s", flush=True)

        # quiet: nothing changes
        time.sleep(10)
        before = operator_writes(port)
        time.sleep(args.quiet)
        after = operator_writes(port)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        quiet = sum(v for k, v in delta.items() if 'kind="Lease"' not in k and "admission_views" not in k)
        rss, peak = memory_mib(lab.operator.proc.pid)
        figures.update({
            "quiet_writes_per_min": round(quiet * 60 / args.quiet, 1),
            "quiet_writes_by_kind": delta,
            "operator_rss_mib": round(rss, 1), "operator_peak_rss_mib": round(peak, 1),
            "operator_rss_before_gpu_mib": round(rss_before_gpu, 1),
        })
        print(f"  quiet {args.quiet:.0f} s: {figures['quiet_writes_per_min']} operator writes/min (Lease apart) "
              f"{delta}; operator RSS {rss:.0f} MiB (peak {peak:.0f} MiB)", flush=True)

        # bulk free: devices come free at once, the queue takes them
        running_gpu = [k for k in applied if watcher.phase.get(k) == "Running"][:args.free]
        waiting_before = {k for k in applied if watcher.phase.get(k) == "Pending"}
        freed_at = time.monotonic()
        for namespace, name in running_gpu:
            kube.delete("Workspace", name, namespace)
        target = len(running_gpu)
        newly = lambda: [k for k in waiting_before if k in watcher.running]  # noqa: E731
        try:
            wait_for(lambda: len(newly()) >= target, timeout=1200, interval=0.5,
                     what=lambda: f"{target} waiting workspaces admitted ({len(newly())})")
        except AssertionError as err:
            print(f"  {err}", flush=True)
        admitted_after = newly()
        elapsed = (max(watcher.running[k] for k in admitted_after) - freed_at) if admitted_after else float("nan")
        figures.update({
            "freed": target, "admitted_after_free": len(admitted_after),
            "admission_after_free_s": round(elapsed, 1),
            "admissions_per_s": round(len(admitted_after) / elapsed, 2) if admitted_after else None,
        })
        print(f"  {target} devices freed at once: {len(admitted_after)} waiting workspaces Running in {elapsed:.1f} s "
              f"= {figures['admissions_per_s']} admissions/s", flush=True)

        figures["board_once_s"] = round(labctl(lab.cluster.kubeconfig, "admin", "board", "--once"), 2)
        figures["report_s"] = round(labctl(lab.cluster.kubeconfig, "admin", "report", "--since", "7d"), 2)
        print(f"  labctl admin board --once {figures['board_once_s']} s; labctl admin report --since 7d "
              f"{figures['report_s']} s", flush=True)
        figures["operator_peak_rss_mib"] = round(memory_mib(lab.operator.proc.pid)[1], 1)
    figures["total_s"] = round(time.monotonic() - started_all, 1)
    figures["load_average"] = [round(x, 1) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(figures, indent=2))
    print(f"apply -> Running p99 {figures['apply_to_running_p99_s']} s (target <= 5 s); operator peak RSS "
          f"{figures['operator_peak_rss_mib']} MiB (target <= 1024); quiet writes {figures['quiet_writes_per_min']}/min "
          f"(target 0); board {figures['board_once_s']} s (target <= 2 s); report {figures['report_s']} s; "
          f"total {figures['total_s'] / 60:.1f} min, load average {figures['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
