"""When a pod's status may be believed: the node's kubelet is alive, and has been long enough to have rewritten
what it reported before it went away.

A pod's status says nothing of how fresh it is. After a power cut the API server still says "Running" for every
pod of the node until the kubelet is back and has looked at its containers again; an operator that came back
first would take that for a live run and count the outage as runtime (issue 17). The kubelet's node Lease
(kube-node-lease/<node>) is renewed every quarter of its duration while the kubelet lives, so this process
follows the renewals and trusts a node's pod statuses only after it has seen the kubelet alive, without a gap,
for `settle` seconds: time for the kubelet to sync every pod it found after a restart. A renewal that follows the
one before by more than half the lease's duration is a gap: the kubelet was away in between.

It is also what a run's end is known from, with no write of its own: a run this process saw alive while it
believed the node's kubelet was alive as long as that stretch lasted (`sight`). What a process knew when it died is
in its leader Lease, which it renews anyway: `record()` is written there at each renewal (the moment it last
watched the lab, and for each node it did not believe then, until when it last did), and the next process starts
from it (`prior`).

Wall time (the Lease, the settle) is measured with the monotonic clock; what the decisions get back is in the
operator's clock, which a benchmark may run faster (controller/main.py ScaledClock)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from labkeeper.api.units import format_time, parse_time

log = logging.getLogger("labkeeper.operator.liveness")
NODE_LEASE_NAMESPACE = "kube-node-lease"
DEFAULT_SETTLE = 20.0  # seconds a kubelet is seen alive before its pod statuses are believed
KEPT_STRETCHES = 8  # ended stretches remembered per node: runs seen in them end where they ended


@dataclass(frozen=True)
class Sight:
    """What this process knows of a run on a node: since when it believes the node's kubelet (None: not now),
    whether it has watched this run alive through all of that, and if not, until when it was known alive."""

    trusted_from: dt.datetime | None
    watched: bool
    alive_until: dt.datetime | None


def _time(value: object) -> dt.datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass
class _Node:
    renewed: dt.datetime  # the Lease's renewTime, as the kubelet wrote it
    duration: float  # leaseDurationSeconds
    observed: float  # monotonic: when this process saw that renewal
    alive_since: float  # monotonic: the start of the stretch without a gap that this process saw
    trusted_from: dt.datetime | None = None  # operator clock: when this stretch became trusted
    last_alive: dt.datetime | None = None  # operator clock: the last renewal seen in this stretch
    ended: dict[dt.datetime, dt.datetime] = field(default_factory=dict)  # trusted_from of an ended stretch → last_alive

    def stretch_ends(self) -> dict[dt.datetime, dt.datetime]:
        """Each trusted stretch's last renewal seen, this one's included."""
        if self.trusted_from is None or self.last_alive is None:
            return dict(self.ended)
        return {**self.ended, self.trusted_from: self.last_alive}


class KubeletLiveness:
    """Per node, what this process has seen of its kubelet's Lease. Fed by the Lease watch, read by passes in
    other threads."""

    def __init__(self, clock: Callable[[], dt.datetime], *, settle: float = DEFAULT_SETTLE,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.clock, self.settle, self.monotonic, self.wall = clock, settle, monotonic, wall
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()
        # what the process before this one recorded in the leader Lease (set_prior): until when it watched, and
        # the nodes it did not believe then with until when it had
        self._prior_until: dt.datetime | None = None
        self._prior_away: dict[str, dt.datetime] = {}

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
                seen.last_alive = self.clock()
                return
            # a first sight, or the kubelet is back after a gap: a new stretch, trusted only after the settle
            log.info("node %s: kubelet %s (Lease renewed %s, %.0f s ago); its pods' statuses are believed %s",
                     name, "seen" if seen is None else "back after a gap", spec.get("renewTime"), age,
                     f"in {self.settle:g} s" if fresh_at_sight else "once it renews")
            ended = dict(sorted(seen.stretch_ends().items())[-KEPT_STRETCHES:]) if seen is not None else {}
            self._nodes[name] = _Node(renewed, duration, now if fresh_at_sight else now - duration - 1,
                                      now if fresh_at_sight else float("inf"),
                                      last_alive=self.clock() if fresh_at_sight else None, ended=ended)

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
            if seen is None or not self._believed(seen, now):
                return None
            if seen.trusted_from is None:
                seen.trusted_from = self.clock()
            return seen.trusted_from

    def sight(self, node: str | None, watched_from: dt.datetime | None) -> Sight:
        """A run on `node` that this process last saw alive in the stretch trusted from `watched_from` (None: it
        never saw it): watched if that stretch still holds; else alive until that stretch ended, or, for a run
        this process never saw, until the process before it last watched the node."""
        trusted = self.trusted_from(node)
        if watched_from is not None and trusted == watched_from:
            return Sight(trusted, True, None)
        if watched_from is None:
            return Sight(trusted, False, self.prior(node))
        with self._lock:
            seen = self._nodes.get(node or "")
            if seen is None:
                return Sight(trusted, False, None)
            if seen.trusted_from == watched_from:
                return Sight(trusted, False, seen.last_alive)  # the stretch lapsed: no renewal since
            return Sight(trusted, False, seen.ended.get(watched_from))

    def set_prior(self, record: dict[str, object] | None) -> None:
        """The record the process before this one left in the leader Lease (None: there is none)."""
        record = record or {}
        until, away = _time(record.get("watchedUntil")), record.get("away")
        with self._lock:
            self._prior_until = until
            self._prior_away = {str(n): t for n, v in (away.items() if isinstance(away, dict) else ())
                                if (t := _time(v)) is not None} if until is not None else {}

    def prior(self, node: str | None) -> dt.datetime | None:
        """Until when the process before this one knew `node`'s runs alive (None: nothing is known)."""
        with self._lock:
            return self._prior_away.get(node or "", self._prior_until)

    def record(self) -> dict[str, object]:
        """What this process knows, for the leader Lease: now, and each node it does not believe now with the
        last moment it or the process before it did."""
        now = self.monotonic()
        with self._lock:
            away: dict[str, dt.datetime] = {}
            for name in set(self._nodes) | set(self._prior_away):
                seen = self._nodes.get(name)
                if seen is not None and self._believed(seen, now):
                    continue  # believed now: watched until now
                ends = seen.stretch_ends().values() if seen is not None else ()
                last = max(ends, default=None) or self._prior_away.get(name, self._prior_until)
                if last is not None:
                    away[name] = last
            return {"watchedUntil": format_time(self.clock()),
                    "away": {name: format_time(t) for name, t in sorted(away.items())}}

    @staticmethod
    def _alive(seen: _Node, now: float) -> bool:
        return now - seen.observed <= seen.duration

    def _believed(self, seen: _Node, now: float) -> bool:
        """Alive, and without a gap for the settle."""
        return self._alive(seen, now) and now - seen.alive_since >= self.settle
