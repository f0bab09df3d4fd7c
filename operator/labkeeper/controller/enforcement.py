"""Idle and runtime deadlines of a running workspace: pure arithmetic over its status and the clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from labkeeper.api.units import format_time, human_duration, parse_time


@dataclass(frozen=True)
class Warning:
    key: str
    reason: str
    message: str
    since: dt.datetime | None

    def as_status(self, now: dt.datetime) -> dict:
        return {"key": self.key, "reason": self.reason, "message": self.message, "at": format_time(now),
                "since": format_time(self.since)}


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

    def status(self) -> dict:
        return {"idleSince": format_time(self.idle_since), "idleDeadline": format_time(self.idle_deadline),
                "runtimeDeadline": format_time(self.runtime_deadline)}

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
        if reason == "MaxRuntime":
            return f"stopped: total runtime {human_duration(self.runtime)} reached the {human_duration(self.max_runtime)} limit"
        return (f"stopped: idle for {human_duration(self.now - self.idle_since)} "
                f"(limit {human_duration(self.idle_timeout)}; {self.activity_reason or 'no activity seen'})")

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


def enforcement_clock(status: dict, desired: dict, now: dt.datetime, started_at: dt.datetime,
                      idle_timeout: dt.timedelta | None, max_runtime: dt.timedelta | None, *,
                      keep_alive_until: dt.datetime | None, keep_alive_cap: dt.timedelta,
                      keep_alive: dt.timedelta | None = None) -> EnforcementClock:
    running_since = parse_time(desired.get("runningSince")) or now
    last_activity = parse_time(status.get("lastActivity"))
    if keep_alive:
        # spec.keepAlive: the workspace counts as active this long after its last activity, within the cap
        last_activity = (last_activity or running_since) + min(keep_alive, keep_alive_cap)
    # idle time counts from the latest of: activity, this run's start, the operator's own start
    idle_since = max(t for t in (last_activity, running_since, started_at) if t is not None)
    refused = None
    if keep_alive_until is not None and keep_alive_until > now + keep_alive_cap:
        refused = (f"spec.keepAliveUntil {format_time(keep_alive_until)} is beyond the policy cap of "
                   f"{human_duration(keep_alive_cap)} from now; it is ignored")
        keep_alive_until = None
    if keep_alive_until is not None and keep_alive_until <= now:
        keep_alive_until = None
    idle_deadline = idle_since + idle_timeout if idle_timeout else None
    if idle_deadline and keep_alive_until:
        idle_deadline = max(idle_deadline, keep_alive_until)
    runtime = dt.timedelta(seconds=int(desired.get("runtimeSeconds") or 0)) + (now - running_since)
    runtime_deadline = running_since + (max_runtime - dt.timedelta(seconds=int(desired.get("runtimeSeconds") or 0))) \
        if max_runtime else None
    return EnforcementClock(now, idle_since, idle_timeout, idle_deadline, runtime, max_runtime, runtime_deadline,
                            status.get("activityReason"), keep_alive_until, refused)


def status_message(node: str | None, clock: EnforcementClock) -> str:
    parts = [f"running on {node}"]
    if clock.activity_reason:
        parts.append(clock.activity_reason)
    if clock.keep_alive_until:
        parts.append(f"kept alive until {format_time(clock.keep_alive_until)}")
    if clock.keep_alive_refused:
        parts.append(clock.keep_alive_refused)
    return "; ".join(parts)
