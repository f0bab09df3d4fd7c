"""When a pod's "Running" may be believed (controller/liveness.py), and what runtime a run gets when it may not
(controller/workspace_decisions.py running_time): the power cut of issue 17, where the operator comes back before
the kubelet has rewritten its pods' statuses. No API server: the Lease is fed by hand, the clocks are fakes."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api.units import format_time
from labkeeper.controller.liveness import KubeletLiveness, Sight
from labkeeper.controller.workspace_decisions import running_time

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)


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


# ---- what a run is known by ----------------------------------------------------------------------------------------
def test_a_run_watched_in_a_stretch_is_alive_while_it_lasts_and_until_its_last_renewal_after():
    clocks = Clocks()
    live = liveness(clocks)
    live.observe(lease("n1", clocks.wall()))
    renewals(live, clocks, "n1", 30)
    stretch = live.trusted_from("n1")
    assert live.sight("n1", stretch) == Sight(stretch, True, None)
    clocks.t = 75  # the renewals stopped after 30 s
    assert live.sight("n1", stretch) == Sight(None, False, T0 + 30 * S)
    live.observe(lease("n1", clocks.wall()))  # back: a new stretch; the old one ended at its last renewal
    renewals(live, clocks, "n1", 100)
    assert live.sight("n1", stretch) == Sight(T0 + 100 * S, False, T0 + 30 * S)


def test_a_run_this_process_never_saw_is_known_alive_until_the_previous_operator_last_watched_its_node():
    clocks = Clocks()
    live = liveness(clocks)
    assert live.sight("n1", None) == Sight(None, False, None)  # nothing recorded: nothing known
    live.set_prior({"watchedUntil": format_time(T0 - 5 * S), "away": {"n2": format_time(T0 - 90 * S)}})
    assert live.sight("n1", None).alive_until == T0 - 5 * S
    assert live.sight("n2", None).alive_until == T0 - 90 * S  # it did not believe n2 then
    live.set_prior({"watchedUntil": "not a time", "away": ["n2"]})  # a record it cannot read is no record
    assert live.sight("n1", None) == Sight(None, False, None)


def test_the_record_names_the_nodes_not_believed_now_with_their_last_known_moment():
    clocks = Clocks()
    live = liveness(clocks)
    live.set_prior({"watchedUntil": format_time(T0 - 5 * S), "away": {"gone": format_time(T0 - 90 * S)}})
    live.observe(lease("n1", clocks.wall()))
    live.observe(lease("n2", clocks.wall()))
    assert live.record() == {"watchedUntil": format_time(T0), "away": {
        "gone": format_time(T0 - 90 * S), "n1": format_time(T0 - 5 * S), "n2": format_time(T0 - 5 * S)}}  # settling
    for t in range(10, 40, 10):
        clocks.t = t
        live.observe(lease("n1", clocks.wall()))
        live.observe(lease("n2", clocks.wall()))
    assert live.trusted_from("n1") and live.trusted_from("n2")
    renewals(live, clocks, "n1", 75)  # n2 renews no more
    assert live.record() == {"watchedUntil": format_time(T0 + 75 * S), "away": {
        "gone": format_time(T0 - 90 * S), "n2": format_time(T0 + 30 * S)}}


# ---- runtime -----------------------------------------------------------------------------------------------------
def pod(started: dt.datetime | None = T0 - 30 * 60 * S, phase: str = "Running") -> dict:
    state = {"running": {"startedAt": format_time(started)}} if started else {"waiting": {"reason": "ContainerCreating"}}
    return {"metadata": {"name": "ws-nb"}, "status": {"phase": phase, "containerStatuses": [{"state": state}]}}


BEFORE_CUT = {"runtimeSeconds": 100, "runningSince": format_time(T0 - 30 * 60 * S),
              "lastSeenRunning": format_time(T0 - 30 * 60 * S)}
CUT = T0 - 20 * 60 * S  # the operator before this one last watched the node then
UNWATCHED = Sight(None, False, CUT)
SETTLED = Sight(T0 - 10 * S, False, CUT)


@pytest.mark.parametrize(("case", "current_pod", "sight", "runtime", "since", "seen"), [
    # the operator is back before the kubelet: the stale "Running" ends nothing
    ("stale Running, kubelet not believed", pod(), UNWATCHED, 100, T0 - 30 * 60 * S, CUT),
    # the kubelet restarted the containers: the old run ends when last known alive, the new one counts from its start
    ("restarted, not yet believed", pod(T0 - 60 * S), UNWATCHED, 100 + 600, T0 - 60 * S, T0 - 60 * S),
    ("restarted, believed", pod(T0 - 60 * S), SETTLED, 100 + 600, T0 - 60 * S, T0 - 60 * S),
    # the pod went while nobody watched: the run ends when last known alive
    ("pod gone", None, SETTLED, 100 + 600, None, None),
    ("pod not running", pod(None, phase="Pending"), UNWATCHED, 100 + 600, None, None),
    # nothing known of it: it ends where its status last said it was seen
    ("pod gone, nothing recorded", None, Sight(None, False, None), 100, None, None),
    # the kubelet believed for its settle says the same containers run: they ran all along
    ("same containers, believed", pod(), SETTLED, 100, T0 - 30 * 60 * S, CUT),
    # a run this process watched ends when its pod goes
    ("watched, pod gone", None, Sight(T0 - 3600 * S, True, None), 100 + 1800, None, None),
])
def test_a_run_nobody_watched_ends_where_it_was_last_known_alive(case, current_pod, sight, runtime, since, seen):
    got = running_time(BEFORE_CUT, current_pod, T0, sight)
    assert got == {"runtimeSeconds": runtime, "runningSince": format_time(since) if since else None,
                   "lastSeenRunning": format_time(seen) if seen else None}, case


@pytest.mark.parametrize("sight", [Sight(T0 - 3600 * S, True, None), SETTLED, UNWATCHED])
def test_a_running_workspace_writes_no_heartbeat(sight):
    status = {"runtimeSeconds": 0, "runningSince": format_time(T0 - 600 * S),
              "lastSeenRunning": format_time(T0 - 600 * S)}
    assert running_time(status, pod(T0 - 600 * S), T0, sight) == status
