"""When a pod's "Running" may be believed (controller/liveness.py), and what runtime a run gets when it may not
(controller/workspace_decisions.py running_time): the power cut of issue 17, where the operator comes back before
the kubelet has rewritten its pods' statuses. No API server: the Lease is fed by hand, the clocks are fakes."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api.units import format_time
from labkeeper.controller.liveness import KubeletLiveness
from labkeeper.controller.workspace_decisions import running_time

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
REPORT = dt.timedelta(minutes=1)


class Clocks:
    """The monotonic clock, the wall clock and the operator's clock move together, by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> dt.datetime:
        return T0 + self.t * S


def lease(node: str, renewed: dt.datetime, duration: int = 40) -> dict:
    return {"metadata": {"name": node},
            "spec": {"renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "leaseDurationSeconds": duration}}


def liveness(clocks: Clocks, settle: float = 20.0) -> KubeletLiveness:
    return KubeletLiveness(clocks.wall, settle=settle, monotonic=clocks.monotonic, wall=clocks.wall)


def renewals(live: KubeletLiveness, clocks: Clocks, node: str, until: float, every: float = 10.0) -> None:
    while clocks.t + every <= until:
        clocks.t += every
        live.observe(lease(node, clocks.wall()))
    clocks.t = until


def test_a_kubelet_is_believed_only_once_it_has_renewed_without_a_gap_for_the_settle():
    clocks = Clocks()
    live = liveness(clocks)
    assert live.trusted_from("n1") is None  # never seen
    live.observe(lease("n1", clocks.wall()))
    assert live.trusted_from("n1") is None  # settling
    renewals(live, clocks, "n1", 25)
    assert live.trusted_from("n1") == T0 + 25 * S  # first asked then
    renewals(live, clocks, "n1", 95)
    assert live.trusted_from("n1") == T0 + 25 * S  # the same stretch


def test_a_lease_that_lapses_is_not_believed_and_a_return_settles_again():
    clocks = Clocks()
    live = liveness(clocks)
    live.observe(lease("n1", clocks.wall()))
    renewals(live, clocks, "n1", 30)
    assert live.trusted_from("n1") == T0 + 30 * S
    clocks.t = 75  # no renewal since 30 s: more than the lease's 40 s
    assert live.trusted_from("n1") is None
    live.observe(lease("n1", clocks.wall()))  # the kubelet is back
    assert live.trusted_from("n1") is None
    renewals(live, clocks, "n1", 100)
    assert live.trusted_from("n1") == T0 + 100 * S


def test_a_gap_shorter_than_the_lease_is_still_a_restart():
    clocks = Clocks()
    live = liveness(clocks)
    live.observe(lease("n1", clocks.wall()))
    renewals(live, clocks, "n1", 30)
    assert live.trusted_from("n1") is not None
    clocks.t = 55  # 25 s since the last renewal (every 10 s): the kubelet was away
    live.observe(lease("n1", clocks.wall()))
    assert live.trusted_from("n1") is None


def test_a_lease_already_stale_when_first_seen_is_not_believed_until_it_renews_and_settles():
    clocks = Clocks()
    clocks.t = 300
    live = liveness(clocks)
    live.observe(lease("n1", T0 + 100 * S))  # the operator came back first: renewed 200 s ago
    assert live.trusted_from("n1") is None
    live.observe(lease("n1", T0 + 100 * S))  # the same renewal again (a resync) changes nothing
    renewals(live, clocks, "n1", 310)
    assert live.trusted_from("n1") is None  # settling
    renewals(live, clocks, "n1", 335)
    assert live.trusted_from("n1") == T0 + 335 * S
    live.forget("n1")
    assert live.trusted_from("n1") is None


# ---- runtime -----------------------------------------------------------------------------------------------------
def pod(started: dt.datetime | None = T0 - 30 * 60 * S, phase: str = "Running") -> dict:
    state = {"running": {"startedAt": format_time(started)}} if started else {"waiting": {"reason": "ContainerCreating"}}
    return {"metadata": {"name": "ws-nb"}, "status": {"phase": phase, "containerStatuses": [{"state": state}]}}


BEFORE_CUT = {"runtimeSeconds": 100, "runningSince": format_time(T0 - 30 * 60 * S),
              "lastSeenRunning": format_time(T0 - 20 * 60 * S)}  # last seen 20 min ago, then the cut


@pytest.mark.parametrize(("case", "current_pod", "trusted_from", "runtime", "since", "seen"), [
    # the operator is back before the kubelet: the stale "Running" gives no heartbeat and ends nothing
    ("stale Running, kubelet not believed", pod(), None, 100, T0 - 30 * 60 * S, T0 - 20 * 60 * S),
    # the kubelet restarted the containers: the old run ends when last seen, the new one counts from its start
    ("restarted, not yet believed", pod(T0 - 60 * S), None, 100 + 600, T0 - 60 * S, T0 - 60 * S),
    ("restarted, believed", pod(T0 - 60 * S), T0 - 10 * S, 100 + 600, T0 - 60 * S, T0),
    # the pod went while nobody watched: the run ends when last seen
    ("pod gone", None, T0 - 10 * S, 100 + 600, None, None),
    ("pod not running", pod(None, phase="Pending"), None, 100 + 600, None, None),
    # the kubelet has been believed for its settle and says the same containers run: they ran all along
    ("same containers, believed", pod(), T0 - 10 * S, 100, T0 - 30 * 60 * S, T0),
])
def test_a_run_last_seen_before_the_kubelet_was_believed_ends_where_it_was_last_seen(
        case, current_pod, trusted_from, runtime, since, seen):
    got = running_time(BEFORE_CUT, current_pod, T0, trusted_from, REPORT)
    assert got == {"runtimeSeconds": runtime, "runningSince": format_time(since) if since else None,
                   "lastSeenRunning": format_time(seen) if seen else None}, case


@pytest.mark.parametrize(("case", "seen_ago", "trusted_from", "seen"), [
    ("due after a report interval", 61, T0 - 3600 * S, T0),
    ("not due within it", 30, T0 - 3600 * S, T0 - 30 * S),
    ("not while the kubelet is not believed", 61, None, T0 - 61 * S),
])
def test_the_heartbeat_is_written_once_a_report_interval_and_only_for_a_believed_kubelet(
        case, seen_ago, trusted_from, seen):
    status = {"runtimeSeconds": 0, "runningSince": format_time(T0 - 600 * S),
              "lastSeenRunning": format_time(T0 - seen_ago * S)}
    got = running_time(status, pod(T0 - 600 * S), T0, trusted_from, REPORT)
    assert got["lastSeenRunning"] == format_time(seen), case
    assert got["runningSince"] == format_time(T0 - 600 * S) and got["runtimeSeconds"] == 0


def test_a_run_watched_all_along_ends_when_its_pod_goes():
    status = {"runtimeSeconds": 0, "runningSince": format_time(T0 - 600 * S),
              "lastSeenRunning": format_time(T0 - 30 * S)}
    assert running_time(status, None, T0, T0 - 3600 * S, REPORT) == {
        "runtimeSeconds": 600, "runningSince": None, "lastSeenRunning": None}
