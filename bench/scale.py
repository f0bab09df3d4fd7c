"""A department-sized lab on kwok: 100 nodes (all-balanced H100s, all-1g H100s, boxes of two whole GPUs), 1000 users,
10 000 workspaces, with the real operator as a subprocess against a real control plane on this machine.

The lab is loaded in steps, each timed:
1. the nodes, then the users (researchers, students and a few faculty) until all are Ready;
2. the workspaces nobody runs now (`--stopped`, spec.state Stopped: a lab keeps far more than it runs) and the
   CPU-only ones (`--cpu`), created as fast as the API takes them;
3. the GPU workspaces (`--gpu`, more than the lab has devices: 1g.10gb, 2g.20gb, 3g.40gb and whole GPUs), applied at
   `--rate` per second: apply -> Running p50/p99 of those admitted (a device was free), apply -> a queue place
   (WaitingForDevice) p50/p99 of the rest;
4. quiet: once no Workspace status has changed for `--still` seconds (the operator done with what step 3 left it,
   preemptions and the queue places they move; at most `--still-cap`, and it says so), nothing applied for
   `--quiet` seconds; the operator's API writes in that window, by verb and kind (its
   labkeeper_operator_api_writes counter, the leader Lease apart), and its resident memory;
5. bulk free: `--free` running GPU workspaces deleted at once (a deletion keeps no hold): admission decisions per
   second, as waiting workspaces admitted per second until as many are Running again;
6. `labctl admin board --once` and `labctl admin report --since 7d`, each timed as a user runs them.

Prints its figures and writes bench/results/scale.json. `make bench-scale`; not part of `make test`.

`--only views` times step 6 alone in minutes: the same lab written straight into the API server as the operator
would have left it (users Ready with weeks of accounting, workspaces with their statuses through the status
subresource, the pods of the running ones on the kwok nodes), with no operator running. `--baseline DIR`
(repeatable) times another checkout's labctl beside this one's, on the same objects at the same load, and compares
what they print: `git archive COMMIT operator | tar -x -C DIR` makes one."""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from resource import RUSAGE_CHILDREN, getrusage
from types import SimpleNamespace

import yaml
from kubernetes import client, watch

from labkeeper.api import accounting as api_accounting
from labkeeper.api.admission import QUEUE_AHEAD_LISTED, device_words
from labkeeper.api.conditions import condition
from labkeeper.api.names import LABEL_MANAGED, MANAGED_BY, MANAGED_SELECTOR
from labkeeper.api.policy import load_policy
from labkeeper.api.units import format_time
from labkeeper.controller.admission import Admissions
from labkeeper.kube.client import Kube, owner_reference
from labkeeper.render.access import gpu_resource
from labkeeper.render.pod import PodInputs, workspace_pod
from labkeeper.testing.cluster import NODE_PROFILES, NVIDIA_RUNTIME_CLASS, NodeSpec, free_port
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

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
    """The operator's counters: its API writes and reads by verb and kind, and admission's views of the lab."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    writes = {}
    for line in text.splitlines():
        if line.startswith(("labkeeper_operator_api_writes_total{", "labkeeper_operator_api_reads_total{",
                            "labkeeper_admission_views_total{", "labkeeper_admission_reads_total{")):
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

    PLURAL = "workspaces"

    def __init__(self, lab: Lab) -> None:
        self.api = client.CustomObjectsApi(lab.cluster.api_client())
        self.running: dict[tuple[str, str], float] = {}  # when each was first seen Running
        self.waiting: dict[tuple[str, str], float] = {}
        self.phase: dict[tuple[str, str], str] = {}
        self.status: dict[tuple[str, str], dict] = {}
        self.changed: Counter = Counter()  # status fields (and queue's) seen to change, for what a quiet window writes
        self.examples: dict[str, list[str]] = {}  # of each, the first few changes seen (before -> after)
        self.last_change = time.monotonic()  # when a status field last changed
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
                    listed = self.api.list_cluster_custom_object("labkeeper.io", "v1alpha1", self.PLURAL)
                    version = listed["metadata"]["resourceVersion"]
                    for obj in listed["items"]:
                        self._see(obj)
                    self.started.set()
                for event in stream.stream(self.api.list_cluster_custom_object, "labkeeper.io", "v1alpha1",
                                           self.PLURAL, resource_version=version, timeout_seconds=120,
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

    def _changed(self, field: str, key: tuple[str, str], before: object, after: object) -> None:
        self.changed[field] += 1
        seen = self.examples.setdefault(field, [])
        if len(seen) < 3:
            seen.append(f"{key[0]}/{key[1]}: {str(before)[:80]} -> {str(after)[:80]}")

    def _see(self, obj: dict, deleted: bool = False) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if deleted:
            self.phase.pop(key, None)
            return
        status = obj.get("status") or {}
        now = time.monotonic()
        before = self.status.get(key, {})
        if status != before:
            self.last_change = now
        for name in set(status) | set(before):
            if name == "queue" and isinstance(status.get(name), dict) and isinstance(before.get(name), dict):
                for k in set(status[name]) | set(before[name]):
                    if status[name].get(k) != before[name].get(k):
                        self._changed(f"queue.{k}", key, before[name].get(k), status[name].get(k))
            elif status.get(name) != before.get(name):
                self._changed(name, key, before.get(name), status.get(name))
        self.status[key] = status
        if status.get("phase") == "Running":
            self.running.setdefault(key, now)
        self.phase[key] = status.get("phase") or ""
        if status.get("reason") == "WaitingForDevice":
            self.waiting.setdefault(key, now)

    def count(self, phase: str) -> int:
        return sum(1 for p in list(self.phase.values()) if p == phase)


class UserWatcher(Watcher):
    """What changes in each GPUUser (metadata but the server's bookkeeping, spec, each status field): a quiet
    window's user passes and writes, attributed."""

    PLURAL = "gpuusers"

    def _see(self, obj: dict, deleted: bool = False) -> None:
        key = ("", obj["metadata"]["name"])
        if deleted:
            self.status.pop(key, None)
            return
        meta = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}
        fields = {**{f"metadata.{k}": v for k, v in meta.items()}, "spec": obj.get("spec"),
                  **{f"status.{k}": v for k, v in (obj.get("status") or {}).items()}}
        before = self.status.get(key)
        if before is not None:
            for name in set(fields) | set(before):
                if fields.get(name) != before.get(name):
                    self._changed(name, key, before.get(name), fields.get(name))
        self.status[key] = fields


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


