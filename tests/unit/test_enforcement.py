"""Idle and runtime deadlines are arithmetic over status and one clock: no sleeping, no cluster."""

import datetime as dt

from labkeeper.controller.enforcement import enforcement_clock

T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


def fmt(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def clock_at(now, *, last_activity=None, running_since=T0, runtime_before=0, started_at=T0 - 60 * MIN,
             idle=30 * MIN, max_runtime=24 * 60 * MIN, keep_alive=None, cap=24 * 60 * MIN, reason=None):
    status = {"lastActivity": fmt(last_activity) if last_activity else None, "activityReason": reason}
    desired = {"runningSince": fmt(running_since), "runtimeSeconds": runtime_before}
    return enforcement_clock(status, desired, now, started_at, idle, max_runtime,
                             keep_alive_until=keep_alive, keep_alive_cap=cap)


def test_an_idle_workspace_gets_both_warnings_then_stops_at_its_deadline():
    assert clock_at(T0 + 23 * MIN).due_warnings([0.8, 0.95], []) == []
    at_24 = clock_at(T0 + 24 * MIN).due_warnings([0.8, 0.95], [])
    assert [w.key for w in at_24] == ["idle-80"]
    at_29 = clock_at(T0 + 29 * MIN, reason="cpu 0.00 cores").due_warnings([0.8, 0.95], [])
    assert [w.key for w in at_29] == ["idle-80", "idle-95"]
    assert "cpu 0.00 cores" in at_29[1].message
    assert clock_at(T0 + 29 * MIN).stop_reason() is None
    assert clock_at(T0 + 30 * MIN).stop_reason() == "Idle"


def test_activity_moves_the_deadline():
    clock = clock_at(T0 + 40 * MIN, last_activity=T0 + 20 * MIN, reason="gpu 41% SM on 1g.10gb")
    assert clock.stop_reason() is None
    assert clock.idle_deadline == T0 + 50 * MIN


def test_after_an_operator_restart_the_idle_clock_starts_from_the_restart():
    # idle since T0 for 27 of 30 minutes, then the operator restarts at T0+27m
    clock = clock_at(T0 + 50 * MIN, started_at=T0 + 27 * MIN)
    assert clock.stop_reason() is None
    assert clock.idle_deadline == T0 + 57 * MIN


def test_keep_alive_within_the_cap_postpones_the_stop_and_beyond_it_is_capped_from_when_it_was_asked():
    kept = clock_at(T0 + 45 * MIN, keep_alive=T0 + 120 * MIN)
    assert kept.stop_reason() is None and kept.idle_deadline == T0 + 120 * MIN and kept.keep_alive_refused is None
    # 48h asked at T0+45m with a 24h cap: kept until T0+45m+24h, and the status says it was cut
    asked = T0 + 48 * 60 * MIN
    capped = clock_at(T0 + 45 * MIN, keep_alive=asked)
    assert capped.stop_reason() is None and capped.keep_alive_until == T0 + 45 * MIN + 24 * 60 * MIN
    assert "beyond the policy cap of 24h00m" in capped.keep_alive_refused
    grant = capped.status()["keepAliveGrant"]
    assert grant == {"requested": fmt(asked), "until": fmt(T0 + 45 * MIN + 24 * 60 * MIN)}
    # later passes keep the grant made when the request was first seen: the cap never slides
    later = T0 + 45 * MIN + 24 * 60 * MIN + MIN
    status = {"lastActivity": None, "keepAliveGrant": grant}
    desired = {"runningSince": fmt(T0), "runtimeSeconds": 0}
    after = enforcement_clock(status, desired, later, T0 - 60 * MIN, 30 * MIN, None,
                              keep_alive_until=asked, keep_alive_cap=24 * 60 * MIN)
    assert after.keep_alive_until is None and after.stop_reason() == "Idle"
    assert after.status()["keepAliveUntil"] is None and after.status()["keepAliveGrant"] == grant
    expired = clock_at(T0 + 45 * MIN, keep_alive=T0 + 40 * MIN)
    assert expired.stop_reason() == "Idle"


def test_idle_since_is_never_in_the_future_while_a_keep_alive_counts_the_workspace_active():
    status = {"lastActivity": fmt(T0 + 10 * MIN), "activityReason": "cpu 0.00 cores"}
    desired = {"runningSince": fmt(T0), "runtimeSeconds": 0}
    kept = enforcement_clock(status, desired, T0 + 20 * MIN, T0 - 60 * MIN, 30 * MIN, None,
                             keep_alive_until=None, keep_alive_cap=24 * 60 * MIN, keep_alive=60 * MIN)
    # kubectl prints a future idleSince as <invalid>; kept active until 70m, the workspace is not idle yet
    assert kept.status()["idleSince"] is None
    assert kept.status()["keepAliveUntil"] == fmt(T0 + 70 * MIN)
    idle = clock_at(T0 + 20 * MIN, last_activity=T0 + 10 * MIN)
    assert idle.status()["idleSince"] == fmt(T0 + 10 * MIN) and idle.status()["keepAliveUntil"] is None


def test_runtime_counts_every_segment_not_just_the_last():
    # 20 hours in earlier runs, this run started at T0: the 24h limit falls at T0+4h
    clock = clock_at(T0 + 3 * 60 * MIN, runtime_before=20 * 3600, last_activity=T0 + 179 * MIN, idle=None)
    assert [w.key for w in clock.due_warnings([], [0.75, 0.9])] == ["runtime-75", "runtime-90"]
    assert clock.stop_reason() is None
    assert clock.runtime_deadline == T0 + 4 * 60 * MIN
    assert clock_at(T0 + 4 * 60 * MIN, runtime_before=20 * 3600, idle=None).stop_reason() == "MaxRuntime"


def test_the_next_check_is_the_next_warning_or_deadline():
    clock = clock_at(T0 + 10 * MIN)
    assert clock.next_check(T0 + 10 * MIN, [0.8, 0.95], [0.75, 0.9], ceiling=3600) == 14 * 60


def test_keep_alive_counts_the_workspace_active_that_long_after_its_last_activity_within_the_cap():
    def kept(keep_alive, cap=24 * 60 * MIN):
        status = {"lastActivity": fmt(T0 + 10 * MIN), "activityReason": "cpu 0.00 cores"}
        desired = {"runningSince": fmt(T0), "runtimeSeconds": 0}
        return enforcement_clock(status, desired, T0 + 45 * MIN, T0 - 60 * MIN, 30 * MIN, None,
                                 keep_alive_until=None, keep_alive_cap=cap, keep_alive=keep_alive)

    # last active at 10m, idle 30m: culled at 40m without keep-alive, at 70m with 30m of keep-alive
    assert kept(None).stop_reason() == "Idle"
    assert kept(30 * MIN).stop_reason() is None and kept(30 * MIN).idle_deadline == T0 + 70 * MIN
    # a keep-alive beyond the policy cap counts only up to the cap: 10m + 5m + 30m = 45m
    assert kept(3 * 60 * MIN, cap=5 * MIN).idle_deadline == T0 + 45 * MIN
    assert kept(3 * 60 * MIN, cap=5 * MIN).stop_reason() == "Idle"
