"""Idle and runtime deadlines of a running workspace: pure arithmetic over its status and the clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labkeeper.api.units import format_time, human_duration, parse_time


@dataclass(frozen=True)
class Warning:
    key: str
    reason: str
    message: str
    since: dt.datetime | None

    def as_status(self, now: dt.datetime) -> dict[str, Any]:
        return {"key": self.key, "reason": self.reason, "message": self.message, "at": format_time(now),
                "since": format_time(self.since)}


@dataclass(frozen=True)
class KeepAlive:
    """The keep-alive in force and, when a request asked for more than the policy's keepAliveMax, why not."""

    until: dt.datetime | None  # in force until then; None when no keep-alive is in force now
    grant: dict[str, Any] | None  # status.keepAliveGrant: spec.keepAliveUntil as seen, and what was granted for it
    capped: str | None

    def status(self) -> dict[str, Any]:
        return {"keepAliveUntil": format_time(self.until), "keepAliveGrant": self.grant}


def keep_alive_in_force(*, requested_until: dt.datetime | None, requested_for: dt.timedelta | None,
                        last_active: dt.datetime, grant: dict[str, Any] | None, now: dt.datetime,
                        cap: dt.timedelta) -> KeepAlive:
    """spec.keepAliveUntil counts from when the operator first saw it and spec.keepAlive from the last activity;
    each is cut to the policy's cap. The grant for a keepAliveUntil is remembered in status, so the cap is
    measured once from the request, not again from every pass (which would let it slide forever)."""
    untils, capped = [], []
    new_grant = None
    if requested_until is not None:
        asked = format_time(requested_until)
        granted = parse_time((grant or {}).get("until")) if (grant or {}).get("requested") == asked else None
        if granted is None:
            granted = min(requested_until, now + cap)
        new_grant = {"requested": asked, "until": format_time(granted)}
        untils.append(granted)
        if requested_until - granted > dt.timedelta(seconds=1):
            capped.append(f"spec.keepAliveUntil {asked} is beyond the policy cap of {human_duration(cap)} "
                          f"(keepAliveMax); kept alive until {format_time(granted)}")
    if requested_for is not None:
        untils.append(last_active + min(requested_for, cap))
        if requested_for > cap:
            capped.append(f"spec.keepAlive {human_duration(requested_for)} is beyond the policy cap of "
                          f"{human_duration(cap)} (keepAliveMax); {human_duration(cap)} counts")
    live = [u for u in untils if u > now]
    return KeepAlive(max(live) if live else None, new_grant, "; ".join(capped) or None)


