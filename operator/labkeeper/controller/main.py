"""`labkeeper operator`: kopf watches, thin handlers, level-based reconcilers with a per-object requeue."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import http.server
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from labkeeper.api import admission as api_admission
from labkeeper.api.conditions import READY, find
from labkeeper.api.kinds import GPUUSER, GROUP, VERSION, WORKSPACE
from labkeeper.api.names import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_WORKSPACE,
    MANAGED_BY,
    SYSTEM_NAMESPACE,
    namespace_for,
    username_of,
)
from labkeeper.api.phases import RUNNING_PHASES, WAITING_PHASES, WorkspacePhase
from labkeeper.controller.accounting import Accountant, first_fold_after, next_fold_due
from labkeeper.controller.credentials import ClusterEndpoint, Credentials
from labkeeper.controller.executor import URGENT, UrgentFirstExecutor
from labkeeper.controller.leader import LeaderLease
from labkeeper.controller.liveness import DEFAULT_SETTLE, NODE_LEASE_NAMESPACE, KubeletLiveness
from labkeeper.controller.nodes import NodePruner
from labkeeper.controller.policy import POLICY_CONFIGMAP, PolicyStore
from labkeeper.controller.uids import UidLedger, UidRange
from labkeeper.controller.usage import HoldSightings, UsageWriter
from labkeeper.controller.user_decisions import pass_input
from labkeeper.controller.users import UserReconciler
from labkeeper.controller.workspaces import Outcome, WorkspaceReconciler, clear_stale_handovers, lags
from labkeeper.kube.client import Kube

log = logging.getLogger("labkeeper.operator")
T = TypeVar("T")



def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class ScaledClock:
    """An accelerated clock for replays (bench/labweek.py): `origin` at wall-clock `anchor` (epoch seconds), then
    `scale` seconds for every wall-clock second. Every process that shares the three values reads the same time
    (the operator, and the bench that plays the agent and the users), and the operator waits 1/scale of each
    delay it decides, so a 30-minute idle timeout is still 30 minutes of this clock."""

    origin: dt.datetime
    anchor: float
    scale: float

    def __call__(self) -> dt.datetime:
        return self.origin + dt.timedelta(seconds=(time.time() - self.anchor) * self.scale)

    def wall(self, seconds: float) -> float:
        """A delay of this clock in wall-clock seconds, never under 20 ms (a retry must not spin)."""
        return max(0.02, seconds / self.scale) if seconds > 0 else 0.0

    @classmethod
    def parse(cls, text: str) -> ScaledClock:
        """`SCALE@ORIGIN@ANCHOR`, e.g. `336@2026-11-02T00:00:00Z@1765062000.5`."""
        scale, origin, anchor = text.split("@")
        return cls(dt.datetime.fromisoformat(origin.replace("Z", "+00:00")), float(anchor), float(scale))


def log_failure(err: Exception, message: str, *args: object) -> None:
    """An API hiccup (a restarting apiserver, a conflict) is a retried warning; anything else keeps its traceback."""
    stopping = isinstance(err, RuntimeError) and "shutdown" in str(err)
    if stopping or isinstance(err, (ApiException, urllib3.exceptions.HTTPError, OSError)):
        log.warning(message + " (retrying)", *args)
    else:
        log.exception(message, *args)


RETRY_FIRST = 0.5  # seconds before the first retry of a failed pass; doubled with each failure in a row
RETRY_CAP = 30.0  # ... up to this
PASS_THREADS = 16  # passes (and other blocking API calls) in flight at once
# while anyone waits for a device, admission decides for the whole lab at least this often (seconds of the
# operator's clock): a device that came free where no watch of the lab's sees it (a pod of someone else's) is found
SWEEP_EVERY = 30.0
SWEEP = ("Admission", "lab")
# a waiter whose queue place moved gets its pass within this (seconds of the operator's clock): the places a burst of
# arrivals moves fold into one pass each, and the arrivals' own passes go first
MOVED_WITHIN = 1.0


class Requeue:
    """One pending re-check per object, like controller-runtime's RequeueAfter; a failed pass is retried after a
    delay that doubles with each failure in a row, up to RETRY_CAP (its rate limiter's exponential backoff).
    Its tables hold only what is pending: a timer that fired, a lock nobody holds or waits for, a key whose
    pass succeeded are dropped, so thousands of objects come and go without the tables growing."""

    def __init__(self, wall: Callable[[float], float] = lambda seconds: seconds) -> None:
        self.wall = wall  # a delay of the operator's clock in wall-clock seconds (ScaledClock.wall)
        self._handles: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}  # key → (lock, holders and waiters)
        self._failures: dict[tuple[str, str], int] = {}  # key → failed passes in a row

    @contextlib.asynccontextmanager
    async def lock(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def schedule(self, key: tuple[str, str], delay: float, callback: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        old = self._handles.pop(key, None)
        if old:
            old.cancel()

        def fire() -> None:
            self._handles.pop(key, None)
            callback()

        # an empty context: the current one holds kopf's whole cause and body until the timer fires
        self._handles[key] = loop.call_later(self.wall(delay), fire, context=contextvars.Context())

    def retry(self, key: tuple[str, str], callback: Callable[[], object]) -> float:
        """After a failed pass: `callback` again after the backoff for this many failures in a row."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(RETRY_CAP, RETRY_FIRST * 2.0 ** (failures - 1))
        self.schedule(key, delay, callback)
        return delay

    def pending(self, key: tuple[str, str]) -> bool:
        """Whether a re-check of `key` is scheduled."""
        return key in self._handles

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)

    def cancel(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)
        handle = self._handles.pop(key, None)
        if handle:
            handle.cancel()

    def __len__(self) -> int:
        """Entries held in all tables (for tests and the curious)."""
        return len(self._handles) + len(self._locks) + len(self._failures)

    def cancel_all(self) -> None:
        for key in list(self._handles):
            self.cancel(key)