# ---- --only views: the lab at rest, written straight into the API server ------------------------------------------
class LabAtRest(Lab):
    """The lab without its operator: the bench writes what the operator would have left."""

    def start(self) -> LabAtRest:
        self.cluster.start()
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.apply(NVIDIA_RUNTIME_CLASS)
        self.kubectl("create", "namespace", SYSTEM_NAMESPACE)
        self.set_policy(self.policy)
        return self


def workspace_conditions(now: dt.datetime, *, ready: bool, reason: str, message: str,
                         node: str | None = None) -> list[dict]:
    """The three conditions every pass of the operator writes."""
    when = now - dt.timedelta(minutes=5)
    return [condition("Scheduled", bool(node), "Scheduled" if node else reason, f"on {node}" if node else message,
                      None, when, observed_generation=1),
            condition("Ready", ready, "PodRunning" if ready else reason, message, None, when, observed_generation=1),
            condition("WithinQuota", True, "WithinQuota", "within the user's GPU-equivalent cap", None, when,
                      observed_generation=1)]


def gpu_profile(j: int) -> str:
    share = (j * 0.618034) % 1.0
    for name, weight in PROFILES:
        if share < weight:
            return name
        share -= weight
    return "full"


def lab_at_rest(users: list[dict], node_specs: list[NodeSpec], stopped: int, cpu: int, gpu: int,
                now: dt.datetime, weights: dict[str, float], seed: int = 21) -> tuple[list[dict], list[dict]]:
    """The users and workspaces of `main`'s lab as its operator leaves them, statuses included: stopped workspaces
    (every fifth had a GPU; those stopped in the last days keep meter marks, the last quarter hour's a hold),
    CPU-only ones Running, GPU ones Running (active, idle, a few warned) while a device of theirs is free and the
    rest WaitingForDevice with their queue place; users Ready with 35 days of accounting buckets."""
    rng = random.Random(seed)
    names = [u["metadata"]["name"] for u in users]
    t = lambda moment: format_time(moment)  # noqa: E731
    free: dict[str, list[str]] = {}
    for spec in node_specs:
        for resource, count in NODE_PROFILES[spec.profile].items():
            free.setdefault(resource, []).extend([spec.name] * int(count))
    for nodes_of in free.values():
        rng.shuffle(nodes_of)
    offered = {resource: len(nodes_of) for resource, nodes_of in free.items()}
    workspaces: list[dict] = []
    history: dict[str, list[tuple[str, float]]] = {}  # user -> (workspace, gpu equivalents) that ever held a device

    for j in range(stopped):
        user = names[j % len(names)]
        profile = gpu_profile(j) if j % 5 == 0 else "none"
        doc = workspace(f"old{j}", user, profile=profile, state="Stopped", cpu="10m", memory="16Mi")
        reason = ("Stopped", "Idle", "MaxRuntime")[j % 3]
        stopped_at = now - dt.timedelta(minutes=2 + (j * 7919) % (30 * 24 * 60))
        status: dict = {"phase": "Stopped", "reason": reason, "message": "stopped", "stopReason": reason,
                        "stoppedAt": t(stopped_at), "runtimeSeconds": rng.randrange(600, 90000),
                        "conditions": workspace_conditions(now, ready=False, reason=reason, message="stopped"),
                        "observedGeneration": 1}
        if profile != "none":
            eq = round(weights[profile], 6)
            history.setdefault(user, []).append((doc["metadata"]["name"], eq))
            until = stopped_at + dt.timedelta(minutes=15)
            if now - stopped_at < dt.timedelta(days=2):
                began = stopped_at - dt.timedelta(hours=rng.uniform(1, 20))
                idle = stopped_at - dt.timedelta(minutes=rng.uniform(30, 120))
                status["meter"] = [{"state": "active", "since": t(began), "gpuEquivalents": eq},
                                   {"state": "idle", "since": t(idle), "gpuEquivalents": eq},
                                   {"state": "held", "since": t(stopped_at), "gpuEquivalents": eq, "until": t(until),
                                    "reason": reason}]
                resource = gpu_resource(profile)
                if until > now and free.get(resource):
                    status.update({"holdNode": free[resource].pop(), "holdResource": resource, "holdCount": 1,
                                   "holdUntil": t(until), "gpuEquivalents": eq})
                elif until <= now:
                    status["meter"].append({"state": "off", "since": t(until), "gpuEquivalents": 0})
            else:
                status["meter"] = [{"state": "off", "since": t(until), "gpuEquivalents": 0}]
        workspaces.append({**doc, "status": status})

    every_node = [spec.name for spec in node_specs]
    for j in range(cpu):
        user = names[(j * 7) % len(names)]
        doc = workspace(f"cpu{j}", user, cpu="10m", memory="16Mi")
        if j % 250 == 7:
            message = f"image {doc['spec']['image']} cannot be pulled: not found"
            workspaces.append({**doc, "status": {
                "phase": "Failed", "reason": "ImagePullBackOff", "message": message,
                "conditions": workspace_conditions(now, ready=False, reason="ImagePullBackOff", message=message),
                "observedGeneration": 1}})
            continue
        workspaces.append({**doc, "status": running_status(rng, now, every_node[j % len(every_node)], 0.0, None)})

    waiters: dict[str, list[str]] = {}
    for j in range(gpu):
        user = names[(j * 13) % len(names)]
        profile = gpu_profile(j)
        resource, eq = gpu_resource(profile), round(weights[profile], 6)
        doc = workspace(f"g{j}", user, profile=profile, cpu="10m", memory="16Mi")
        history.setdefault(user, []).append((doc["metadata"]["name"], eq))
        waited = now - dt.timedelta(minutes=rng.uniform(5, 60))
        if free.get(resource):
            status = running_status(rng, now, free[resource].pop(), eq, waited)
        else:
            ahead = waiters.setdefault(resource, [])
            since = now - dt.timedelta(seconds=3 * (gpu - j))  # the queue in the order they came
            message = (f"no free {device_words(resource, 1)} ({offered[resource]} in use); "
                       + (f"{len(ahead)} workspace{'s' if len(ahead) != 1 else ''} ahead of you" if ahead
                          else "you are next"))
            status = {"phase": "Pending", "reason": "WaitingForDevice", "message": message,
                      "waitingSince": since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "gpuEquivalents": eq,
                      "queue": {"position": len(ahead) + 1, "ahead": list(ahead)[:QUEUE_AHEAD_LISTED], "reason": message,
                                "relativeUsage": round(rng.uniform(0, 3), 2)},
                      "meter": [{"state": "waiting", "since": t(since), "gpuEquivalents": eq}],
                      "conditions": workspace_conditions(now, ready=False, reason="WaitingForDevice", message=message),
                      "observedGeneration": 1}
            ahead.append(f"{user}/{doc['metadata']['name']}")
        workspaces.append({**doc, "status": status})

    with_status = []
    first = (now - dt.timedelta(days=api_accounting.RETENTION_DAYS)).date()
    through = now - dt.timedelta(minutes=2)
    for i, doc in enumerate(users):
        name = doc["metadata"]["name"]
        days = []
        for day in range(api_accounting.RETENTION_DAYS + 1):
            date = (first + dt.timedelta(days=day)).isoformat()
            for ws_name, eq in history.get(name, []):
                if rng.random() < 0.3:
                    bucket = {"date": date, "workspace": ws_name,
                              "activeSeconds": round(rng.uniform(0, 8 * 3600) * eq, 3),
                              "idleSeconds": round(rng.uniform(0, 3 * 3600) * eq, 3),
                              "heldAfterStopSeconds": round(rng.uniform(0, 900) * eq, 3),
                              "waitingSeconds": round(rng.uniform(0, 1800), 3)}
                    waits = [round(rng.uniform(1, 1800), 3) for _ in range(rng.randrange(3))]
                    if waits:
                        bucket["waits"] = waits
                    if rng.random() < 0.3:
                        bucket["stops"] = {rng.choice(("Idle", "Stopped", "MaxRuntime")): 1}
                    days.append(bucket)
        days.sort(key=lambda d: (d["date"], d["workspace"]))
        disk = i % 97 == 5
        status = {"phase": "Ready", "uid": 100000 + i, "gid": 100000 + i, "namespace": f"lab-{name}",
                  "home": f"/data/users/{name}", "kubeconfigSecret": f"kubeconfig-{name}", "incarnation": "1",
                  "accounting": {"through": t(through), "decayedGpuHours": round(rng.uniform(0, 40), 6), "days": days},
                  "conditions": [
                      condition("Ready", True, "Provisioned", "account, namespace and kubeconfig ready", None, now),
                      condition("DiskAlert", disk, "Warning" if disk else "OK",
                                "home at 91% of its limit" if disk else "", None, now)],
                  "observedGeneration": 1}
        with_status.append({**doc, "status": status})
    return with_status, workspaces


