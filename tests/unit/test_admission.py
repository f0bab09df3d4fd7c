"""Who gets the next device, decided from plain facts: what nodes offer, what pods and holds take, who waits
and since when. No API server: tables of typed inputs and the decision they must give."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api.admission import (
    Claim,
    Waiter,
    capacity_of,
    decide,
    hold_claim,
    pinned_node,
    queue_key,
    usage,
)

T0 = dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)
MIG1 = "nvidia.com/mig-1g.10gb"
MIG3 = "nvidia.com/mig-3g.40gb"
BALANCED = {("h100", MIG1): 2, ("h100", "nvidia.com/mig-2g.20gb"): 1, ("h100", MIG3): 1}


def pod(owner: str, resource: str = MIG1, node: str = "h100", count: int = 1, priority: int = 10000,
        terminating: bool = False) -> Claim:
    return Claim(f"lab-{owner}/ws", node, resource, count, priority=priority, terminating=terminating)


def hold(owner: str, minutes: int, resource: str = MIG1, node: str = "h100", count: int = 1) -> Claim:
    return Claim(f"lab-{owner}/ws", node, resource, count, held_until=T0 + dt.timedelta(minutes=minutes))


def waiter(owner: str, since: int, resource: str = MIG1, count: int = 1, priority: int = 10000,
           preempt: bool = False) -> Waiter:
    return Waiter(f"lab-{owner}/ws", resource, count, priority, T0 + dt.timedelta(minutes=since), preempt)


@pytest.mark.parametrize(("claims", "used", "held"), [
    # two pods fill both slices
    ([pod("a"), pod("b")], 2, 0),
    # frank stopped: his pod still terminates and his hold covers the same slice: counted once
    ([pod("frank", terminating=True), hold("frank", 15), pod("b")], 2, 0),
    # frank's pod is gone: the hold alone keeps the slice
    ([hold("frank", 15), pod("b")], 1, 1),
    # frank came back: his new pod is pinned while the record is still there: still one slice
    ([pod("frank"), hold("frank", 15), pod("b")], 2, 0),
    # a hold of another kind of device takes nothing from the 1g slices
    ([hold("carol", 15, resource=MIG3), pod("b")], 1, 0),
])
def test_free_devices_count_pods_and_holds_once_per_workspace(claims, used, held):
    taken = usage(BALANCED, claims)
    assert taken.pods.get(("h100", MIG1), 0) == used
    assert taken.held.get(("h100", MIG1), 0) == held
    assert not taken.lost


def test_a_held_slice_goes_to_nobody_but_its_holder():
    claims = [hold("frank", 15), pod("grace")]
    ivan = waiter("ivan", since=-20)  # waited long before frank stopped
    decision = decide(BALANCED, claims, [ivan])
    assert decision.admitted == {}
    wait = decision.waiting["lab-ivan/ws"]
    assert wait.message() == "no free 1g.10gb slice (1 in use, 1 held until 11:15:00 UTC); you are next"
    # frank asks again: his own slice, although ivan has waited longer
    decision = decide(BALANCED, claims, [ivan, waiter("frank", since=1)])
    assert decision.admitted == {"lab-frank/ws": "h100"}
    assert "lab-ivan/ws" in decision.waiting


def test_the_queue_is_first_come_first_served_within_a_tier_and_tiers_go_first():
    waiters = [waiter("late", since=5), waiter("early", since=-20), waiter("middle", since=0)]
    decision = decide(BALANCED, [pod("a")], waiters)
    assert decision.admitted == {"lab-early/ws": "h100"}
    assert decision.waiting["lab-middle/ws"].ahead == 0
    assert decision.waiting["lab-late/ws"].ahead == 1
    assert decision.waiting["lab-late/ws"].message().endswith("; 1 workspace ahead of you")
    # a higher tier is served before a longer wait
    decision = decide(BALANCED, [pod("a")], [*waiters, waiter("prof", since=10, priority=30000)])
    assert decision.admitted == {"lab-prof/ws": "h100"}
    assert sorted([queue_key(1, 0, T0, "b"), queue_key(2, 0, T0 + dt.timedelta(1), "a"), queue_key(1, 0, T0, "a")]) == \
        [queue_key(2, 0, T0 + dt.timedelta(1), "a"), queue_key(1, 0, T0, "a"), queue_key(1, 0, T0, "b")]


def test_nobody_overtakes_a_waiter_for_the_same_kind_of_device():
    two = {("n1", MIG1): 2, ("n2", MIG1): 1}
    # the first in line needs two slices on one node; one is free on n2: the next (one slice) must not take it
    decision = decide(two, [pod("a", node="n1")], [waiter("pair", since=0, count=2), waiter("single", since=1)])
    assert decision.admitted == {}
    assert decision.waiting["lab-single/ws"].ahead == 1
    # a waiter for another kind is not held up by it
    decision = decide({**two, ("n2", MIG3): 1}, [pod("a", node="n1")],
                      [waiter("pair", since=0, count=2), waiter("big", since=1, resource=MIG3)])
    assert decision.admitted == {"lab-big/ws": "n2"}


def test_the_tightest_node_is_chosen_so_whole_blocks_stay_free():
    nodes = {("a", MIG1): 7, ("b", MIG1): 2}
    decision = decide(nodes, [pod("x", node="b")], [waiter("w", since=0)])
    assert decision.admitted == {"lab-w/ws": "b"}


def test_a_cordoned_or_unready_node_takes_no_new_pod_and_is_not_offered():
    nodes = [{"metadata": {"name": "h100"}, "spec": {"unschedulable": True},
              "status": {"allocatable": {MIG1: "2", "cpu": "64"}}},
             {"metadata": {"name": "spare"}, "spec": {},
              "status": {"allocatable": {MIG1: "1"}, "conditions": [{"type": "Ready", "status": "False"}]}}]
    capacity, closed = capacity_of(nodes)
    assert capacity == {("h100", MIG1): 2, ("spare", MIG1): 1} and closed == {"h100", "spare"}
    decision = decide(capacity, [], [waiter("w", since=0)], closed)
    assert decision.admitted == {}
    assert decision.waiting["lab-w/ws"].message() == "no node offers a 1g.10gb slice"


def test_a_hold_that_no_longer_fits_its_node_is_reported_lost_the_latest_first():
    # a pod the lab did not admit took a slice: two holds and one pod on two slices
    claims = [hold("first", 5), hold("second", 10), Claim("default/intruder", "h100", MIG1, 1)]
    taken = usage(BALANCED, claims)
    assert [c.owner for c in taken.lost] == ["lab-second/ws"]
    assert set(taken.holds) == {"lab-first/ws"}


def test_a_preempting_tier_is_pinned_where_lower_priority_pods_are_never_where_a_hold_is():
    nodes = {("n1", MIG3): 1, ("n2", MIG3): 1}
    student_pods = [pod("s1", MIG3, node="n1"), pod("s2", MIG3, node="n2")]
    prof = waiter("prof", since=0, resource=MIG3, priority=30000, preempt=True)
    decision = decide(nodes, student_pods, [prof])
    assert decision.admitted["lab-prof/ws"] in ("n1", "n2") and decision.preempting == {"lab-prof/ws"}
    # n1's student stopped and holds; n2's student runs: the professor preempts on n2 only
    decision = decide(nodes, [hold("s1", 15, MIG3, node="n1"), pod("s2", MIG3, node="n2")], [prof])
    assert decision.admitted == {"lab-prof/ws": "n2"}
    # a tier that may not preempt waits
    decision = decide(nodes, student_pods, [waiter("res", since=0, resource=MIG3, priority=20000)])
    assert decision.admitted == {}


def test_a_waiting_workspaces_record_and_pin_are_read_back_from_api_objects():
    ws = {"metadata": {"namespace": "lab-frank", "name": "slice"},
          "status": {"holdNode": "h100", "holdResource": MIG1, "holdCount": 1, "holdUntil": "2026-03-01T11:15:00Z"}}
    assert hold_claim(ws, T0) == Claim("lab-frank/slice", "h100", MIG1, 1, held_until=T0 + dt.timedelta(minutes=15))
    assert hold_claim(ws, T0 + dt.timedelta(minutes=15)) is None  # expired: nothing held
    pinned = {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["h100"]}]}]}}}}}
    assert pinned_node(pinned) == "h100"
    assert pinned_node({"spec": {"nodeName": "n2"}}) == "n2"
    assert pinned_node({"spec": {}}) is None


def test_a_slice_given_to_the_first_in_line_counts_as_in_use_for_the_next_before_its_pod_exists():
    decision = decide(BALANCED, [pod("a")], [waiter("first", since=0), waiter("second", since=1)])
    assert decision.admitted == {"lab-first/ws": "h100"}
    assert decision.waiting["lab-second/ws"].message() == "no free 1g.10gb slice (2 in use); you are next"


def test_a_deep_queue_names_only_the_first_few_ahead_of_each_waiter_and_counts_the_rest():
    # each Wait once carried every owner ahead of it: a thousand waiters made half a million names per decision
    from labkeeper.api.admission import QUEUE_AHEAD_LISTED

    waiters = [waiter(f"u{i:04d}", since=i) for i in range(1000)] + [waiter("big", since=0, resource=MIG3)]
    decision = decide(BALANCED, [pod("a"), pod("b"), pod("c", resource=MIG3)], waiters)
    assert decision.admitted == {}
    for i in range(1000):
        wait = decision.waiting[f"lab-u{i:04d}/ws"]
        assert wait.ahead == i
        assert wait.ahead_owners == tuple(f"lab-u{j:04d}/ws" for j in range(min(i, QUEUE_AHEAD_LISTED)))
        assert (wait.offered, wait.in_use) == (2, 2)
    assert decision.waiting["lab-big/ws"].ahead == 0 and decision.waiting["lab-big/ws"].in_use == 1


@pytest.mark.parametrize(("ahead", "count", "closed", "expected"), [
    (0, 1, frozenset(), 5),      # the soonest release of its kind, another kind's sooner one not counted
    (1, 1, frozenset(), 20),     # one set for the one ahead, then its own
    (0, 2, frozenset(), 20),     # two devices: the second release
    (0, 1, frozenset({"b"}), 20),  # a release on a closed node frees nothing it may take
    (2, 1, frozenset(), 40),
    (3, 1, frozenset(), None),   # too few releases known
])
def test_the_estimated_start_from_releases_sorted_once_is_the_same_as_sorting_for_each_waiter(ahead, count, closed,
                                                                                              expected):
    from labkeeper.api.admission import Release, Wait, estimated_start, release_order, start_from

    at = lambda m: T0 + dt.timedelta(minutes=m)  # noqa: E731
    releases = [Release(at(40), "a", MIG1, 1, "c"), Release(at(1), "a", MIG3, 1, "other kind"),
                Release(at(20), "a", MIG1, 1, "b"), Release(at(5), "b", MIG1, 1, "a")]
    wait = Wait("lab-x/ws", MIG1, count, offered=3, in_use=3, held_until=(), ahead=ahead)
    direct = estimated_start(wait, releases, closed)
    once = start_from(wait, release_order(releases, closed).get(MIG1, ()))
    assert direct == once
    assert (direct.at if direct else None) == (at(expected) if expected is not None else None)
