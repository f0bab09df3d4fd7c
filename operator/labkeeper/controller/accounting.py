"""Folds each user's Workspace meters into her GPUUser.status.accounting, and serves the lab's usage as
Prometheus metrics. The arithmetic is api/accounting.py; this reads the API and writes one patch.

The patch carries the resourceVersion the fold was computed from, so two folds (an old leader and a new one, or
a pass killed after its read) can never add the same stretch twice: the loser's patch is refused and the next
fold starts from the winner's `through`."""

from __future__ import annotations

import datetime as dt
import logging
import math
import zlib
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api import accounting as api_accounting
from labkeeper.api import admission as api_admission
from labkeeper.api.names import namespace_for, username_of
from labkeeper.controller.usage import UserStatusWriter
from labkeeper.kube.client import is_conflict

log = logging.getLogger("labkeeper.operator")
REPORT_WINDOW = dt.timedelta(days=7)  # what the metrics' waiting percentiles and stop counts cover


def first_fold_after(username: str, interval: float) -> float:
    """Seconds to her first fold once the operator sees her: at her own point in the flush interval, from her name.
    A thousand users seen at once (each operator start, a lab imported) are then folded spread evenly over the
    interval, not in one burst of a list and a write each, and keep that spread (next_fold_due)."""
    return interval * zlib.crc32(username.encode()) / 2**32


def next_fold_due(after: dt.datetime, interval: dt.timedelta, now: dt.datetime) -> dt.datetime:
    """Her next fold after the one due at `after`: the first moment after now on her own beat (`after` plus whole
    flush intervals), however late that one ran; her place in the interval is kept."""
    return after + interval * (math.floor((now - after) / interval) + 1)


class Accountant(UserStatusWriter):
    def flush(self, username: str, watched: dict[str, Any] | None = None) -> bool:
        """Folds her meters up to now into her status; returns whether a write was made. `watched`: her GPUUser
        as the watch last showed it, folded onto instead of a read; if she changed since (the watch behind), the
        patch is refused and the fold is made once more on a fresh read."""
        if watched is not None:
            written = self._fold(username, watched)
            if written is not None:
                return written
        user = self.staying_user(username)
        return bool(user is not None and self._fold(username, user))

    def _fold(self, username: str, user: dict[str, Any]) -> bool | None:
        """Whether the fold onto `user` wrote; None when she changed since `user` was read."""
        if user["metadata"].get("deletionTimestamp"):
            return False
        workspaces = self.kube.list("Workspace", namespace_for(username))
        now = self.clock()
        policy = self.policy.current
        folded = api_accounting.fold_user(user, workspaces, now, policy.fair_share.half_life,
                                          api_accounting.settle_time(policy.report_interval, policy.check_interval))
        before = api_accounting.user_accounting(user)
        if folded["days"] == (before.get("days") or []):
            # nothing metered since the last fold (her decayed usage only decays, which anyone can compute)
            return False
        patch = {"metadata": {"resourceVersion": user["metadata"]["resourceVersion"]},
                 "status": {"accounting": folded}}
        try:
            self.kube.patch("GPUUser", username, patch, subresource="status")
        except ApiException as err:
            if is_conflict(err):
                return None  # written meanwhile: fold again onto what is there
            if err.status == 404:
                return False  # gone
            raise
        return True

    # ---- metrics ---------------------------------------------------------------------------------------------
    def describe(self) -> list[Any]:
        # registering must not read the API (the registry would call collect() to learn the names)
        return []

    def collect(self) -> Iterator[Any]:
        """Prometheus families computed at scrape time from the same figures `labctl admin report` prints; an API
        hiccup costs this scrape these families, never the whole /metrics."""
        try:
            users = self.kube.list("GPUUser")
            workspaces = self.kube.list("Workspace")
            nodes = self.kube.list("Node")
        except Exception as err:  # any failure to read costs this scrape only
            log.warning("usage metrics skipped this scrape: %s", err)
            return
        yield from self._families(users, workspaces, nodes)

    def _families(self, users: list[dict[str, Any]], workspaces: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = self.clock()
        policy = self.policy.current
        shares = {u["metadata"]["name"]: policy.share((u.get("spec") or {}).get("tier")) for u in users}
        everything = api_accounting.report(users, workspaces, now, now - dt.timedelta(days=api_accounting.RETENTION_DAYS),
                                           policy.fair_share.half_life, shares)
        recent = {r.user: r for r in api_accounting.report(users, workspaces, now, now - REPORT_WINDOW,
                                                           policy.fair_share.half_life, shares)}
        held = CounterMetricFamily("labkeeper_gpu_equivalent_seconds", "GPU-equivalent-seconds held, by user and "
                                   "state (active, idle, held after stop), over the retained days",
                                   labels=["user", "tier", "state"])
        waiting = CounterMetricFamily("labkeeper_waiting_seconds", "seconds her workspaces waited for a device",
                                      labels=["user"])
        stops = CounterMetricFamily("labkeeper_workspace_stops", "workspace stops by reason", labels=["user", "reason"])
        decayed = GaugeMetricFamily("labkeeper_fair_share_decayed_gpu_hours", "decayed GPU-equivalent-hours the "
                                    "queue weighs", labels=["user", "tier"])
        relative = GaugeMetricFamily("labkeeper_fair_share_relative_usage", "decayed usage divided by her tier's "
                                     "share: lower goes first within a tier", labels=["user", "tier"])
        wait_q = GaugeMetricFamily("labkeeper_waiting_time_seconds", "waiting time before a start over the last "
                                   "7 days, by quantile", labels=["user", "quantile"])
        for rep in everything:
            for state, value in (("active", rep.active), ("idle", rep.idle), ("held_after_stop", rep.held_after_stop)):
                held.add_metric([rep.user, rep.tier, state], value)
            waiting.add_metric([rep.user], rep.waiting)
            for reason, n in sorted(rep.stops.items()):
                stops.add_metric([rep.user, reason], n)
            decayed.add_metric([rep.user, rep.tier], rep.decayed_gpu_hours)
            relative.add_metric([rep.user, rep.tier], rep.relative_usage)
            for q in (50, 95):
                wait = api_accounting.percentile(recent[rep.user].waits, q)
                if wait is not None:
                    wait_q.add_metric([rep.user, str(q / 100)], wait)
        queued = GaugeMetricFamily("labkeeper_workspaces_waiting", "workspaces waiting for a device", labels=["user"])
        per_user: dict[str, int] = {}
        for ws in workspaces:
            if (ws.get("status") or {}).get("waitingSince"):
                user = username_of(ws["metadata"]["namespace"]) or ws["metadata"]["namespace"]
                per_user[user] = per_user.get(user, 0) + 1
        for user in sorted(shares):
            queued.add_metric([user], per_user.get(user, 0))
        capacity, _closed = api_admission.capacity_of(nodes)
        offered = GaugeMetricFamily("labkeeper_lab_capacity_gpu_equivalents", "GPU equivalents the nodes offer")
        offered.add_metric([], api_accounting.capacity_equivalents(capacity, policy.gpu_weights))
        yield from (held, waiting, stops, decayed, relative, wait_q, queued, offered)