@dataclass(frozen=True)
class EnforcementClock:
    now: dt.datetime
    idle_since: dt.datetime
    idle_timeout: dt.timedelta | None
    idle_deadline: dt.datetime | None
    runtime: dt.timedelta
    max_runtime: dt.timedelta | None
    runtime_deadline: dt.datetime | None
    activity_reason: str | None
    keep_alive_until: dt.datetime | None
    keep_alive_refused: str | None
    keep_alive: KeepAlive | None = None

    def status(self) -> dict[str, Any]:
        # a workspace kept active by spec.keepAlive is not idle yet: no idleSince in the future
        idle_since = self.idle_since if self.idle_since <= self.now else None
        return {"idleSince": format_time(idle_since), "idleDeadline": format_time(self.idle_deadline),
                "runtimeDeadline": format_time(self.runtime_deadline),
                **(self.keep_alive.status() if self.keep_alive else {})}

    def due_warnings(self, idle_fractions: Sequence[float], runtime_fractions: Sequence[float]) -> list[Warning]:
        due = []
        if self.idle_timeout and self.idle_deadline:
            idle_for = self.now - self.idle_since
            for fraction in idle_fractions:
                at = self.idle_since + self.idle_timeout * fraction
                if self.now >= at and (self.keep_alive_until is None or self.now >= self.keep_alive_until):
                    due.append(Warning(
                        f"idle-{round(fraction * 100)}", "IdleWarning",
                        f"idle for {human_duration(idle_for)} ({self.activity_reason or 'no activity'}); "
                        f"stops at {format_time(self.idle_deadline)} unless used or kept alive", self.idle_since))
        if self.max_runtime and self.runtime_deadline:
            for fraction in runtime_fractions:
                if self.runtime >= self.max_runtime * fraction:
                    due.append(Warning(
                        f"runtime-{round(fraction * 100)}", "RuntimeWarning",
                        f"has run {human_duration(self.runtime)} of its {human_duration(self.max_runtime)} limit; "
                        f"stops at {format_time(self.runtime_deadline)}", None))
        return due

    def stop_reason(self) -> str | None:
        if self.max_runtime is not None and self.runtime >= self.max_runtime:
            return "MaxRuntime"
        if self.idle_deadline is not None and self.now >= self.idle_deadline:
            return "Idle"
        return None

    def stop_message(self, reason: str) -> str:
        if reason == "MaxRuntime" and self.max_runtime is not None:
            return f"stopped: total runtime {human_duration(self.runtime)} reached the {human_duration(self.max_runtime)} limit"
        limit = human_duration(self.idle_timeout) if self.idle_timeout is not None else "none"
        return (f"stopped: idle for {human_duration(self.now - self.idle_since)} "
                f"(limit {limit}; {self.activity_reason or 'no activity seen'})")

    def next_check(self, now: dt.datetime, idle_fractions: Sequence[float],
                   runtime_fractions: Sequence[float], ceiling: float = 60.0) -> float:
        moments: list[dt.datetime] = []
        if self.idle_timeout and self.idle_deadline:
            moments += [self.idle_since + self.idle_timeout * f for f in idle_fractions]
            moments.append(self.idle_deadline)
        if self.max_runtime and self.runtime_deadline:
            start = self.runtime_deadline - self.max_runtime
            moments += [start + self.max_runtime * f for f in runtime_fractions]
            moments.append(self.runtime_deadline)
        if self.keep_alive_until:
            moments.append(self.keep_alive_until)
        ahead = [(m - now).total_seconds() for m in moments if m > now]
        return max(0.2, min([ceiling, *ahead]))


def enforcement_clock(status: dict[str, Any], desired: dict[str, Any], now: dt.datetime, started_at: dt.datetime,
                      idle_timeout: dt.timedelta | None, max_runtime: dt.timedelta | None, *,
                      keep_alive_until: dt.datetime | None, keep_alive_cap: dt.timedelta,
                      keep_alive: dt.timedelta | None = None) -> EnforcementClock:
    running_since = parse_time(desired.get("runningSince")) or now
    last_activity = parse_time(status.get("lastActivity"))
    kept = keep_alive_in_force(requested_until=keep_alive_until, requested_for=keep_alive,
                               last_active=last_activity or running_since, grant=status.get("keepAliveGrant"),
                               now=now, cap=keep_alive_cap)
    if keep_alive:
        # spec.keepAlive: the workspace counts as active this long after its last activity, within the cap
        last_activity = (last_activity or running_since) + min(keep_alive, keep_alive_cap)
    # idle time counts from the latest of: activity, this run's start, the operator's own start
    idle_since = max(t for t in (last_activity, running_since, started_at) if t is not None)
    idle_deadline = idle_since + idle_timeout if idle_timeout else None
    if idle_deadline and kept.until:
        idle_deadline = max(idle_deadline, kept.until)
    runtime = dt.timedelta(seconds=int(desired.get("runtimeSeconds") or 0)) + (now - running_since)
    runtime_deadline = running_since + (max_runtime - dt.timedelta(seconds=int(desired.get("runtimeSeconds") or 0))) \
        if max_runtime else None
    return EnforcementClock(now, idle_since, idle_timeout, idle_deadline, runtime, max_runtime, runtime_deadline,
                            status.get("activityReason"), kept.until, kept.capped, kept)


def status_message(node: str | None, clock: EnforcementClock) -> str:
    parts = [f"running on {node}"]
    if clock.activity_reason:
        parts.append(clock.activity_reason)
    if clock.keep_alive_until:
        parts.append(f"kept alive until {format_time(clock.keep_alive_until)}")
    if clock.keep_alive_refused:
        parts.append(clock.keep_alive_refused)
    return "; ".join(parts)