async def quietly(what: str, func: Callable[..., T], *args: object) -> T | None:
    """Runs a blocking read in a thread; an API hiccup is logged in one line and yields None."""
    try:
        return await asyncio.to_thread(func, *args)
    except Exception as err:
        log_failure(err, "%s failed: %s", what, err)
        return None


class Operator:
    def __init__(self, kube: Kube, system_namespace: str, endpoint: ClusterEndpoint, *,
                 clock: Callable[[], dt.datetime] = utcnow, require_host: bool = True,
                 data_root: str = "/data", kubelet_settle: float = DEFAULT_SETTLE) -> None:
        self.kube = kube
        self.namespace = system_namespace
        self.clock = clock
        self.policy = PolicyStore(kube, system_namespace)
        self.policy.refresh()
        uid_range = UidRange(*self.policy.uid_range())
        self.users = UserReconciler(
            kube, self.policy, UidLedger(kube, system_namespace, uid_range),
            Credentials(kube, system_namespace, endpoint, kube.whoami()), clock, require_host=require_host,
        )
        self.liveness = KubeletLiveness(clock, settle=kubelet_settle)
        self.workspaces = WorkspaceReconciler(kube, self.policy, clock, self.liveness, data_root=data_root)
        self.usage = UsageWriter(kube, self.policy, clock)
        self.accountant = Accountant(kube, self.policy, clock)
        self.nodes = NodePruner(kube, clock)
        self._accounting: dict[str, dt.datetime] = {}  # users with a fold scheduled → when it is due
        self._user_passed: dict[str, str] = {}  # user → what her last successful pass read (user_decisions.pass_input)
        self._usage_queued: set[str] = set()
        self._sweep_queued = False
        self._soon: dict[tuple[str, str], asyncio.TimerHandle] = {}  # Workspaces with a pass due soon
        self.holds_seen = HoldSightings()
        self.requeue = Requeue(clock.wall if isinstance(clock, ScaledClock) else (lambda seconds: seconds))
        # Workspaces with a pass queued but not yet started, with that pass's context: events that arrive meanwhile
        # fold into it (and one that makes it urgent makes it so)
        self._queued: dict[tuple[str, str], contextvars.Context] = {}
        # (namespace, name) of the Workspaces whose status the watch last showed lagging what was asked of them (a
        # new generation not yet observed, no phase yet, a pod on its way): their passes go first (executor.py)
        self.settling: set[tuple[str, str]] = set()
        self._lost_pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._passes: set[asyncio.Task[None]] = set()
        # (namespace, name) of the Workspaces last seen in a waiting phase
        self.waiting: set[tuple[str, str]] = set()
        # those of them in the device queue (status.waitingSince): when one leaves it, the rest move up
        self.queued_for_device: set[tuple[str, str]] = set()

    async def prune_gone_nodes(self) -> None:
        """Entries and agent finalizers of nodes that no longer exist go; again soon if the sweep was cut short."""
        pruned = await quietly("pruning what nodes that are gone left behind", self.nodes.sweep)
        if pruned is None or pruned.retry:
            self.requeue.retry(("Node", "*"), lambda: asyncio.ensure_future(self.prune_gone_nodes()))
        else:
            self.requeue.succeeded(("Node", "*"))

    async def reconcile_user(self, name: str, body: dict[str, Any] | None = None) -> None:
        key = ("GPUUser", name)
        async with self.requeue.lock(key):
            try:
                if body is None:
                    body = await asyncio.to_thread(self.kube.get, "GPUUser", name)
                    if body is None:
                        self.users.forget(name)
                        self._user_passed.pop(name, None)
                        return
                passed = pass_input(body)
                outcome = await asyncio.to_thread(self.users.reconcile, body)
            except Exception as err:  # a failed pass is retried; it must never kill the watch
                self._user_passed.pop(name, None)
                log_failure(err, "GPUUser %s: reconcile failed: %s", name, err)
                if body is not None:
                    await asyncio.to_thread(self.users.record_failure, body, err)
                self.requeue.retry(key, lambda: asyncio.ensure_future(self.reconcile_user(name)))
                return
        self._user_passed[name] = passed
        self.requeue.succeeded(key)
        if outcome.requeue_after is not None:
            self.requeue.schedule(key, outcome.requeue_after, lambda: asyncio.ensure_future(self.reconcile_user(name)))
        else:
            self.requeue.cancel(key)

    def user_passed(self, name: str, body: Mapping[str, Any]) -> bool:
        """Whether her last successful pass read all that a pass would read of `body`: an event that changed only
        her usage or accounting (the fold every flushInterval, a usage write on each of her pods' changes) costs
        no pass (her kubeconfig Secret and quota read, her certificate parsed) and no usage pass."""
        return self._user_passed.get(name) == pass_input(body)

    def workspace_changed(self, namespace: str, name: str, lost_pod: dict[str, Any] | None = None) -> None:
        """Queues one pass over the Workspace without waiting for it, so a watch event is let go at once
        instead of waiting with its whole body for the user's lock. The pass of one still settling is urgent."""
        key = (namespace, name)
        if lost_pod is not None:
            self._lost_pods[key] = lost_pod
        urgent = key in self.settling
        if key in self._queued:
            if urgent:
                self._queued[key].run(URGENT.set, True)
            return
        context = self._queued[key] = contextvars.Context()
        if urgent:
            context.run(URGENT.set, True)
        self._spawn(self.reconcile_workspace(namespace, name), context)

    async def reconcile_workspace(self, namespace: str, name: str) -> None:
        key = ("Workspace", f"{namespace}/{name}")
        # one pass at a time per Workspace; the user's lock only for a pass that creates a pod (workspaces.py)
        async with self.requeue.lock(key):
            # from here on an event needs a pass of its own: this one may already have read past it
            self._queued.pop((namespace, name), None)
            lost_pod = self._lost_pods.pop((namespace, name), None)
            outcome = await self._workspace_pass(namespace, name, lost_pod, user_locked=False)
            if outcome is not None and outcome.needs_user_lock:
                async with self.requeue.lock(("user", namespace)):
                    outcome = await self._workspace_pass(namespace, name, lost_pod, user_locked=True)
        if outcome is None:
            return
        self.requeue.succeeded(key)
        if outcome.requeue_after is not None:
            self.requeue.schedule(key, outcome.requeue_after, lambda: self.workspace_changed(namespace, name))
        else:
            self.requeue.cancel(key)
        for namespace_, name_ in outcome.wake:
            self.workspace_changed(namespace_, name_)
        for namespace_, name_ in outcome.moved:
            self.workspace_soon(namespace_, name_)
        if outcome.freed:
            self.device_freed(namespace, name)

    def _spawn(self, pass_: Coroutine[Any, Any, None], context: contextvars.Context | None = None) -> None:
        """Runs a pass as a task of its own, in `context` (an empty one: not the event's, which holds kopf's cause
        and body until the pass ends), kept until done so that stop() can cancel it."""
        task = asyncio.get_running_loop().create_task(pass_, context=context if context is not None else contextvars.Context())
        self._passes.add(task)
        task.add_done_callback(self._passes.discard)

    def workspace_soon(self, namespace: str, name: str) -> None:
        """A pass within MOVED_WITHIN, unless one is queued already (it reads the Workspace afresh) or due sooner."""
        key = (namespace, name)
        if key in self._queued or key in self._soon:
            return

        def fire() -> None:
            self._soon.pop(key, None)
            self.workspace_changed(namespace, name)

        self._soon[key] = asyncio.get_running_loop().call_later(self.requeue.wall(MOVED_WITHIN), fire,
                                                                 context=contextvars.Context())

    async def _workspace_pass(self, namespace: str, name: str, lost_pod: dict[str, Any] | None, *,
                              user_locked: bool) -> Outcome | None:
        """A pass over a fresh read of the Workspace; None when it is gone or the pass failed (retry scheduled)."""
        key = ("Workspace", f"{namespace}/{name}")
        body = None
        try:
            # always a fresh read: a body from an event or a list may predate what the pass that held the lock
            # just wrote (a stale spec.state would restart a stopped workspace)
            body = await asyncio.to_thread(self.kube.get, "Workspace", name, namespace)
            if body is None:
                self.requeue.cancel(key)
                return None
            return await asyncio.to_thread(self.workspaces.reconcile, body, lost_pod=lost_pod,
                                           user_locked=user_locked)
        except Exception as err:  # a failed pass is retried; it must never kill the watch
            log_failure(err, "Workspace %s/%s: reconcile failed: %s", namespace, name, err)
            if body is not None:
                await asyncio.to_thread(self.workspaces.record_failure, body, err)
            self.requeue.retry(key, lambda: self.workspace_changed(namespace, name))
            return None

    def usage_changed(self, namespace: str) -> None:
        """Queues one usage pass for the namespace's user; the pod and user events of a burst fold into it."""
        username = username_of(namespace)
        if username is None:
            return
        if username in self._usage_queued:
            return
        self._usage_queued.add(username)
        self._spawn(self.refresh_usage(username))

    async def refresh_usage(self, username: str) -> None:
        key = ("usage", username)
        async with self.requeue.lock(key):
            self._usage_queued.discard(username)
            try:
                await asyncio.to_thread(self.usage.refresh, username)
            except Exception as err:  # retried; a usage figure must never kill the watch
                log_failure(err, "GPUUser %s: usage failed: %s", username, err)
                self.requeue.retry(key, lambda: self.usage_changed(namespace_for(username)))
                return
            self.requeue.succeeded(key)

    def accounting_due(self, username: str, after: dt.datetime | None = None) -> None:
        """Her next fold, unless one is scheduled already (her own status writes must not push it ever further
        away): her first at her own point in a flush interval (first_fold_after); each next one a flush interval
        after the one before was due (`after`), not after it ended, so that folds held up behind a burst of passes
        do not end together and stay bunched from then on."""
        if username in self._accounting:
            return
        interval = self.policy.current.fair_share.flush_interval
        now = self.clock()
        due = now + dt.timedelta(seconds=first_fold_after(username, interval.total_seconds())) if after is None \
            else next_fold_due(after, interval, now)
        self._accounting[username] = due
        delay = (due - now).total_seconds()
        self.requeue.schedule(("accounting", username), delay,
                              lambda: asyncio.ensure_future(self.fold_accounting(username)))

    async def fold_accounting(self, username: str) -> None:
        try:
            await asyncio.to_thread(self.accountant.flush, username, self.workspaces.watched_users.get(username))
        except Exception as err:  # retried at the next interval; nothing is lost meanwhile
            log_failure(err, "GPUUser %s: accounting failed: %s", username, err)
        due = self._accounting.pop(username, None)
        if username in self.workspaces.watched_users:  # the watch has not shown her deleted
            self.accounting_due(username, after=due)

    def stop(self) -> None:
        """No pass starts once kopf is stopping; it would only fail against a closed executor."""
        self.requeue.cancel_all()
        for handle in self._soon.values():
            handle.cancel()
        self._soon.clear()
        for task in list(self._passes):
            task.cancel()

    def workspace_seen(self, namespace: str, name: str, phase: str | None, queued: bool | None = None, *,
                       settling: bool = False) -> None:
        """`queued`: whether its status says it waits for a device (None: not known from this sighting);
        `settling`: whether its status lags what was asked of it."""
        (self.settling.add if settling else self.settling.discard)((namespace, name))
        if phase in WAITING_PHASES:
            self.waiting.add((namespace, name))
        else:
            self.waiting.discard((namespace, name))
        if queued:
            self.queued_for_device.add((namespace, name))
            if not self.requeue.pending(SWEEP):
                self.requeue.schedule(SWEEP, SWEEP_EVERY, self.admission_due)
        elif (queued is not None or phase is None) and (namespace, name) in self.queued_for_device:
            self.queued_for_device.discard((namespace, name))
            if phase in (WorkspacePhase.STARTING, *RUNNING_PHASES):
                # it got its device: the decision that admitted it counted that device taken and it ahead of nobody,
                # and the pass that made that decision woke everyone whose place it changed
                return
            # it stopped or went away waiting: everyone behind it is one place further up, and the kind of device
            # it blocked may now go to the next in line
            self.workspaces.admissions.changed()
            self.admission_due()

    def device_freed(self, namespace: str, workspace: str) -> None:
        """A deleted pod may free a device, or room under its user's quota: admission decides again for the whole
        lab (and wakes whom that lets start, or moves), and her other waiting Workspaces get a pass."""
        self.workspaces.admissions.changed()
        self.admission_due()
        for namespace_, name in sorted(self.waiting - {(namespace, workspace)}):
            if namespace_ == namespace:
                self.workspace_changed(namespace_, name)

    def admission_due(self) -> None:
        """Queues one admission decision for the whole lab (WorkspaceReconciler.sweep); a burst folds into it."""
        if self._sweep_queued:
            return
        self._sweep_queued = True
        self._spawn(self.sweep_admission())

    async def sweep_admission(self) -> None:
        async with self.requeue.lock(SWEEP):
            self._sweep_queued = False
            try:
                wake, moved = await asyncio.to_thread(self.workspaces.sweep)
            except Exception as err:  # retried; a sweep must never kill the watch
                log_failure(err, "admission for the lab failed: %s", err)
                self.requeue.retry(SWEEP, self.admission_due)
                return
        self.requeue.succeeded(SWEEP)
        if self.queued_for_device:
            self.requeue.schedule(SWEEP, SWEEP_EVERY, self.admission_due)
        else:
            self.requeue.cancel(SWEEP)
        for namespace, name in wake:
            self.workspace_changed(namespace, name)
        for namespace, name in moved:
            self.workspace_soon(namespace, name)

    async def policy_changed(self, body: dict[str, Any]) -> None:
        changed = await quietly("loading the policy", self.policy.load_configmap, body)
        if changed:
            await self.follow_policy()

    async def follow_policy(self) -> None:
        """A new policy in force changes what each user may have and what a waiting Workspace may get:
        PriorityClasses first (a pod names its class), then each user's quota, then every waiting Workspace
        gets a pass. A step the API fails is tried again as a whole; each is idempotent."""
        self.workspaces.admissions.changed()
        key = ("Policy", self.namespace)
        done = await quietly("applying PriorityClasses", self.policy.apply_priority_classes) is not None
        users = await quietly("listing users", self.kube.list, "GPUUser")
        if users is not None:
            await asyncio.gather(*(self.reconcile_user(u["metadata"]["name"]) for u in users))
        workspaces = await quietly("listing workspaces", self.kube.list, "Workspace")
        if workspaces is not None:
            self.requeue_waiting(workspaces)
        if done and users is not None and workspaces is not None:
            self.requeue.cancel(key)
        else:
            self.requeue.retry(key, lambda: asyncio.ensure_future(self.follow_policy()))

    def requeue_waiting(self, workspaces: list[dict[str, Any]]) -> None:
        """Every Workspace that waits (Pending for any reason, NotEntitled and QuotaExceeded included, Preempted,
        or not looked at yet) gets a pass under the policy now in force: none of them has a timer of its own."""
        listed = {(ws["metadata"]["namespace"], ws["metadata"]["name"]) for ws in workspaces
                  if (ws.get("status") or {}).get("phase") in (*WAITING_PHASES, None)}
        for namespace, name in sorted(listed | self.waiting | self.queued_for_device):
            self.workspace_changed(namespace, name)


