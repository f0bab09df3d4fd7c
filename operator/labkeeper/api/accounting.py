"""Usage accounting and fair share: pure arithmetic over timestamps the API already keeps.

Each GPU Workspace carries a short meter in its status (`status.meter`): one mark per change of what it does
with devices (waiting for one, holding one while active, holding one while its activity verdict says idle,
holding one after a stop, holding none), each with the moment that change happened as the status itself
records it (waitingSince, runningSince, idleSince, holdUntil - gpuHoldAfterStop), not when a pass noticed.
The marks are written with the status writes that the change causes anyway, so metering costs no write.

A user's closed history lives in her GPUUser's `status.accounting`: daily buckets per workspace up to
`through`, and her decayed usage at `through`. The operator folds the marks after `through` into it every
flush interval (one write per user per interval) under the object's resourceVersion, so a fold killed half
way is simply done again. Everything after `through` is read live from the marks, so fair share, reports and
metrics never lag the flush, and nothing between flushes is lost to a restart or a reboot."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labkeeper.api.devices import profile_of
from labkeeper.api.names import namespace_for
from labkeeper.api.phases import RUNNING_PHASES, WAITING_PHASES
from labkeeper.api.units import format_time, parse_time

WAITING, ACTIVE, IDLE, HELD, OFF = "waiting", "active", "idle", "held", "off"
HOLDING = (ACTIVE, IDLE, HELD)  # states in which a workspace keeps devices from everyone else
POD_PENDING = {("Pending", "Unschedulable"), ("Pending", "Scheduling")}  # a pod pinned to its devices
METER_HORIZON = dt.timedelta(days=2)  # marks closed longer ago than this have long been folded
METER_MAX = 48
RETENTION_DAYS = 35


@dataclass(frozen=True)
class Mark:
    """From `since` on, the workspace was in `state` with `gpu_equivalents` of devices; a hold ends by itself at
    `until`; `reason` is the stop that began this state (Idle, MaxRuntime, Stopped, ...)."""

    state: str
    since: dt.datetime
    gpu_equivalents: float = 0.0
    until: dt.datetime | None = None
    reason: str | None = None

    def as_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "since": format_time(self.since), "gpuEquivalents": self.gpu_equivalents}
        if self.until is not None:
            out["until"] = format_time(self.until)
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> Mark | None:
        since = parse_time(entry.get("since"))
        if since is None or entry.get("state") not in (WAITING, ACTIVE, IDLE, HELD, OFF):
            return None
        return cls(entry["state"], since, float(entry.get("gpuEquivalents") or 0), parse_time(entry.get("until")),
                   entry.get("reason"))


def current_mark(status: Mapping[str, Any], phase: str, reason: str, now: dt.datetime, *, idle_grace: dt.timedelta,
                 hold_after_stop: dt.timedelta, previous: Mark | None) -> Mark:
    """What the workspace does with devices, read from the status a pass is about to write.

    Idle is what the agent's activity verdict says: the stretch since its last active sample (lastActivity) once that
    is older than one report and one check interval (`idle_grace`; while active the agent moves lastActivity at least
    that often). Not idleSince: that is the enforcement clock, which an operator restart or a keep-alive moves
    without anything having been used. Until the agent has judged this run (a lastActivity from before runningSince
    is the previous run's) it counts as active. A pod that exists holds its devices, from its creation on."""
    eq = float(status.get("gpuEquivalents") or 0)
    stop = status.get("stopReason")
    if phase in RUNNING_PHASES or phase == "Starting" or (phase, reason) in POD_PENDING:
        idle_since = idle_from(status)
        if phase in RUNNING_PHASES and idle_since is not None and now - idle_since >= idle_grace:
            return Mark(IDLE, idle_since, eq)
        if previous is not None and previous.state == ACTIVE:
            return previous
        since = now
        if previous is not None and previous.state == IDLE:
            last = parse_time(status.get("lastActivity"))
            if last is None or last <= previous.since:
                # idleSince moved without new activity (the operator restarted and its idle clocks with it): the
                # workspace is as idle as before
                return previous
            since = min(last, now)  # active again from the sample that said so
        return Mark(ACTIVE, since, eq)
    if status.get("waitingSince") and phase in WAITING_PHASES:
        return Mark(WAITING, parse_time(status["waitingSince"]) or now, eq)
    hold_until = parse_time(status.get("holdUntil"))
    was_running = previous is not None and previous.state in (ACTIVE, IDLE)
    if hold_until is not None and hold_until > now:
        since = min(hold_until - hold_after_stop, now)
        began = stop if was_running else (previous.reason if previous is not None and previous.state == HELD else None)
        return Mark(HELD, since, eq, until=hold_until, reason=began)
    if previous is not None and previous.state == OFF:
        return previous
    began = (stop or phase) if was_running else None
    if previous is not None and previous.state == HELD:
        return Mark(OFF, min(previous.until or now, now), 0.0)
    return Mark(OFF, now, 0.0, reason=began)


def idle_from(status: Mapping[str, Any]) -> dt.datetime | None:
    """The agent's last active sample of this run, from which an idle stretch is dated; None before its first verdict."""
    seen = parse_time(status.get("lastActivity"))
    running_since = parse_time(status.get("runningSince"))
    if seen is None or (running_since is not None and seen < running_since - dt.timedelta(seconds=1)):
        return None
    return max(seen, running_since) if running_since is not None else seen


def next_meter(meter: Iterable[Mapping[str, Any]], mark: Mark, now: dt.datetime) -> list[dict[str, Any]]:
    """The meter with `mark` appended when it says something new; marks long folded are dropped."""
    marks = [m for m in (Mark.from_status(e) for e in meter or ()) if m is not None]
    last = marks[-1] if marks else None
    if last is None or (last.state, last.gpu_equivalents, last.until) != (mark.state, mark.gpu_equivalents, mark.until):
        if last is not None and mark.since < last.since:
            mark = Mark(mark.state, last.since, mark.gpu_equivalents, mark.until, mark.reason)
        if not (last is None and mark.state == OFF):
            marks.append(mark)
    keep = [m for i, m in enumerate(marks) if i + 1 == len(marks) or marks[i + 1].since >= now - METER_HORIZON]
    return [m.as_status() for m in keep[-METER_MAX:]]


def marks_of(ws: Mapping[str, Any]) -> list[Mark]:
    return [m for m in (Mark.from_status(e) for e in (ws.get("status") or {}).get("meter") or ()) if m is not None]


# ---- segments and buckets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    state: str
    start: dt.datetime
    end: dt.datetime
    gpu_equivalents: float


@dataclass
class Fold:
    """What the marks say about (start, end]: time in each state, stops that began there, waits that ended there."""

    segments: list[Segment] = field(default_factory=list)
    stops: list[tuple[dt.datetime, str]] = field(default_factory=list)
    waits: list[tuple[dt.datetime, float]] = field(default_factory=list)  # (when it started, seconds it waited)


def fold(marks: list[Mark], start: dt.datetime | None, end: dt.datetime) -> Fold:
    out = Fold()
    for i, mark in enumerate(marks):
        stop = marks[i + 1].since if i + 1 < len(marks) else end
        if mark.reason and (start is None or mark.since > start) and mark.since <= end:
            out.stops.append((mark.since, mark.reason))
        if mark.state == WAITING and i + 1 < len(marks) and marks[i + 1].state == ACTIVE \
                and (start is None or stop > start) and stop <= end:
            # a wait that ended in a start; one given up (stopped, deleted) is waiting time but no wait to a start
            out.waits.append((stop, (stop - mark.since).total_seconds()))
        if mark.state == OFF:
            continue
        if mark.state == HELD and mark.until is not None:
            stop = min(stop, mark.until)  # a hold ends at its expiry, whenever a pass noticed
        a = max(mark.since, start) if start is not None else mark.since
        b = min(stop, end)
        if b > a:
            out.segments.append(Segment(mark.state, a, b, mark.gpu_equivalents))
    return out


def split_days(segment: Segment) -> list[tuple[str, float]]:
    """(UTC date, seconds) of a segment, cut at midnight."""
    out = []
    t = segment.start
    while t < segment.end:
        midnight = dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        b = min(midnight, segment.end)
        out.append((t.date().isoformat(), (b - t).total_seconds()))
        t = b
    return out


SECONDS_FIELDS = {ACTIVE: "activeSeconds", IDLE: "idleSeconds", HELD: "heldAfterStopSeconds"}


def add_to_days(days: list[dict[str, Any]], workspace: str, result: Fold) -> list[dict[str, Any]]:
    """Daily buckets (one per date and workspace) with `result` added. GPU figures are GPU-equivalent-seconds;
    waitingSeconds is plain time spent waiting for a device."""
    index = {(d["date"], d["workspace"]): dict(d) for d in days}

    def bucket(date: str) -> dict[str, Any]:
        return index.setdefault((date, workspace), {"date": date, "workspace": workspace})

    for seg in result.segments:
        for date, seconds in split_days(seg):
            b = bucket(date)
            if seg.state == WAITING:
                b["waitingSeconds"] = round(b.get("waitingSeconds", 0) + seconds, 3)
            else:
                key = SECONDS_FIELDS[seg.state]
                b[key] = round(b.get(key, 0) + seconds * seg.gpu_equivalents, 3)
    for at, reason in result.stops:
        b = bucket(at.date().isoformat())
        b["stops"] = {**(b.get("stops") or {}), reason: (b.get("stops") or {}).get(reason, 0) + 1}
    for at, seconds in result.waits:
        b = bucket(at.date().isoformat())
        b["waits"] = [*(b.get("waits") or []), round(seconds, 3)]
    return [index[k] for k in sorted(index)]


def prune_days(days: list[dict[str, Any]], now: dt.datetime, keep_days: int = RETENTION_DAYS) -> list[dict[str, Any]]:
    oldest = (now - dt.timedelta(days=keep_days)).date().isoformat()
    return [d for d in days if d["date"] >= oldest]


# ---- fair share ------------------------------------------------------------------------------------------------
def decay(value: float, since: dt.datetime, now: dt.datetime, half_life: dt.timedelta) -> float:
    if now <= since or value == 0:
        return value
    return float(value * 0.5 ** ((now - since) / half_life))


def decayed_hours(segments: Iterable[Segment], now: dt.datetime, half_life: dt.timedelta) -> float:
    """GPU-equivalent-hours of the holding segments, each moment weighted 2^-(age / half_life): the integral, so
    how often a fold runs changes nothing."""
    h = half_life.total_seconds()
    total = 0.0
    for seg in segments:
        if seg.state not in HOLDING or seg.gpu_equivalents <= 0:
            continue
        age_end = (now - seg.end).total_seconds()
        age_start = (now - seg.start).total_seconds()
        total += seg.gpu_equivalents * h / math.log(2) * (2 ** (-age_end / h) - 2 ** (-age_start / h)) / 3600
    return total


def user_accounting(user: Mapping[str, Any]) -> dict[str, Any]:
    return dict((user.get("status") or {}).get("accounting") or {})


def folded_usage(user: Mapping[str, Any], now: dt.datetime, half_life: dt.timedelta) -> float:
    """Her decayed GPU-equivalent-hours as her accounting last folded them (`through`), decayed to now."""
    acc = user_accounting(user)
    through = parse_time(acc.get("through"))
    return decay(float(acc.get("decayedGpuHours") or 0), through, now, half_life) if through else 0.0


def decayed_usage(user: Mapping[str, Any], workspaces: Iterable[Mapping[str, Any]], now: dt.datetime, half_life: dt.timedelta) -> float:
    """Her decayed GPU-equivalent-hours now: what was folded, decayed from `through`, plus the marks since."""
    through = parse_time(user_accounting(user).get("through"))
    value = folded_usage(user, now, half_life)
    for ws in workspaces:
        value += decayed_hours(fold(marks_of(ws), through, now).segments, now, half_life)
    return value


def relative_usage(decayed: float, share: float) -> float:
    """Decayed usage per unit of the tier's share: who is furthest below her share goes first."""
    return decayed / share if share > 0 else math.inf if decayed > 0 else 0.0


def settle_time(report_interval: dt.timedelta, check_interval: dt.timedelta) -> dt.timedelta:
    """How far back a mark can still be dated when it is written: an idle stretch is seen once it is a report and a
    check old, and dated from its start. A fold stops this far before now, so no stretch is counted as one state
    and then, after a later mark dates back into it, as another."""
    return 2 * (report_interval + check_interval)


def fold_user(user: Mapping[str, Any], workspaces: Iterable[Mapping[str, Any]], now: dt.datetime, half_life: dt.timedelta,
              settle: dt.timedelta = dt.timedelta(0)) -> dict[str, Any]:
    """Her status.accounting with everything up to `now - settle` folded in."""
    acc = user_accounting(user)
    through = parse_time(acc.get("through"))
    # to the whole second: `through` is stored that way, and the next fold starts exactly where this one ended
    horizon = (now - settle).replace(microsecond=0)
    if through is not None and horizon <= through:
        return acc
    now = horizon
    days = list(acc.get("days") or [])
    segments: list[Segment] = []
    for ws in workspaces:
        result = fold(marks_of(ws), through, now)
        segments += result.segments
        days = add_to_days(days, ws["metadata"]["name"], result)
    decayed = decay(float(acc.get("decayedGpuHours") or 0), through, now, half_life) if through else 0.0
    decayed += decayed_hours(segments, now, half_life)
    return {"through": format_time(now), "decayedGpuHours": round(decayed, 6), "days": prune_days(days, now)}


# ---- the report ---------------------------------------------------------------------------------------------------
@dataclass
class UserReport:
    user: str
    tier: str
    active: float = 0.0  # GPU-equivalent-seconds
    idle: float = 0.0
    held_after_stop: float = 0.0
    waiting: float = 0.0  # seconds
    waits: list[float] = field(default_factory=list)
    stops: dict[str, int] = field(default_factory=dict)
    decayed_gpu_hours: float = 0.0
    relative_usage: float = 0.0
    workspaces: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def held(self) -> float:
        return self.active + self.idle + self.held_after_stop


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def report(users: Iterable[Mapping[str, Any]], workspaces: Iterable[Mapping[str, Any]], now: dt.datetime, since: dt.datetime,
           half_life: dt.timedelta, shares: Mapping[str, float] | None = None) -> list[UserReport]:
    """Per user, (since, now]: folded buckets of whole days from `since`'s date on, plus the live marks."""
    by_ns: dict[str, list[Mapping[str, Any]]] = {}
    for ws in workspaces:
        by_ns.setdefault(ws["metadata"]["namespace"], []).append(ws)
    first_day = since.date().isoformat()
    out = []
    for user in sorted(users, key=lambda u: u["metadata"]["name"]):
        name = user["metadata"]["name"]
        tier = (user.get("spec") or {}).get("tier") or ""
        rep = UserReport(name, tier)
        acc = user_accounting(user)
        through = parse_time(acc.get("through"))
        rows = [d for d in acc.get("days") or [] if d["date"] >= first_day]
        mine = by_ns.get(namespace_for(name), [])
        for ws in mine:
            live = fold(marks_of(ws), max(through, since) if through else since, now)
            rows = add_to_days(rows, ws["metadata"]["name"], live)
        for d in rows:
            per_ws = rep.workspaces.setdefault(d["workspace"], {"active": 0.0, "idle": 0.0, "heldAfterStop": 0.0,
                                                                 "waiting": 0.0, "stops": {}})
            for attr, key, ws_key in (("active", "activeSeconds", "active"), ("idle", "idleSeconds", "idle"),
                                      ("held_after_stop", "heldAfterStopSeconds", "heldAfterStop"),
                                      ("waiting", "waitingSeconds", "waiting")):
                value = float(d.get(key) or 0)
                setattr(rep, attr, getattr(rep, attr) + value)
                per_ws[ws_key] += value
            rep.waits += [float(w) for w in d.get("waits") or []]
            for reason, n in (d.get("stops") or {}).items():
                rep.stops[reason] = rep.stops.get(reason, 0) + int(n)
                per_ws["stops"][reason] = per_ws["stops"].get(reason, 0) + int(n)
        rep.decayed_gpu_hours = decayed_usage(user, mine, now, half_life)
        rep.relative_usage = relative_usage(rep.decayed_gpu_hours, (shares or {}).get(name, 1.0))
        out.append(rep)
    return out


def relative_usages(users: Iterable[Mapping[str, Any]], now: dt.datetime, half_life: dt.timedelta,
                    share_of: Callable[[str | None], float]) -> dict[str, float]:
    """username → decayed usage relative to her tier's share (`share_of(tier)`), as the queue weighs it: her usage
    as her accounting last folded it (every flushInterval), decayed to now. Two users' order by it holds between
    their folds (every usage decays alike), so the queue does not move, and every waiter's status is not written
    again, with each second a running workspace accrues; a run weighs from the fold after it (flushInterval plus the
    settle, minutes, against a half-life of hours)."""
    return {user["metadata"]["name"]: relative_usage(folded_usage(user, now, half_life),
                                                     share_of((user.get("spec") or {}).get("tier")))
            for user in users}


def capacity_equivalents(capacity: Mapping[tuple[str, str], int], weights: Mapping[str, float]) -> float:
    """GPU equivalents the lab's nodes offer (admission's capacity: open or not), by the policy's weights."""
    total = 0.0
    for (_node, resource), count in capacity.items():
        total += weights.get(profile_of(resource), 1.0) * count
    return total
