"""The agent writes a workspace's activity to the API only when it says something new."""

import datetime as dt

from activity_node import T0

from labkeeper.agent.activity import PublishThrottle, Verdict
from labkeeper.api.resources import wire

KEY = ("lab-alice", "train")
REPORT = dt.timedelta(minutes=5)
MIN = dt.timedelta(minutes=1)


def busy(reason="gpu 41% SM on 1g.10gb"):
    return Verdict(True, reason, {})


def idle(reason="cpu 0.00 cores; gpu idle 1m", gist="cpu; gpu idle"):
    return Verdict(False, reason, {}, gist)


def test_an_unchanged_idle_verdict_is_written_once_then_never_again():
    throttle = PublishThrottle(REPORT)
    assert throttle.decide(KEY, idle(), T0) is not None
    for minute in range(1, 120):
        assert throttle.decide(KEY, idle(f"cpu 0.00 cores; gpu idle {minute + 1}m"), T0 + minute * MIN) is None


def test_an_active_workspace_is_reported_at_most_once_per_report_interval():
    throttle = PublishThrottle(REPORT)
    writes = [t for t in (T0 + m * MIN for m in range(0, 31)) if throttle.decide(KEY, busy(), t)]
    assert writes == [T0 + m * MIN for m in (0, 5, 10, 15, 20, 25, 30)]
    assert wire(throttle.decide(KEY, busy(), T0 + 35 * MIN)) == {
        "activityReason": "gpu 41% SM on 1g.10gb", "lastActivity": "2026-11-23T09:35:00Z"}


def test_going_idle_is_written_at_once_with_the_last_moment_of_activity():
    throttle = PublishThrottle(REPORT)
    throttle.decide(KEY, busy(), T0)
    assert throttle.decide(KEY, busy(), T0 + 3 * MIN) is None  # within the report interval
    assert wire(throttle.decide(KEY, idle(), T0 + 4 * MIN)) == {
        "activityReason": "cpu 0.00 cores; gpu idle 1m", "lastActivity": "2026-11-23T09:03:00Z"}


def test_waking_up_is_written_at_once():
    throttle = PublishThrottle(REPORT)
    throttle.decide(KEY, busy(), T0)
    throttle.decide(KEY, idle(), T0 + MIN)
    assert wire(throttle.decide(KEY, busy("cpu 3.10 cores"), T0 + 2 * MIN)) == {
        "activityReason": "cpu 3.10 cores", "lastActivity": "2026-11-23T09:02:00Z"}


def test_a_restarted_agent_restarts_the_idle_clock_but_then_stays_quiet():
    restarted = PublishThrottle(REPORT)
    assert wire(restarted.decide(KEY, idle(), T0 + 50 * MIN)) == {
        "activityReason": "cpu 0.00 cores; gpu idle 1m", "lastActivity": "2026-11-23T09:50:00Z"}
    assert restarted.decide(KEY, idle(), T0 + 51 * MIN) is None


def test_a_workspace_watched_again_after_a_stop_is_published_afresh():
    throttle = PublishThrottle(REPORT)
    throttle.decide(KEY, idle(), T0)
    throttle.retain(set())
    assert throttle.decide(KEY, idle(), T0 + MIN) is not None


def test_an_idle_verdict_that_says_something_new_is_written_without_moving_the_idle_clock():
    throttle = PublishThrottle(REPORT)
    throttle.decide(KEY, busy(), T0)
    throttle.decide(KEY, idle("cpu not measured yet; gpu idle 1m", "cpu not measured; gpu idle"), T0 + MIN)
    held = idle("cpu 0.00 cores; gpu idle 2m (0% SM on 1g.10gb with 6.0 GiB held; memory not counted)",
                "cpu; gpu idle, held on 1g.10gb")
    assert wire(throttle.decide(KEY, held, T0 + 2 * MIN)) == {
        "activityReason": held.reason, "lastActivity": "2026-11-23T09:00:00Z"}
    assert throttle.decide(KEY, idle(held.reason.replace("2m", "9m"), held.gist), T0 + 9 * MIN) is None
