"""`labkeeper agent --node NAME --host-root PATH --data-root PATH [--kubeconfig FILE] [--sampler nvml|file:PATH|none]`.

Plain watch streams, not kopf: every pass reconciles the whole host at once (profile.d, ACLs and the
skeleton depend on all users, caches and stores together, and 100 users take ~0.1 s), so each watch
only refreshes a cache and marks the host dirty; one worker coalesces the events into passes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY, Gauge, start_http_server

from labkeeper.agent import cleanup, desired, disk, toolchains
from labkeeper.agent.activity import (
    ActivityMetrics,
    ActivityMonitor,
    HostReader,
    SamplerUnavailable,
    sampler_from_arg,
)
from labkeeper.agent.activity_loop import ActivityLoop, thresholds_of
from labkeeper.agent.notices import HomeNotices
from labkeeper.agent.recovery import Host, HostResult, reconcile_host
from labkeeper.api.kinds import GROUP, VERSION
from labkeeper.api.names import KUBECONFIG_SECRET_PREFIX, SYSTEM_NAMESPACE
from labkeeper.api.policy import LAST_GOOD_CONFIGMAP, POLICY_CONFIGMAP, POLICY_KEY, LabPolicy, PolicyKeeper
from labkeeper.api.resources import (
    GPUUser,
    GPUUserStatus,
    LastCleanup,
    ModelStore,
    Resource,
    SharedCache,
    TreeNodeState,
    TreeStatus,
    read_object,
    wire,
)
from labkeeper.kube.client import Kube, api_error_message, is_conflict

log = logging.getLogger("labkeeper.agent")
DISK_RATIO = Gauge("labkeeper_disk_used_ratio", "used fraction of the data filesystem or of a tree's limit",
                   ["node", "scope", "name"])


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Watched:
    """One resource's objects by name, kept current by a list+watch loop in a daemon thread. With a `model`, each
    object is parsed into it as it arrives; one the model refuses is kept as api.resources.read_object's stand-in,
    whose `refused` says why."""

    def __init__(self, list_call: Callable, args: tuple, dirty: threading.Event, selector: str | None = None,
                 model: type[Resource] | None = None) -> None:
        self.list_call, self.args, self.dirty, self.model = list_call, args, dirty, model
        self.kwargs = {"label_selector": selector} if selector else {}
        self.objects: dict[str, Any] = {}
        self.synced = threading.Event()
        self.lock = threading.Lock()

    def _keep(self, body: dict) -> None:
        name = body["metadata"]["name"]
        self.objects[name] = body if self.model is None else read_object(self.model, body)[0]

    def _forget(self, name: str) -> None:
        self.objects.pop(name, None)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                listing = self.list_call(*self.args, _preload_content=False, **self.kwargs)

                body = json.loads(listing.data)
                with self.lock:
                    self.objects = {}
                    for item in body.get("items", []):
                        self._keep(item)
                self.synced.set()
                self.dirty.set()
                stream = watch.Watch()
                for event in stream.stream(self.list_call, *self.args, **self.kwargs,
                                           resource_version=body["metadata"]["resourceVersion"], timeout_seconds=300):
                    obj = event["raw_object"]
                    with self.lock:
                        if event["type"] == "DELETED":
                            self._forget(obj["metadata"]["name"])
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._keep(obj)
                    self.dirty.set()
                    if stop.is_set():
                        return
            except Exception as err:  # a broken stream is relisted, never fatal
                log.warning("watch %s: %s; relisting", self.args, err)
                time.sleep(1)

    def items(self) -> list[Any]:
        with self.lock:
            return list(self.objects.values())



class Agent:
    def __init__(self, kube: Kube, host: Host, node: str, system_namespace: str, *,
                 selector: str | None = None, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.kube, self.host, self.node, self.ns, self.clock = kube, host, node, system_namespace, clock
        self.dirty = threading.Event()
        self.stop = threading.Event()
        self.scanner = disk.DiskScanner(host.data_fd)
        custom = k8s.CustomObjectsApi(kube.api)
        core = k8s.CoreV1Api(kube.api)
        self.users = Watched(custom.list_cluster_custom_object, (GROUP, VERSION, "gpuusers"), self.dirty,
                             selector, GPUUser)
        self.caches = Watched(custom.list_cluster_custom_object, (GROUP, VERSION, "sharedcaches"), self.dirty,
                             selector, SharedCache)
        self.stores = Watched(custom.list_cluster_custom_object, (GROUP, VERSION, "modelstores"), self.dirty,
                             selector, ModelStore)
        self.secrets = Watched(core.list_namespaced_secret, (system_namespace,), self.dirty)
        self.configmaps = Watched(core.list_namespaced_config_map, (system_namespace,), self.dirty)
        self.last_events: dict[tuple[str, str], str] = {}
        self.last_result: HostResult | None = None
        self.cleanups: dict[str, LastCleanup] = {}  # SharedCache → this node's last cleanup, until the watch shows it
        self.policy_keeper = PolicyKeeper(component=f"the agent on {node}")
        self._policy_version: str | None = None  # the ConfigMap's resourceVersion last offered to the keeper
        self._policy_lock = threading.Lock()
        self.activity: ActivityLoop | None = None

    def watch_activity(self, monitor: ActivityMonitor) -> None:
        """Sample the workspaces running on this node once the policy has been read; warnings and
        limit stops also become a notice in the owner's home (from the GPUUser watch: no extra reads)."""
        notices = HomeNotices(self.host.data_fd, self.node, self.users.items, self.clock)
        self.activity = ActivityLoop(self.kube, self.node, monitor, self.policy, self.clock, notices=notices)

    # ---- inputs -------------------------------------------------------------------------------
    def policy(self) -> LabPolicy:
        """The policy in force by `PolicyKeeper`'s rule, the operator's too: a refused ConfigMap leaves the last
        good policy in force and says so once on the ConfigMap; the next valid one is taken at the next read."""
        body = self.configmaps.objects.get(POLICY_CONFIGMAP)
        version = (body or {}).get("metadata", {}).get("resourceVersion")
        if body is None or version == self._policy_version:
            return self.policy_keeper.current
        # one reader at a time: the activity thread must not see the version taken while the host pass still
        # gets the policy from before it (a first pass on the built-in defaults made lab-users with gid 2000)
        with self._policy_lock:
            if version == self._policy_version:
                return self.policy_keeper.current
            outcome = self.policy_keeper.offer((body.get("data") or {}).get(POLICY_KEY),
                                               f"ConfigMap {self.ns}/{POLICY_CONFIGMAP} key {POLICY_KEY}")
            if self.policy_keeper.paused:  # started on a refused ConfigMap: the operator's last good copy
                copy = self.configmaps.objects.get(LAST_GOOD_CONFIGMAP) or {}
                recovered = self.policy_keeper.recover((copy.get("data") or {}).get(POLICY_KEY),
                                                       f"ConfigMap {self.ns}/{LAST_GOOD_CONFIGMAP}")
                outcome = recovered if recovered.reason else outcome
            self._policy_version = version
            if outcome.reason:
                (log.warning if outcome.warning else log.info)("%s", outcome.message)
                # the keeper says each text once; _event's own memory would hide a refusal repeated later
                self.kube.event({"kind": "ConfigMap", "apiVersion": "v1", **body}, outcome.reason,
                                f"{self.node}: {outcome.message}", type_="Warning" if outcome.warning else "Normal",
                                component="labkeeper-agent")
        return self.policy_keeper.current

    def lab_gid(self) -> int:
        return self.policy().lab_users_gid

    def kubeconfigs(self) -> dict[str, bytes]:
        out = {}
        for name, secret in list(self.secrets.objects.items()):
            if name.startswith(KUBECONFIG_SECRET_PREFIX):
                config = desired.kubeconfig_from_secret(secret)
                if config:
                    out[name.removeprefix(KUBECONFIG_SECRET_PREFIX)] = config
        return out

    # ---- one pass -----------------------------------------------------------------------------
    def reconcile(self) -> HostResult | None:
        """One host pass; none while no good policy has been read (the ConfigMap is refused and the operator
        kept no last good copy): the built-in defaults are not the lab's policy, and applied to the host they
        would rewrite every group and ACL. The refusal is said on the ConfigMap; the next valid text resumes."""
        self.policy()  # the ConfigMap's newest text is offered first
        if self.policy_keeper.paused:
            log.warning("host pass skipped: %s", self.policy_keeper.refused)
            return None
        users, caches, stores = self.users.items(), self.caches.items(), self.stores.items()
        want = desired.desired_state(users, caches, stores, self.kubeconfigs(), self.lab_gid())
        want.lab = dataclasses.replace(want.lab, toolchains=toolchains.from_policy(self.policy().toolchains))
        started = time.monotonic()
        now = self.clock()
        result = reconcile_host(self.host, want.lab, want.departures, now.date(), now)
        self.last_result = result
        if result.report.done or result.report.failed:
            log.info("pass in %.3fs: did %s; failed %s", time.monotonic() - started, result.report.done,
                     result.report.failed)
        self.scanner.set_targets([f"users/{u.name}" for u in want.lab.users] + [t.path for t in want.lab.trees])
        for user in users:
            self._user_status(user, want, result)
        self._toolchain_events(result)
        fs = disk.filesystem_usage(self.host.data_fd)
        DISK_RATIO.labels(self.node, "filesystem", "data").set(fs.ratio)
        for kind, objs in (("SharedCache", caches), ("ModelStore", stores)):
            for obj in objs:
                self._tree_status(kind, obj, want, result, fs)
        return result

    def _user_status(self, user: GPUUser, want: desired.Desired, result: HostResult) -> None:
        home_bytes = self.scanner.get(f"users/{user.name}")
        for action in desired.user_actions(user, self.node, want, result, home_bytes, self.clock()):
            if isinstance(action, desired.PostEvent):
                self._event(user, action.reason, action.message, warning=action.warning)
            elif isinstance(action, desired.SetFinalizers):
                self._patch(user, {"metadata": {"finalizers": list(action.finalizers),
                                                "resourceVersion": user.metadata["resourceVersion"]}})
            else:
                self._patch(user, {"metadata": {"resourceVersion": user.metadata["resourceVersion"]},
                                   "status": wire(GPUUserStatus(nodes=list(action.nodes)))}, status=True)

    def _tree_status(self, kind: str, obj: SharedCache | ModelStore, want: desired.Desired, result: HostResult,
                     fs: disk.FilesystemUsage) -> None:
        name, status = obj.name, obj.status or TreeStatus()
        subject = f"{'cache' if kind == 'SharedCache' else 'models'}/{name}"
        problems = [want.invalid.get(f"{kind}/{name}"), *result.report.problems.get(subject, [])]
        problems = [p for p in problems if p]
        mine = next((n for n in status.nodes if n.node == self.node), None) or TreeNodeState(node=self.node)
        size = desired.tree_disk(obj, mine, self.scanner.get(obj.spec.path), fs)
        if size.limit and size.size is not None:
            DISK_RATIO.labels(self.node, kind, name).set(size.size / size.limit)
        if size.alert != "OK":
            self._event(obj, "DiskAlert", f"{self.node}: {kind} {name}: {size.level} of its limit, data "
                                          f"filesystem {fs.ratio:.0%} full", warning=True)
        last_cleanup = None
        # a tree left out (its path is another's, or unsafe) is never cleaned: the directory is not its own
        if isinstance(obj, SharedCache) and f"{kind}/{name}" not in want.invalid:
            last_cleanup = desired.latest_cleanup(mine.last_cleanup, self.cleanups.get(name))
            due = desired.cleanup_due(obj, last_cleanup, self.clock())
            if due is not None:
                last_cleanup = self.cleanups[name] = self._clean(obj, due, self.clock())
        entry = desired.tree_node_entry(self.node, problems, result.tree_paths.get(subject, obj.spec.path),
                                        size.size, size.alert, size.message(fs), last_cleanup)
        self._write_tree_status(kind, obj, entry)

    def _write_tree_status(self, kind: str, obj: SharedCache | ModelStore, entry: TreeNodeState) -> None:
        """Every agent writes the same top-level fields, so each write replaces only this node's entry, derives the
        top level from all entries, and holds the resourceVersion it read; on a conflict it reads again."""
        for _ in range(5):
            meta = obj.metadata
            status = desired.tree_status(obj.status, self.node, entry, meta.get("generation"), self.clock())
            if status is None:
                return
            try:
                self.kube.patch(kind, obj.name, {"metadata": {"resourceVersion": meta["resourceVersion"]},
                                                 "status": wire(status)}, subresource="status")
                return
            except ApiException as err:
                if err.status == 404:
                    return
                if not is_conflict(err):
                    log.warning("status of %s %s: %s", kind, obj.name, api_error_message(err))
                    return
            try:
                fresh = self.kube.get(kind, obj.name)
            except ApiException as err:
                log.warning("status of %s %s: %s", kind, obj.name, api_error_message(err))
                break
            if fresh is None:
                return
            obj, _ = read_object(desired.TREE_MODELS[kind], fresh)
        self.dirty.set()  # still conflicting or unreadable: the next pass tries again

    def _clean(self, cache: SharedCache, due: desired.Cleaning, now: dt.datetime) -> LastCleanup:
        stamp = now.replace(microsecond=0)
        try:
            freed = cleanup.clean(self.host.data_fd, cache.spec.path, now, due.max_age, due.max_size)
        except OSError as err:
            return LastCleanup(time=stamp, freed_bytes=0, removed_files=0, reason=f"failed: {err}",
                               request=due.request)
        self._event(cache, "CacheCleaned", f"{self.node}: freed {freed.bytes} bytes in {freed.files} files: "
                                           f"{freed.reason}")
        return LastCleanup(time=stamp, freed_bytes=freed.bytes, removed_files=freed.files, reason=freed.reason,
                           request=due.request)

    def _toolchain_events(self, result: HostResult) -> None:
        """Toolchains are policy, not objects with a status: what happened to them is an Event on the policy
        ConfigMap (`kubectl describe configmap -n labkeeper-system labkeeper-policy`)."""
        policy_cm = self.configmaps.objects.get(POLICY_CONFIGMAP)
        if policy_cm is None:
            return
        obj = {"kind": "ConfigMap", "apiVersion": "v1", **policy_cm}
        installed = [line for line in result.report.done if line.startswith("toolchain ")]
        if installed:
            self._event(obj, "ToolchainInstalled", f"{self.node}: " + "; ".join(installed))
        failed = [p for subject, problems in sorted(result.report.problems.items())
                  if subject.startswith("toolchain") for p in problems]
        if failed:
            self._event(obj, "ToolchainFailed", f"{self.node}: " + "; ".join(failed), warning=True)

    # ---- writes -------------------------------------------------------------------------------
    def _patch(self, obj: Resource, body: dict, *, status: bool = False) -> None:
        try:
            self.kube.patch(obj.kind, obj.name, body, subresource="status" if status else None)
        except ApiException as err:
            if is_conflict(err):
                self.dirty.set()  # someone wrote first; the next pass sees their version
            elif err.status != 404:
                log.warning("patch %s %s: %s", obj.kind, obj.name, api_error_message(err))

    def _event(self, obj: Resource | dict, reason: str, message: str, *, warning: bool = False) -> None:
        obj = obj.reference() if isinstance(obj, Resource) else obj
        key = (f"{obj['kind']}/{obj['metadata']['name']}", reason.split("/")[0])
        if self.last_events.get(key) == message:
            return
        self.last_events[key] = message
        self.kube.event(obj, reason, message, type_="Warning" if warning else "Normal", component="labkeeper-agent")

    # ---- loop ---------------------------------------------------------------------------------
    def run(self, resync: float = 60.0) -> None:
        for watched in (self.users, self.caches, self.stores, self.secrets, self.configmaps):
            threading.Thread(target=watched.run, args=(self.stop,), daemon=True).start()
        for watched in (self.users, self.caches, self.stores, self.secrets, self.configmaps):
            watched.synced.wait()  # recovery: nothing is done before the whole API has been read once
        self.scanner.start()
        if self.activity:
            threading.Thread(target=self.activity.run, args=(self.stop,), daemon=True, name="activity").start()
        while not self.stop.is_set():
            self.dirty.wait(resync)
            self.dirty.clear()
            time.sleep(0.05)  # coalesce a burst of events into one pass
            try:
                self.reconcile()
            except Exception:
                log.exception("pass failed; retrying")
                self.dirty.wait(2)
                self.dirty.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkeeper agent", description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument("--host-root", type=Path, default=Path("/"))
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--host-data-root", help="the data root's path as users see it (default: derived)")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--system-namespace", default=SYSTEM_NAMESPACE)
    parser.add_argument("--resync", type=float, default=60.0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--selector", help="label selector: only GPUUsers, caches and stores that match (tests, staged rollouts)")
    parser.add_argument("--sampler", default="none",
                        help="where GPU activity comes from: nvml, file:PATH (docs/activity-file.md) or none "
                             "(no GPUs: CPU and network only)")
    parser.add_argument("--proc-root", type=Path, default=Path("/proc"), help="the host's /proc (needs hostPID)")
    parser.add_argument("--cgroup-root", type=Path, default=Path("/sys/fs/cgroup"), help="the host's cgroup mounts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        sampler = sampler_from_arg(args.sampler)
    except (ValueError, SamplerUnavailable) as err:
        parser.error(str(err))
    log.info("activity: GPU sampler %s%s; cgroups under %s, /proc at %s", args.sampler,
             " (CPU and network only)" if args.sampler == "none" else "", args.cgroup_root, args.proc_root)
    kube = Kube.from_kubeconfig(args.kubeconfig)
    host = Host(args.host_root, args.data_root, args.host_data_root)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    agent = Agent(kube, host, args.node, args.system_namespace, selector=args.selector)
    if args.metrics_port:
        REGISTRY.register(agent.policy_keeper)
    agent.watch_activity(ActivityMonitor(sampler, thresholds_of(LabPolicy()), agent.clock,
                                         host=HostReader(args.proc_root, args.cgroup_root),
                                         metrics=ActivityMetrics() if args.metrics_port else None))
    with contextlib.suppress(KeyboardInterrupt):
        agent.run(args.resync)
    return 0