def in_cluster_server(environ: Mapping[str, str], fallback: str) -> str:
    """The API server as client-go finds it in a pod: the `kubernetes` Service's address that the kubelet puts
    in the environment. kopf's own default, https://kubernetes.default.svc, needs cluster DNS, and without it
    (DNS not up yet after a reboot, or none at all) the operator led its Lease but never saw an object."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        return fallback
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def register(registry: kopf.OperatorRegistry, operator: Operator) -> None:
    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        # a fresh registry has no login handlers; use the same kubeconfig/in-cluster config as our client
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            return dataclasses.replace(info, server=in_cluster_server(os.environ, info.server))
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "labkeeper.io/kopf"
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.posting.level = logging.WARNING
        # a pass mostly waits on the API server: with the default pool (cores + 4 threads) a burst of passes, as
        # when every workspace idle since a boot meets its deadline at once, was served six at a time
        asyncio.get_running_loop().set_default_executor(
            UrgentFirstExecutor(PASS_THREADS, thread_name_prefix="pass"))
        await asyncio.to_thread(operator.policy.apply_priority_classes)
        await asyncio.to_thread(clear_stale_handovers, operator.kube)
        await operator.prune_gone_nodes()  # nodes deleted while no operator watched

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        operator.stop()

    users_seen: dict[str, tuple[Any, ...]] = {}  # what of each GPUUser her workspaces depend on, as last seen

    @kopf.on.event(GROUP, VERSION, GPUUSER.plural, registry=registry)
    async def _user_event(event: kopf.RawEvent, body: kopf.Body, name: str, **_: Any) -> None:
        operator.workspaces.user_seen(name, dict(body) if event.get("type") != "DELETED" else None)
        if event.get("type") == "DELETED":
            users_seen.pop(name, None)
            operator.users.forget(name)
            operator._user_passed.pop(name, None)
            operator.requeue.cancel(("accounting", name))
            operator._accounting.pop(name, None)
            return
        operator.accounting_due(name)
        if operator.user_passed(name, body):
            return  # only her usage or accounting changed: nothing a pass, her usage or her workspaces depend on
        await operator.reconcile_user(name, dict(body))
        operator.usage_changed(namespace_for(name))
        # suspension, a tier change or a new uid can change what each of her workspaces may do; her own status
        # writes cannot (usage, the accounting fold every flushInterval, the agents' reports), and a pass over all her
        # workspaces on each of those was most of what the operator did in a lab-week replay
        status = body.get("status") or {}
        ready = find(status.get("conditions"), READY) or {}
        seen = (body.get("metadata", {}).get("generation"), status.get("uid"), status.get("gid"), status.get("phase"),
                ready.get("status"), ready.get("reason"))
        if users_seen.get(name) == seen:
            return
        users_seen[name] = seen
        items = await quietly("listing workspaces", operator.kube.list, "Workspace", namespace_for(name)) or []
        for ws in items:
            operator.workspace_changed(ws["metadata"]["namespace"], ws["metadata"]["name"])

    @kopf.on.event(GROUP, VERSION, WORKSPACE.plural, registry=registry)
    async def _workspace_event(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None,
                               **_: Any) -> None:
        if namespace is None:  # Workspaces are namespaced
            return
        if event.get("type") == "DELETED":
            operator.workspaces.admissions.changed()  # a waiter or a hold went with it
            operator.workspace_seen(namespace, name, None)
            operator.workspaces.forget(namespace, name)
            operator.requeue.cancel(("Workspace", f"{namespace}/{name}"))
            operator.holds_seen.changed(namespace, name, None)
            operator.usage_changed(namespace)
            if (body.get("status") or {}).get("holdNode"):
                operator.device_freed(namespace, name)  # its hold went with it
            return
        status = body.get("status") or {}
        operator.workspace_seen(namespace, name, status.get("phase"), bool(status.get("waitingSince")),
                                settling=lags(body))
        operator.workspace_changed(namespace, name)
        if operator.holds_seen.changed(namespace, name, status):
            operator.usage_changed(namespace)  # a hold after a stop is recorded in the Workspace's status

    @kopf.on.event("", "v1", "pods", registry=registry, labels={LABEL_MANAGED: MANAGED_BY})
    async def _pod_event(event: kopf.RawEvent, body: kopf.Body, labels: kopf.Labels, namespace: str | None,
                         **_: Any) -> None:
        if namespace is None:  # pods are namespaced
            return
        workspace = labels.get(LABEL_WORKSPACE)
        if not workspace:
            return
        lost = dict(body) if event.get("type") == "DELETED" and labels.get(LABEL_ROLE) == "workspace" else None
        if labels.get(LABEL_ROLE) == "hold":
            operator.workspaces.hold_pod_seen(namespace, workspace, present=event.get("type") != "DELETED")
        if event.get("type") == "DELETED" or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            operator.workspaces.admissions.changed()  # its devices are free
        operator.workspace_changed(namespace, workspace, lost_pod=lost)
        operator.usage_changed(namespace)
        if event.get("type") == "DELETED":
            operator.device_freed(namespace, workspace)

    nodes_seen: dict[str, tuple[Any, ...]] = {}

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def _node_event(event: kopf.RawEvent, body: kopf.Body, name: str, **_: Any) -> None:
        # what admission counts of a node, its devices and whether it takes pods, not its heartbeats
        capacity, closed = api_admission.capacity_of([dict(body)] if event.get("type") != "DELETED" else [])
        seen = (tuple(sorted(capacity.items())), name in closed)
        if nodes_seen.get(name) != seen:
            nodes_seen[name] = seen
            operator.workspaces.admissions.changed()
        if event.get("type") == "DELETED":
            nodes_seen.pop(name, None)
            operator.liveness.forget(name)
            await operator.prune_gone_nodes()

    @kopf.on.event("coordination.k8s.io", "v1", "leases", registry=registry,
                   when=lambda namespace, **_: namespace == NODE_LEASE_NAMESPACE)
    async def _node_lease_event(event: kopf.RawEvent, body: kopf.Body, name: str, **_: Any) -> None:
        # a kubelet's renewals: whether its pods' statuses can be believed (controller/liveness.py)
        if event.get("type") == "DELETED":
            operator.liveness.forget(name)
        else:
            operator.liveness.observe(dict(body))

    @kopf.on.event("", "v1", "configmaps", registry=registry,
                   when=lambda name, namespace, **_: name == POLICY_CONFIGMAP and namespace == operator.namespace)
    async def _policy_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") != "DELETED":
            await operator.policy_changed(dict(body))


@contextlib.contextmanager
def standby_health(liveness: str | None) -> Iterator[None]:
    if not liveness:
        yield
        return
    url = urllib.parse.urlsplit(liveness)

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == url.path else 404)
            self.end_headers()
            self.wfile.write(b"standby\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 8080), Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class WritesCollector:
    """Exposes every API write and read this operator made, by verb and kind, as Prometheus counters."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for name, what, counts in (("labkeeper_operator_api_writes", "API writes made by the operator",
                                    self.kube.writes),
                                   ("labkeeper_operator_api_reads", "API reads (gets and lists) made by the operator",
                                    self.kube.reads)):
            family = CounterMetricFamily(name, what, labels=["verb", "kind"])
            for key, value in sorted(counts.items()):
                verb, kind = key.split(" ", 1)
                family.add_metric([verb, kind], value)
            yield family