def running_status(rng: random.Random, now: dt.datetime, node: str, eq: float, waited: dt.datetime | None) -> dict:
    """A Running workspace's status; a GPU one's meter says active, or idle and perhaps warned."""
    since = now - dt.timedelta(minutes=rng.uniform(10, 48 * 60))
    if waited is not None:
        since = max(since, waited + dt.timedelta(seconds=2))
    activity = now - dt.timedelta(minutes=rng.uniform(0, 3))
    status = {"phase": "Running", "reason": "PodRunning", "message": "running", "node": node,
              "runningSince": format_time(since), "lastSeenRunning": format_time(now - dt.timedelta(seconds=20)),
              "runtimeDeadline": format_time(since + dt.timedelta(days=7)),
              "conditions": workspace_conditions(now, ready=True, reason="PodRunning", message="running", node=node),
              "observedGeneration": 1}
    if waited is None:
        return {**status, "lastActivity": format_time(activity), "activityReason": "cpu",
                "idleDeadline": format_time(activity + dt.timedelta(hours=1))}
    meter = [{"state": "waiting", "since": format_time(waited), "gpuEquivalents": eq},
             {"state": "active", "since": format_time(since), "gpuEquivalents": eq}]
    roll = rng.random()
    if roll < 0.4:
        idle = max(since, now - dt.timedelta(minutes=rng.uniform(5, 25)))
        activity = idle
        meter.append({"state": "idle", "since": format_time(idle), "gpuEquivalents": eq})
    status.update({"gpuEquivalents": eq, "devices": ["GPU-0"], "lastActivity": format_time(activity),
                   "activityReason": "gpu", "idleSince": format_time(activity), "meter": meter,
                   "idleDeadline": format_time(activity + dt.timedelta(minutes=30))})
    if roll < 0.1:
        status.update({"phase": "IdleWarning", "reason": "Idle", "message": "idle; stops at its deadline"})
    return status


