"""When a pod's status may be believed: the node's kubelet is alive, and has been long enough to have rewritten
what it reported before it went away.

A pod's status says nothing of how fresh it is. After a power cut the API server still says "Running" for every
pod of the node until the kubelet is back and has looked at its containers again; an operator that came back
first would take that for a live run and count the outage as runtime (issue 17). The kubelet's node Lease
(kube-node-lease/<node>) is renewed every quarter of its duration while the kubelet lives, so this process
follows the renewals and trusts a node's pod statuses only after it has seen the kubelet alive, without a gap,
for `settle` seconds: time for the kubelet to sync every pod it found after a restart. A renewal that follows the
one before by more than half the lease's duration is a gap: the kubelet was away in between.

Wall time (the Lease, the settle) is measured with the monotonic clock; what the decisions get back is in the
operator's clock, which a benchmark may run faster (controller/main.py ScaledClock)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from labkeeper.api.units import parse_time

NODE_LEASE_NAMESPACE = "kube-node-lease"
DEFAULT_SETTLE = 20.0  # seconds a kubelet is seen alive before its pod statuses are believed


@dataclass
class _Node:
    renewed: dt.datetime  # the Lease's renewTime, as the kubelet wrote it
    duration: float  # leaseDurationSeconds
    observed: float  # monotonic: when this process saw that renewal
    alive_since: float  # monotonic: the start of the stretch without a gap that this process saw
    trusted_from: dt.datetime | None = None  # operator clock: when this stretch became trusted


class KubeletLiveness:
    """Per node, what this process has seen of its kubelet's Lease. Fed by the Lease watch, read by passes in
    other threads."""

    def __init__(self, clock: Callable[[], dt.datetime], *, settle: float = DEFAULT_SETTLE,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.clock, self.settle, self.monotonic, self.wall = clock, settle, monotonic, wall
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()

    def observe(self, lease: dict[str, object]) -> None:
        """A node Lease as the watch delivered it."""
        meta = lease.get("metadata") or {}
        spec = lease.get("spec") or {}
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            return
        name, renewed = meta.get("name"), parse_time(spec.get("renewTime"))
        if not isinstance(name, str) or renewed is None:
            return
        duration = float(spec.get("leaseDurationSeconds") or 40)
        now = self.monotonic()
        with self._lock:
            seen = self._nodes.get(name)
            if seen is not None and renewed <= seen.renewed:
                return  # the same renewal again (a resync), or an older one delivered late
            age = (self.wall() - renewed).total_seconds()
            fresh_at_sight = age <= duration
            continued = seen is not None and self._alive(seen, now) and \
                (renewed - seen.renewed).total_seconds() <= duration / 2
            if continued and seen is not None:
                seen.renewed, seen.duration, seen.observed = renewed, duration, now
                return
            # a first sight, or the kubelet is back after a gap: a new stretch, trusted only after the settle
            self._nodes[name] = _Node(renewed, duration, now if fresh_at_sight else now - duration - 1,
                                      now if fresh_at_sight else float("inf"))

    def forget(self, node: str) -> None:
        with self._lock:
            self._nodes.pop(node, None)

    def trusted_from(self, node: str | None) -> dt.datetime | None:
        """In the operator's clock, since when this process has believed the pod statuses of `node`'s kubelet
        without a break; None while it does not (no Lease seen, the Lease lapsed, or still settling)."""
        if not node:
            return None
        now = self.monotonic()
        with self._lock:
            seen = self._nodes.get(node)
            if seen is None or not self._alive(seen, now) or now - seen.alive_since < self.settle:
                return None
            if seen.trusted_from is None:
                seen.trusted_from = self.clock()
            return seen.trusted_from

    @staticmethod
    def _alive(seen: _Node, now: float) -> bool:
        return now - seen.observed <= seen.duration