class AdmissionViews:
    """How often admission read the whole lab and how often a pass was handed a view kept from before."""

    def __init__(self, admissions: Any) -> None:
        self.admissions = admissions

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("labkeeper_admission_views", "Views of the lab admission read or reused",
                                     labels=["how"])
        family.add_metric(["read"], self.admissions.views_read)
        family.add_metric(["reused"], self.admissions.views_reused)
        family.add_metric(["extended"], self.admissions.views_extended)
        yield family
        reads = CounterMetricFamily("labkeeper_admission_reads", "Reads of the whole lab by admission, by why",
                                    labels=["why"])
        for why, count in sorted(self.admissions.read_why.items()):
            reads.add_metric([why], count)
        yield reads


def serve_metrics(kube: Kube, port: int) -> None:
    from prometheus_client import REGISTRY, start_http_server

    REGISTRY.register(WritesCollector(kube))
    start_http_server(port, addr="0.0.0.0")


def endpoint_from(kube: Kube) -> ClusterEndpoint:
    """The API endpoint and CA that users' kubeconfigs should point at: this client's own."""
    cfg = kube.api.configuration
    server = os.environ.get("LABKEEPER_API_SERVER") or cfg.host
    ca_pem = b""
    if cfg.ssl_ca_cert and Path(cfg.ssl_ca_cert).exists():
        ca_pem = Path(cfg.ssl_ca_cert).read_bytes()
    return ClusterEndpoint(server, ca_pem)


