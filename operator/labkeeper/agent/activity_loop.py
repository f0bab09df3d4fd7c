"""The agent's activity loop: every `sampleInterval`, observe the running workspaces on this node and
publish their verdicts to `status.lastActivity` / `status.activityReason` through the throttle.

GPU devices reach a workspace through its processes, not through the device plugin's assignment:
NVML's pid (or the activity file's `podUid`) -> `/proc/<pid>/cgroup` -> pod UID. A MIG instance busy
with someone else's process therefore never keeps a neighbour alive, and the agent needs neither the
kubelet's pod-resources socket nor the container's environment. The profiles in `status.devices`
only tell the verdict that the workspace has a GPU ("gpu idle 27m")."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from labkeeper.agent.activity import (
    ActivityMonitor,
    PublishThrottle,
    Thresholds,
    WatchedWorkspace,
)
from labkeeper.api.devices import entry_profiles
from labkeeper.api.policy import LabPolicy
from labkeeper.api.resources import Workspace, read_object, wire
from labkeeper.kube.client import Kube, api_error_message

log = logging.getLogger("labkeeper.agent.activity")
WATCHED_PHASES = ("Running", "IdleWarning")


def watched_workspaces(workspaces: list[Workspace], node: str) -> list[WatchedWorkspace]:
    """The workspaces this node should sample: running here, with a known pod UID."""
    watched = []
    for ws in workspaces:
        status = ws.status
        if status is None or status.node != node or status.phase not in WATCHED_PHASES or not status.pod_uid:
            continue
        watched.append(WatchedWorkspace(ws.namespace or "", ws.name, status.pod_uid, entry_profiles(status.devices)))
    return watched


def thresholds_of(policy: LabPolicy) -> Thresholds:
    return Thresholds.from_policy(policy.activity.model_dump(by_alias=True), policy.sample_interval)


class ActivityLoop:
    def __init__(self, kube: Kube, node: str, monitor: ActivityMonitor, policy: Callable[[], LabPolicy],
                 clock: Callable[[], dt.datetime], *,
                 notices: Callable[[list[Workspace]], object] | None = None) -> None:
        """`notices`, when given, is handed every sample's Workspace list (the notices in users' homes)."""
        self.kube, self.node, self.monitor, self.policy, self.clock = kube, node, monitor, policy, clock
        self.notices = notices
        self.notices_error: str | None = None
        self.refused: dict[tuple[str, str], str] = {}  # workspaces whose model refuses them → why, said once
        # (namespace, name) → (resourceVersion, model, why refused) of the last list
        self._parsed: dict[tuple[str, str], tuple[str | None, Workspace, str | None]] = {}
        self.throttle = PublishThrottle(policy().report_interval)
        self.writes = 0

    def tick(self) -> int:
        """One sample of every watched workspace; returns how many status patches were written."""
        policy = self.policy()
        self.monitor.thresholds = thresholds_of(policy)
        self.throttle.report_interval = policy.report_interval
        listed = self._read(self.kube.list("Workspace"))
        workspaces = watched_workspaces(listed, self.node)
        verdicts = self.monitor.observe(workspaces)
        now = self.clock()
        written = 0
        for (namespace, name), verdict in verdicts.items():
            patch = self.throttle.decide((namespace, name), verdict, now)
            if patch is None:
                continue
            try:
                self.kube.patch("Workspace", name, {"status": wire(patch)}, namespace, subresource="status")
                written += 1
            except ApiException as err:
                # unpublished: forget it, so the next sample publishes afresh instead of staying silent
                self.throttle.retain(set(verdicts) - {(namespace, name)})
                if err.status != 404:
                    log.warning("activity of %s/%s: %s", namespace, name, api_error_message(err))
        self.throttle.retain(set(verdicts))
        self.writes += written
        if self.notices is not None:
            try:
                self.notices(listed)
                self.notices_error = None
            except Exception as err:  # a home the agent cannot write to must not stop the sampling
                if str(err) != self.notices_error:  # once per distinct failure, not every sample
                    log.warning("notices in users' homes: %s", err)
                self.notices_error = str(err)
        return written

    def _read(self, bodies: list[dict]) -> list[Workspace]:
        """The Workspaces as their models; one its model refuses is read from its stand-in (its status, where that
        parses, is all the sampling and the notices need), and said once. An object is parsed again only when its
        resourceVersion moved: a sample every second of a department's workspaces must not parse them all."""
        read, refused, parsed = [], {}, {}
        for body in bodies:
            meta = body.get("metadata") or {}
            key = (meta.get("namespace") or "", meta.get("name") or "")
            version = meta.get("resourceVersion")
            kept = self._parsed.get(key)
            ws, why = kept[1:] if kept is not None and version and kept[0] == version else read_object(Workspace, body)
            parsed[key] = (version, ws, why)
            read.append(ws)
            if why is not None:
                refused[key] = why
                if self.refused.get(key) != why:
                    log.warning("%s", why)
        self.refused, self._parsed = refused, parsed
        return read

    def run(self, stop: threading.Event, *, recheck: float = 1.0) -> None:
        """Samples every sampleInterval of the policy in force; the interval is read again every `recheck`
        seconds, so a new policy's shorter interval counts at once, not after the old one has run out."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("activity sample failed; retrying next interval")
            # the interval counts from the end of a sample, as before: samples on exact multiples of it land a
            # hair before each report is due, so every report slipped a whole sample and the operator, which
            # calls a workspace idle once its last report is reportInterval + checkInterval old, saw gaps
            sampled = time.monotonic()
            while not stop.is_set():
                left = sampled + self.policy().sample_interval.total_seconds() - time.monotonic()
                if left <= 0:
                    break
                stop.wait(min(left, recheck))