def write_all(kube: Kube, work: list, write, threads: int = 16) -> None:
    """`write(kube, item)` for every item from `threads` threads, an apiserver under load retried."""

    def one(item) -> None:
        for attempt in range(30):
            try:
                write(kube, item)
                return
            except client.exceptions.ApiException as err:
                # 403: a namespace so new that its default ServiceAccount is not there yet
                if attempt == 29 or err.status not in (403, 404, 429, 500, 503, 504):
                    raise
                time.sleep(0.5)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, work))


def create_or_get(kube: Kube, doc: dict) -> dict:
    """The object without its status, created, or as it is if it exists already (a bench run again)."""
    body = {k: v for k, v in doc.items() if k != "status"}
    try:
        return kube.create(body)
    except client.exceptions.ApiException as err:
        if err.status != 409:
            raise
        return kube.get(doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")) or {}


def create_with_status(kube: Kube, doc: dict) -> dict:
    created = create_or_get(kube, doc)
    kube.patch(doc["kind"], doc["metadata"]["name"], {"status": doc["status"]}, doc["metadata"].get("namespace"),
               subresource="status")
    return created


def write_workspace(kube: Kube, doc: dict, uids: dict[str, int], lab_gid: int) -> None:
    """The workspace; a running one's pod on its node (built as the operator builds it), then the status."""
    created = create_or_get(kube, doc)
    status = dict(doc["status"])
    if status["phase"] in ("Running", "IdleWarning"):
        user = doc["metadata"]["namespace"].removeprefix("lab-")
        spec, gpu = doc["spec"], doc["spec"].get("gpu") or {}
        pod = workspace_pod(PodInputs(
            workspace=doc["metadata"]["name"], namespace=doc["metadata"]["namespace"],
            owner=owner_reference(created), username=user, uid=uids[user], gid=uids[user],
            supplemental_gids=[lab_gid], home_host_path=f"/data/users/{user}", image=spec["image"], cpu=spec["cpu"],
            memory=spec["memory"], gpu_profile=gpu.get("profile", "none"), gpu_count=int(gpu.get("count") or 1),
            runtime_class="nvidia", node_name=status["node"]))
        try:
            made = kube.create(pod)
        except client.exceptions.ApiException as err:
            if err.status != 409:
                raise
            made = kube.get("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"]) or {}
        status.update({"podName": made["metadata"]["name"], "podUID": made["metadata"]["uid"]})
    kube.patch("Workspace", doc["metadata"]["name"], {"status": status}, doc["metadata"]["namespace"],
               subresource="status")