def operator_client(kubeconfig: str | None) -> Kube:
    """The process's one client: every pass thread, and the event loop's own calls beside them, on a connection
    kept open."""
    return Kube.from_kubeconfig(kubeconfig, connections=PASS_THREADS + 4, field_manager="labkeeper-operator")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkeeper operator")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--namespace", default=os.environ.get("LABKEEPER_NAMESPACE", SYSTEM_NAMESPACE))
    parser.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--no-require-host", action="store_true",
                        help="a GPUUser is Ready without a node agent's report (clusters without agents)")
    parser.add_argument("--data-root", default=os.environ.get("LABKEEPER_DATA_ROOT", "/data"),
                        help="the data root on every node (homes, caches, model stores)")
    parser.add_argument("--no-leader-elect", action="store_true", help="skip the Lease (a single replica only)")
    parser.add_argument("--lease-duration", type=float, default=15.0, help="seconds a leader lease lasts")
    parser.add_argument("--kubelet-settle", type=float, default=DEFAULT_SETTLE,
                        help="seconds a node's kubelet is seen alive (its Lease renewed without a gap) before its "
                             "pods' statuses count as fresh: after a power cut they still say Running")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("LABKEEPER_METRICS_PORT", "0")),
                        help="serve Prometheus metrics on this port (0: off)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--accelerated-clock", type=ScaledClock.parse, default=None, metavar="SCALE@ORIGIN@ANCHOR",
                        help="benchmarks only: the operator's clock runs SCALE times faster than the wall clock, "
                             "from ORIGIN at epoch second ANCHOR, and every delay it decides is waited 1/SCALE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kube = operator_client(args.kubeconfig)
    if args.metrics_port:
        serve_metrics(kube, args.metrics_port)
    lease = None
    if not args.no_leader_elect:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        lease = LeaderLease(kube, args.namespace, identity, args.lease_duration)
        # a standby replica is alive while it waits, so its liveness probe must not restart it
        with standby_health(args.liveness):
            lease.acquire()
    operator = Operator(kube, args.namespace, endpoint_from(kube), require_host=not args.no_require_host,
                        data_root=args.data_root, clock=args.accelerated_clock or utcnow,
                        kubelet_settle=args.kubelet_settle)
    if lease is not None:
        # runs nobody watched end where the operator before this one last knew them alive (controller/liveness.py)
        operator.liveness.set_prior(lease.previous)
        lease.record = operator.liveness.record
    if args.metrics_port:
        from prometheus_client import REGISTRY

        REGISTRY.register(operator.policy)  # labkeeper_policy_rejected_total, _generation, _refused
        REGISTRY.register(AdmissionViews(operator.workspaces.admissions))
    registry = kopf.OperatorRegistry()
    register(registry, operator)
    if args.metrics_port:
        from prometheus_client import REGISTRY as METRICS

        METRICS.register(operator.accountant)  # usage by user and state, fair share, waiting, stops
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if not args.verbose:
        # one line per handled watch event is noise at lab scale
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    stop_flag = threading.Event()
    kopf.run(registry=registry, standalone=True, clusterwide=True, liveness_endpoint=args.liveness,
             stop_flag=stop_flag)
    return 0