def fast_kube(kubeconfig: Path, connections: int) -> Kube:
    return Kube.from_kubeconfig(str(kubeconfig), connections=connections, field_manager="bench")


def labctl_run(kubeconfig: Path, source: Path | None, *args: str) -> tuple[float, float, str]:
    """Seconds one labctl command takes as a user runs it, the CPU seconds labctl itself used (less bent by the
    machine's load than the first), and what it printed; `source`: another checkout's."""
    env = dict(os.environ, COLUMNS="120", LINES="40")
    command = [str(Path(sys.executable).parent / "labctl")]
    if source is not None:
        env["PYTHONPATH"] = str(source / "operator")
        command = [sys.executable, "-c", "from labkeeper.cli.main import main; main()"]
    before = getrusage(RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([*command, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                            cwd=REPO, timeout=600, env=env)
    seconds = time.monotonic() - started
    after = getrusage(RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"labctl {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, result.stdout


def views_only(args: argparse.Namespace) -> int:
    """Step 6 alone, on the lab written as the operator would have left it."""
    started_all = time.monotonic()
    policy = example_policy()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    loaded = load_policy(yaml.safe_dump(policy))
    users, workspaces = lab_at_rest(user_docs(args.users), nodes(args.nodes), args.stopped, args.cpu, args.gpu, now,
                                    dict(loaded.gpu_weights))
    figures: dict = {"mode": "views", "nodes": args.nodes, "users": args.users, "workspaces": len(workspaces),
                     "phases": dict(Counter(w["status"]["phase"] for w in workspaces))}
    print(f"scale --only views: {args.nodes} nodes, {args.users} users, {len(workspaces)} workspaces "
          f"{figures['phases']}", flush=True)
    with LabAtRest(nodes(args.nodes), policy) as lab:
        kube = fast_kube(lab.cluster.kubeconfig, args.threads)
        print(f"  control plane up in {lab.cluster.startup_seconds:.1f} s", flush=True)
        namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": f"lab-{u['metadata']['name']}", "labels": {LABEL_MANAGED: MANAGED_BY}}}
                      for u in users]
        _, figures["namespaces_s"] = timed(f"{len(namespaces)} namespaces", write_all, kube, namespaces,
                                           lambda k, d: create_all(k, [d], 1), args.threads)
        _, figures["users_s"] = timed(f"{len(users)} users with status", write_all, kube, users,
                                      create_with_status, args.threads)
        uids = {u["metadata"]["name"]: u["status"]["uid"] for u in users}
        _, figures["workspaces_s"] = timed(
            f"{len(workspaces)} workspaces with status and the running ones' pods", write_all, kube, workspaces,
            lambda k, d: write_workspace(k, d, uids, loaded.lab_users_gid), args.threads)
        # kwok marks the pods Running; the board reads them as they then are
        running = sum(1 for w in workspaces if w["status"]["phase"] in ("Running", "IdleWarning"))
        wait_for(lambda: sum(1 for p in kube.list("Pod", label_selector=MANAGED_SELECTOR)
                             if (p.get("status") or {}).get("phase") == "Running") >= running,
                 timeout=900, interval=5, what=f"{running} pods Running")
        figures["create_s"] = round(time.monotonic() - started_all, 1)
        time.sleep(args.rest)  # the writers' CPU and the apiserver's watch fan-out settle before anything is timed
        print(f"  lab written in {figures['create_s']:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        runs: dict[str, list[float]] = {}
        cpu_runs: dict[str, list[float]] = {}
        outputs: dict[str, str] = {}
        sources = [("this", None)] + [(f"baseline {path.name}", path) for path in args.baseline]
        commands = {"board": ("admin", "board", "--once"), "report": ("admin", "report", "--since", "7d")}
        for round_ in range(args.repeat):
            for view, command in commands.items():
                for label, source in sources:
                    load = os.getloadavg()[0]
                    seconds, cpu_seconds, out = labctl_run(lab.cluster.kubeconfig, source, *command)
                    runs.setdefault(f"{view} {label}", []).append(round(seconds, 2))
                    cpu_runs.setdefault(f"{view} {label}", []).append(round(cpu_seconds, 2))
                    outputs[f"{view} {label}"] = out
                    print(f"  round {round_ + 1}: labctl {' '.join(command)} ({label}) {seconds:.2f} s "
                          f"(labctl's CPU {cpu_seconds:.2f} s) at load {load:.1f}", flush=True)
        for (label, _), view in itertools.product(sources[1:], commands if args.repeat else ()):
            ours, theirs = _comparable(outputs[f"{view} this"]), _comparable(outputs[f"{view} {label}"])
            apart = [(a, b) for a, b in zip(ours, theirs, strict=False) if not _same_line(a, b)]
            same = len(ours) == len(theirs) and not apart
            figures[f"{view} same as {label}"] = same
            print(f"  {view}: {'the same' if same else 'NOT the same'} output as {label}'s (figures within the 0.02 "
                  f"that the seconds between two runs move them; {len(ours)} and {len(theirs)} lines)", flush=True)
            for a, b in apart[:6]:  # a minute's boundary between two runs moves a duration
                print(f"    this: {a}\n    {label}: {b}", flush=True)
        figures["runs_s"], figures["labctl_cpu_s"] = runs, cpu_runs
        figures["load_average"] = [round(x, 1) for x in os.getloadavg()]
        if args.hold:
            print(f"  the lab stays up {args.hold:.0f} s: --kubeconfig {lab.cluster.kubeconfig}", flush=True)
            time.sleep(args.hold)
    shutil.rmtree(lab.workdir, ignore_errors=True)  # its etcd holds the 10 000 workspaces: about 200 MB
    figures["total_s"] = round(time.monotonic() - started_all, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale-views.json").write_text(json.dumps(figures, indent=2))
    median = {k: statistics.median(v) for k, v in runs.items()}
    print("\n".join(f"{k}: median {v:.2f} s" + (" (target <= 2 s)" if k.startswith("board") else "")
                     + f", labctl's CPU median {statistics.median(cpu_runs[k]):.2f} s" for k, v in median.items())
          + f"; load average {figures['load_average']}, total {figures['total_s'] / 60:.1f} min", flush=True)
    return 0


def _same_line(ours: str, theirs: str) -> bool:
    """The same words, figures within 0.02 of each other: the live meters move between two runs seconds apart."""
    a, b = ours.split(), theirs.split()
    return len(a) == len(b) and all(x == y or _close(x, y) for x, y in zip(a, b, strict=True))


def _close(x: str, y: str) -> bool:
    try:
        return abs(float(x.rstrip("%")) - float(y.rstrip("%"))) <= 0.02
    except ValueError:
        return False


def _comparable(output: str) -> list[str]:
    """A view's lines without the clock in them (the board's header, the report's window)."""
    return [re.sub(r"\d\d:\d\d(:\d\d)?|\d{4}-\d\d-\d\dT[\d:]+Z", "T", line) for line in output.splitlines()]


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
    parser.add_argument("--still", type=float, default=45.0,
                        help="seconds without a Workspace status change before the quiet window opens; longer than "
                             "the operator's lab-wide admission sweep (30 s), which takes a preemption wave further")
    parser.add_argument("--still-cap", type=float, default=600.0,
                        help="the most seconds to wait for that; the window then opens anyway and says so")
    parser.add_argument("--settle", type=float, default=900.0,
                        help="seconds the GPU workspaces get to be Running or in the queue before the figures are taken")
    parser.add_argument("--only", choices=("views",),
                        help="views: time labctl admin board and report alone, on the lab written straight into the API")
    parser.add_argument("--repeat", type=int, default=3, help="--only views: runs of each view")
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="--only views: another checkout (its operator/ folder's parent) whose labctl is timed "
                             "beside this one's; repeatable")
    parser.add_argument("--threads", type=int, default=16, help="--only views: parallel writers")
    parser.add_argument("--rest", type=float, default=30.0, help="--only views: seconds between writing and timing")
    parser.add_argument("--hold", type=float, default=0.0, help="--only views: seconds the lab stays up afterwards")
    args = parser.parse_args()
    if args.only == "views":
        return views_only(args)
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
        user_watcher = UserWatcher(lab).start()
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
        profile_of: dict[tuple[str, str], str] = {}
        for j in range(args.gpu):
            share, profile = (j * 0.618034) % 1.0, "full"
            for name, weight in PROFILES:
                if share < weight:
                    profile = name
                    break
                share -= weight
            gpu.append(workspace(f"g{j}", names[(j * 13) % len(names)], profile=profile, cpu="10m", memory="16Mi"))
            profile_of[(gpu[-1]["metadata"]["namespace"], f"g{j}")] = profile
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
        counters = operator_writes(port)
        views = {k: v - views_before.get(k, 0) for k, v in counters.items() if k.startswith("labkeeper_admission_")}
        figures["admission_views_gpu_phase"] = views
        calls = {k.split("{", 1)[1].rstrip("}").replace('"', ""): v - views_before.get(k, 0)
                 for k, v in counters.items() if k.startswith("labkeeper_operator_api_")}
        figures["api_calls_gpu_phase"] = dict(sorted(calls.items(), key=lambda kv: -kv[1]))
        print(f"  the operator's API calls in the GPU phase: {sum(calls.values()):.0f}, most "
              f"{dict(list(figures['api_calls_gpu_phase'].items())[:12])}", flush=True)
        # as the operator reads it: its users from its watch, not listed
        watched = {u["metadata"]["name"]: u for u in kube.list("GPUUser")}
        reader = Admissions(kube, SimpleNamespace(current=load_policy(yaml.safe_dump(policy))), watched)  # type: ignore[arg-type]
        read_started = time.monotonic()
        reader.read(dt.datetime.now(dt.UTC))
        figures["one_lab_read_s"] = round(time.monotonic() - read_started, 2)
        print(f"  admission's views of the whole lab in the GPU phase: {views}; one read of the lab (every node, pod "
              f"but a CPU workspace's, live workspace; users from the watch) takes {figures['one_lab_read_s']} s", flush=True)
        gpu_seconds = time.monotonic() - began
        admitted = [watcher.running[k] - applied[k] for k in applied if k in watcher.running]
        # admitted on a device free when it came, never shown waiting: the operator's own latency (the rest also
        # waited for a device to come free)
        # a tier that preempts starts once the scheduler has ended its victim, after the victim's grace period
        preempting = {f"lab-{u['metadata']['name']}" for u in users
                      if policy["tiers"][u["spec"]["tier"]].get("preempt")}
        at_once = [watcher.running[k] - applied[k] for k in applied if k in watcher.running
                   and not watcher.waiting.get(k, math.inf) < watcher.running[k] and k[0] not in preempting]
        by_preemption = [watcher.running[k] - applied[k] for k in applied if k in watcher.running
                         and k[0] in preempting]
        queued = [watcher.waiting[k] - applied[k] for k in applied if k in watcher.waiting and k not in watcher.running]
        figures.update({
            "gpu_apply_s": round(gpu_seconds, 1),
            "admitted": len(admitted), "queued": len(queued),
            "apply_to_running_p50_s": round(statistics.median(admitted), 2) if admitted else None,
            "apply_to_running_p99_s": round(percentile(admitted, 0.99), 2) if admitted else None,
            "admitted_at_once": len(at_once),
            "at_once_apply_to_running_p50_s": round(statistics.median(at_once), 2) if at_once else None,
            "at_once_apply_to_running_p99_s": round(percentile(at_once, 0.99), 2) if at_once else None,
            "preempting_admitted": len(by_preemption),
            "preempting_apply_to_running_p50_s": round(statistics.median(by_preemption), 2) if by_preemption else None,
            "preempting_apply_to_running_max_s": round(max(by_preemption), 2) if by_preemption else None,
            "apply_to_queue_place_p50_s": round(statistics.median(queued), 2) if queued else None,
            "apply_to_queue_place_p99_s": round(percentile(queued, 0.99), 2) if queued else None,
        })
        print(f"  {args.gpu} GPU workspaces at {args.rate:g}/s: {len(admitted)} Running, {len(queued)} waiting, "
              f"in {gpu_seconds:.0f} s; apply -> Running p50/p99 {figures['apply_to_running_p50_s']} / "
              f"{figures['apply_to_running_p99_s']} s ({len(at_once)} admitted without waiting or preempting: "
              f"{figures['at_once_apply_to_running_p50_s']} / {figures['at_once_apply_to_running_p99_s']} s; "
              f"{len(by_preemption)} of a tier that preempts, p50 / max: "
              f"{figures['preempting_apply_to_running_p50_s']} / {figures['preempting_apply_to_running_max_s']} s, "
              f"a victim's grace {policy.get('terminationGracePeriod', '60s')}); "
              f"apply -> queue place p50/p99 "
              f"{figures['apply_to_queue_place_p50_s']} / {figures['apply_to_queue_place_p99_s']} s", flush=True)

        # quiet: nothing changes. The operator first finishes what the GPU phase left it (preemptions, queue places
        # that move with them): the window opens once no Workspace status has changed for --still seconds
        began_still = time.monotonic()
        while time.monotonic() - watcher.last_change < args.still and time.monotonic() - began_still < args.still_cap:
            time.sleep(1)
        figures["statuses_still_after_s"] = round(time.monotonic() - began_still, 1)
        figures["statuses_still"] = time.monotonic() - watcher.last_change >= args.still
        print(f"  Workspace statuses {'unchanged' if figures['statuses_still'] else 'STILL CHANGING'} for "
              f"{args.still:.0f} s, {figures['statuses_still_after_s']:.0f} s after the GPU phase", flush=True)
        before = operator_writes(port)
        for each in (watcher, user_watcher):
            each.changed.clear()
            each.examples.clear()
        time.sleep(args.quiet)
        after = operator_writes(port)
        figures["quiet_changed_status_fields"] = dict(watcher.changed.most_common())
        figures["quiet_change_examples"] = dict(watcher.examples)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        quiet = sum(v for k, v in delta.items() if k.startswith("labkeeper_operator_api_writes") and 'kind="Lease"' not in k)
        rss, peak = memory_mib(lab.operator.proc.pid)
        figures.update({
            "quiet_writes_per_min": round(quiet * 60 / args.quiet, 1),
            "quiet_writes_by_kind": delta,
            "operator_rss_mib": round(rss, 1), "operator_peak_rss_mib": round(peak, 1),
            "operator_rss_before_gpu_mib": round(rss_before_gpu, 1),
        })
        print(f"  quiet {args.quiet:.0f} s: {figures['quiet_writes_per_min']} operator writes/min (Lease apart) "
              f"{delta}; operator RSS {rss:.0f} MiB (peak {peak:.0f} MiB); Workspace status fields that changed "
              f"{figures['quiet_changed_status_fields']}", flush=True)
        for field, seen in watcher.examples.items():
            print(f"    {field}: {'; '.join(seen)}", flush=True)
        figures["quiet_changed_user_fields"] = dict(user_watcher.changed.most_common())
        print(f"  GPUUser fields that changed in it {figures['quiet_changed_user_fields']}", flush=True)
        for field, seen in user_watcher.examples.items():
            print(f"    GPUUser {field}: {'; '.join(seen)}", flush=True)

        # bulk free: devices come free at once, the queue takes them. Counted as devices in use again, kind by
        # kind (a GPU workspace Running holds one): a preemption under way meanwhile moves a device from its victim
        # to its preemptor and counts nothing, and the victim, waiting again, takes a freed device as any waiter
        running_gpu = [k for k in applied if watcher.phase.get(k) == "Running"][:args.free]
        waiting_kinds = Counter(profile_of[k] for k in applied if watcher.phase.get(k) != "Running"
                                and (watcher.status.get(k) or {}).get("waitingSince"))

        def in_use() -> Counter:
            return Counter(profile_of[k] for k in applied if watcher.phase.get(k) == "Running")

        used_before = in_use()
        freed_kinds = Counter(profile_of[k] for k in running_gpu)
        # of each kind freed, as many as wait for it can be taken
        takeable = {kind: min(n, waiting_kinds[kind]) for kind, n in freed_kinds.items()}
        floor = {kind: used_before[kind] - n for kind, n in freed_kinds.items()}
        retaken = lambda: sum(max(0, in_use()[kind] - floor[kind]) for kind in freed_kinds)  # noqa: E731
        freed_at = time.monotonic()
        for namespace, name in running_gpu:
            kube.delete("Workspace", name, namespace)
        target = sum(takeable.values())
        done_at = math.nan
        try:
            wait_for(lambda: all(in_use()[kind] >= floor[kind] + n for kind, n in takeable.items()), timeout=1200,
                     interval=0.5, what=lambda: f"{target} freed devices in use again ({retaken()})")
            done_at = time.monotonic()
        except AssertionError as err:
            print(f"  {err}", flush=True)
        elapsed = done_at - freed_at
        figures.update({
            "freed": len(running_gpu), "takeable": target, "retaken": retaken(),
            "admission_after_free_s": round(elapsed, 1),
            "admissions_per_s": round(target / elapsed, 2) if not math.isnan(elapsed) else None,
        })
        print(f"  {len(running_gpu)} devices freed at once ({target} of kinds someone waits for): all in use again "
              f"in {elapsed:.1f} s = {figures['admissions_per_s']} admissions/s", flush=True)

        figures["board_once_s"] = round(labctl(lab.cluster.kubeconfig, "admin", "board", "--once"), 2)
        figures["report_s"] = round(labctl(lab.cluster.kubeconfig, "admin", "report", "--since", "7d"), 2)
        print(f"  labctl admin board --once {figures['board_once_s']} s; labctl admin report --since 7d "
              f"{figures['report_s']} s", flush=True)
        figures["operator_peak_rss_mib"] = round(memory_mib(lab.operator.proc.pid)[1], 1)
    figures["total_s"] = round(time.monotonic() - started_all, 1)
    figures["load_average"] = [round(x, 1) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(figures, indent=2))
    print(f"apply -> Running p99 {figures['apply_to_running_p99_s']} s, of those admitted without waiting or preempting "
          f"{figures['at_once_apply_to_running_p99_s']} s (target <= 5 s); operator peak RSS "
          f"{figures['operator_peak_rss_mib']} MiB (target <= 1024); quiet writes {figures['quiet_writes_per_min']}/min "
          f"(target 0); board {figures['board_once_s']} s (target <= 2 s); report {figures['report_s']} s; "
          f"total {figures['total_s'] / 60:.1f} min, load average {figures['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
