"""Usage accounting and the fair-share queue from plain facts: the meter a Workspace's status carries, the buckets a
GPUUser's status keeps, the decayed usage the queue weighs and the order it gives. No API server."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api import accounting as acc
from labkeeper.api.admission import Claim, Waiter, decide
from labkeeper.api.policy import load_policy
from labkeeper.api.units import format_time

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
MIG1 = "nvidia.com/mig-1g.10gb"
BALANCED = {("h100", MIG1): 2}
DAY = dt.timedelta(hours=24)
GRACE = dt.timedelta(seconds=90)
HOLD = dt.timedelta(minutes=15)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def waiter(user: str, since: float, usage: float = 0.0, priority: int = 10000) -> Waiter:
    return Waiter(f"lab-{user}/ws", MIG1, 1, priority, at(since), usage=usage)


# ---- the order ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("waiters", "order"), [
    # equal usage: first come, first served
    ([waiter("b", 5), waiter("a", 0)], ["a", "b"]),
    # lower relative usage goes first, however long the other waited
    ([waiter("heavy", -60, usage=2.0), waiter("light", 0, usage=0.5), waiter("none", 10)], ["none", "light", "heavy"]),
    # a higher tier goes before any usage
    ([waiter("fresh", 0), waiter("prof", 30, usage=9.0, priority=30000)], ["prof", "fresh"]),
    # usage within a thousandth is a tie: the wait decides
    ([waiter("b", 0, usage=1.0004), waiter("a", 1, usage=1.0001)], ["b", "a"]),
])
def test_the_queue_orders_by_tier_then_relative_usage_then_waiting_time(waiters, order):
    assert [w.owner.removeprefix("lab-").removesuffix("/ws") for w in sorted(waiters, key=lambda w: w.key)] == order


def test_the_freed_slice_goes_to_the_lightest_user_and_the_others_wait_behind_her():
    waiters = [waiter("alice", -30, usage=3.0), waiter("bob", -10, usage=1.0), waiter("carol", 0, usage=0.0)]
    decision = decide(BALANCED, [Claim("lab-x/ws", "h100", MIG1, 1)], waiters)
    assert decision.admitted == {"lab-carol/ws": "h100"}
    assert decision.waiting["lab-bob/ws"].ahead == 0
    assert decision.waiting["lab-alice/ws"].ahead == 1


# ---- shares from the policy --------------------------------------------------------------------------------------
def test_a_tier_share_defaults_to_what_it_may_hold_and_can_be_set():
    policy = load_policy("tiers:\n  student: {}\n  faculty: {maxGpuEquivalents: 4, share: 1.5}\n"
                         "  researcher: {maxGpuEquivalents: 4}\nfairShare: {halfLife: 12h}\n")
    assert (policy.share("student"), policy.share("researcher"), policy.share("faculty")) == (2, 4, 1.5)
    assert policy.fair_share.half_life == dt.timedelta(hours=12)
    assert policy.share("nobody") == 1.0


@pytest.mark.parametrize(("text", "words"), [
    ("fairShare: {halfLife: 0s}", "fairShare.halfLife"),
    ("fairShare: {halfLife: soon}", "fairShare.halfLife"),
    ("tiers: {student: {share: 0}}", "tiers.student.share"),
    ("fairShare: {decay: 2}", "fairShare.decay"),
])
def test_a_bad_fair_share_setting_is_refused_with_the_field_named(text, words):
    with pytest.raises(Exception) as err:
        load_policy(text)
    assert words in str(err.value)


# ---- the meter ---------------------------------------------------------------------------------------------------
def status(**fields) -> dict:
    base = {"gpuEquivalents": 1 / 7}
    for key, value in fields.items():
        base[key] = format_time(value) if isinstance(value, dt.datetime) else value
    return base


def step(meter: list[dict], st: dict, phase: str, now: dt.datetime, reason: str = "") -> list[dict]:
    marks = [acc.Mark.from_status(m) for m in meter]
    mark = acc.current_mark(st, phase, reason, now, idle_grace=GRACE, hold_after_stop=HOLD,
                            previous=marks[-1] if marks else None)
    return acc.next_meter(meter, mark, now)


def scripted_day() -> list[dict]:
    """Waits 08:00-08:10, active 08:10-09:00, idle 09:00-10:00 (noticed at 10:01, culled), held 10:01-10:16."""
    meter: list[dict] = []
    meter = step(meter, status(waitingSince=at(0)), "Pending", at(0), "WaitingForDevice")
    meter = step(meter, status(waitingSince=at(0)), "Pending", at(5), "WaitingForDevice")  # nothing new
    meter = step(meter, status(podUID="u"), "Starting", at(10), "PodCreated")
    meter = step(meter, status(podUID="u", runningSince=at(11)), "Running", at(11.5), "PodRunning")  # not judged yet
    meter = step(meter, status(podUID="u", runningSince=at(11), lastActivity=at(59.5)), "Running", at(60),
                 "PodRunning")  # active: a fresh sample
    meter = step(meter, status(podUID="u", runningSince=at(11), lastActivity=at(60), idleSince=at(60)),
                 "IdleWarning", at(90), "IdleWarning")
    meter = step(meter, status(stopReason="Idle", holdUntil=at(121) + HOLD), "Stopping", at(121), "Idle")
    meter = step(meter, status(stopReason="Idle", holdUntil=at(121) + HOLD), "Stopped", at(122), "Idle")
    meter = step(meter, status(stopReason="Idle"), "Stopped", at(140), "Idle")
    return meter


def test_the_meter_keeps_one_mark_per_change_dated_by_the_status_not_by_the_pass():
    meter = scripted_day()
    assert [(m["state"], m["since"], m.get("reason")) for m in meter] == [
        ("waiting", "2026-03-01T08:00:00Z", None),
        ("active", "2026-03-01T08:10:00Z", None),
        ("idle", "2026-03-01T09:00:00Z", None),
        ("held", "2026-03-01T10:01:00Z", "Idle"),
        ("off", "2026-03-01T10:16:00Z", None),
    ]
    assert meter[3]["until"] == "2026-03-01T10:16:00Z"


def test_folding_the_day_splits_gpu_time_into_active_idle_and_held_after_stop_and_counts_the_wait_and_stop():
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": scripted_day()}}
    user = {"metadata": {"name": "ann"}, "spec": {"tier": "student"}, "status": {}}
    folded = acc.fold_user(user, [ws], at(200), DAY)
    [day] = folded["days"]
    eq = 1 / 7
    assert day["date"] == "2026-03-01" and day["workspace"] == "ws"
    assert day["waitingSeconds"] == 600
    assert day["activeSeconds"] == pytest.approx(50 * 60 * eq, abs=0.01)
    assert day["idleSeconds"] == pytest.approx(61 * 60 * eq, abs=0.01)
    assert day["heldAfterStopSeconds"] == pytest.approx(15 * 60 * eq, abs=0.01)
    assert day["waits"] == [600] and day["stops"] == {"Idle": 1}
    # folding again later adds nothing: everything up to `through` is in the buckets, and no mark is new
    again = acc.fold_user({**user, "status": {"accounting": folded}}, [ws], at(400), DAY)
    assert again["days"] == folded["days"]
    # the decayed usage is the held GPU-hours, each halved per day of age: between the oldest and the newest
    held_hours = (50 + 61 + 15) / 60 * eq
    assert held_hours * 0.5 ** (190 / 1440) < folded["decayedGpuHours"] < held_hours * 0.5 ** (84 / 1440)
    assert again["decayedGpuHours"] == pytest.approx(folded["decayedGpuHours"] * 0.5 ** (200 / 1440), rel=1e-4)


def test_a_fold_in_the_middle_of_a_segment_loses_nothing_and_counts_nothing_twice():
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": scripted_day()}}
    user = {"metadata": {"name": "ann"}, "spec": {}, "status": {}}
    whole = acc.fold_user(user, [ws], at(200), DAY)["days"]
    state = {}
    # folds every so often, some in the middle of a state, at moments with fractions of a second
    for minute in (3, 30.01234, 61, 61.00871, 61.01742, 95.3333, 118, 125.12345, 200):
        state = acc.fold_user({**user, "status": {"accounting": state}}, [ws], at(minute), DAY)
    for key in ("activeSeconds", "idleSeconds", "heldAfterStopSeconds", "waitingSeconds"):
        assert state["days"][0][key] == pytest.approx(whole[0][key], abs=0.01)
    assert state["days"][0]["waits"] == [600] and state["days"][0]["stops"] == {"Idle": 1}


def test_a_segment_over_midnight_is_split_between_the_two_days():
    night = [acc.Mark("active", dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.UTC), 1.0).as_status()]
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": night}}
    days = acc.fold_user({"metadata": {"name": "ann"}}, [ws], dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC), DAY)["days"]
    assert [(d["date"], d["activeSeconds"]) for d in days] == [("2026-03-01", 3600), ("2026-03-02", 3600)]


def test_relative_usage_decays_and_is_divided_by_the_share():
    heavy = {"metadata": {"name": "heavy"}, "spec": {"tier": "student"},
             "status": {"accounting": {"through": format_time(T0), "decayedGpuHours": 8.0}}}
    prof = {"metadata": {"name": "prof"}, "spec": {"tier": "faculty"},
            "status": {"accounting": {"through": format_time(T0), "decayedGpuHours": 8.0}}}
    shares = {"student": 2.0, "faculty": 4.0}
    usages = acc.relative_usages([heavy, prof], T0 + DAY, DAY, lambda tier: shares[tier])
    assert usages == {"heavy": pytest.approx(2.0), "prof": pytest.approx(1.0)}


def test_the_queue_weighs_usage_as_folded_so_its_order_holds_between_folds():
    """Two users folded at different moments keep their order as both decay; what runs since a fold is not weighed
    until the next fold (the report still counts it)."""
    early = {"metadata": {"name": "early"}, "spec": {"tier": "student"},
             "status": {"accounting": {"through": format_time(T0), "decayedGpuHours": 4.0}}}
    late = {"metadata": {"name": "late"}, "spec": {"tier": "student"},
            "status": {"accounting": {"through": format_time(T0 + DAY / 2), "decayedGpuHours": 2.9}}}
    orders = []
    for hours in (12, 13, 30, 100):
        usages = acc.relative_usages([early, late], T0 + dt.timedelta(hours=hours), DAY, lambda tier: 2.0)
        orders.append(sorted(usages, key=usages.__getitem__))
    assert orders == [["early", "late"]] * 4  # 4 h decayed by half a day is 2.83: below late's 2.9, at every moment
    running = [acc.Mark("active", T0, 1.0).as_status()]
    ws = {"metadata": {"name": "ws", "namespace": "lab-early"}, "status": {"meter": running}}
    later = T0 + dt.timedelta(hours=2)
    assert acc.relative_usages([early], later, DAY, lambda tier: 2.0)["early"] \
        < acc.decayed_usage(early, [ws], later, DAY) / 2.0


def test_the_report_adds_live_marks_after_the_last_fold_and_gives_wait_percentiles():
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": scripted_day()}}
    user = {"metadata": {"name": "ann"}, "spec": {"tier": "student"}, "status": {}}
    folded = acc.fold_user(user, [ws], at(100), DAY)
    [rep] = acc.report([{**user, "status": {"accounting": folded}}], [ws], at(200), T0 - DAY, DAY, {"ann": 2.0})
    assert rep.active == pytest.approx(50 * 60 / 7, abs=0.01)
    assert rep.held_after_stop == pytest.approx(15 * 60 / 7, abs=0.01)
    assert rep.stops == {"Idle": 1} and rep.waits == [600]
    assert acc.percentile([1, 2, 3, 4, 100], 50) == 3 and acc.percentile([1, 2, 3, 4, 100], 95) == 100


def test_an_idle_stretch_dated_back_after_a_fold_still_counts_as_idle_when_folds_keep_the_settle_distance():
    """The meter learns of an idle stretch only once it is a report and a check old, and dates it from its start;
    a fold made meanwhile must not have counted that stretch as active already."""
    settle = acc.settle_time(dt.timedelta(seconds=60), dt.timedelta(seconds=30))
    active = [acc.Mark("active", at(0), 1.0).as_status()]
    idle_from = at(10)
    seen_at = idle_from + dt.timedelta(seconds=95)  # noticed a report and a check (and a little) later
    user = {"metadata": {"name": "ann"}, "status": {}}
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": active}}
    # a fold between the start of the stretch and the moment it is seen
    state = acc.fold_user(user, [ws], idle_from + dt.timedelta(seconds=60), DAY, settle)
    ws["status"]["meter"] = acc.next_meter(active, acc.Mark("idle", idle_from, 1.0), seen_at)
    state = acc.fold_user({**user, "status": {"accounting": state}}, [ws], at(30), DAY, settle)
    [day] = state["days"]
    assert day["activeSeconds"] == pytest.approx(600) and day["idleSeconds"] == pytest.approx(30 * 60 - 180 - 600)
    # without the settle distance the first fold would have booked idle time as active
    naive = acc.fold_user(user, [{**ws, "status": {"meter": active}}], idle_from + dt.timedelta(seconds=60), DAY)
    naive = acc.fold_user({**user, "status": {"accounting": naive}}, [ws], at(30), DAY)
    assert naive["days"][0]["activeSeconds"] == pytest.approx(660)


def test_an_operator_restart_or_a_keep_alive_moves_idle_clocks_but_idle_stays_idle_until_the_agent_sees_activity():
    run = {"podUID": "u", "runningSince": at(0)}
    meter = step([], status(**run, idleSince=at(0), lastActivity=at(0)), "Running", at(0.5), "PodRunning")
    meter = step(meter, status(**run, idleSince=at(0), lastActivity=at(0)), "Running", at(10), "PodRunning")
    assert [m["state"] for m in meter] == ["active", "idle"]
    # the operator restarts at 20: its idle clocks count from then, no activity has been seen since 0
    meter = step(meter, status(**run, idleSince=at(20), lastActivity=at(0)), "Running", at(20.01), "PodRunning")
    assert [(m["state"], m["since"]) for m in meter][-1] == ("idle", "2026-03-01T08:00:30Z")
    # a keep-alive moves idleSince too, yet nothing is used: still idle
    meter = step(meter, status(**run, idleSince=at(22), lastActivity=at(0)), "Running", at(22.01), "PodRunning")
    assert [m["state"] for m in meter] == ["active", "idle"]
    # the agent reports activity at 25: active from that sample on
    meter = step(meter, status(**run, idleSince=at(25), lastActivity=at(25)), "Running", at(25.01), "PodRunning")
    assert [(m["state"], m["since"]) for m in meter][-1] == ("active", "2026-03-01T08:25:00Z")


# ---- when a waiting workspace may start ----------------------------------------------------------------------------
def test_the_estimated_start_is_the_release_that_frees_a_slice_for_her_after_those_ahead():
    from labkeeper.api.admission import Release, Wait, estimated_start, releases_of

    def ws(user: str, **status) -> dict:
        return {"metadata": {"name": "ws", "namespace": f"lab-{user}"},
                "spec": {"gpu": {"profile": "1g.10gb", "count": 1}},
                "status": {k: format_time(v) if isinstance(v, dt.datetime) else v for k, v in status.items()}}

    releases = releases_of([
        ws("held", holdNode="h100", holdResource=MIG1, holdCount=1, holdUntil=at(15)),
        ws("runner", phase="Running", node="h100", runtimeDeadline=at(90), idleDeadline=at(40)),
        ws("waiting", phase="Pending"),
    ], at(0))
    assert [(r.at, r.why) for r in releases] == [(at(15), "the hold of held/ws expires"),
                                                 (at(40), "runner/ws reaches its idle deadline")]
    first = Wait("lab-a/ws", MIG1, 1, offered=2, in_use=1, held_until=(at(15),), ahead=0)
    second = Wait("lab-b/ws", MIG1, 1, offered=2, in_use=1, held_until=(at(15),), ahead=1)
    third = Wait("lab-c/ws", MIG1, 1, offered=2, in_use=1, held_until=(at(15),), ahead=2)
    assert estimated_start(first, releases).why == "the hold of held/ws expires"
    assert estimated_start(second, releases).at == at(40)
    assert estimated_start(third, releases) is None  # only two releases are known
    assert estimated_start(first, releases, closed=frozenset({"h100"})) is None
    assert estimated_start(first, [Release(at(5), "h100", "nvidia.com/gpu", 1, "x")]) is None  # another kind


def test_a_wait_given_up_is_waiting_time_but_not_a_wait_to_a_start():
    meter = step([], status(waitingSince=at(0)), "Pending", at(0), "WaitingForDevice")
    meter = step(meter, status(), "Stopped", at(20), "Stopped")
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": meter}}
    [day] = acc.fold_user({"metadata": {"name": "ann"}}, [ws], at(30), DAY)["days"]
    assert day["waitingSeconds"] == 1200 and not day.get("waits") and not day.get("stops")


def test_a_fold_onto_the_watched_user_that_the_api_refuses_as_stale_is_made_again_on_a_fresh_read():
    """The operator folds onto her GPUUser as the watch last showed it; when a write the watch has not delivered
    yet changed her, the patch (under the watched resourceVersion) is refused and the fold is made once more onto
    what is stored, so it neither waits a whole flush interval nor counts a stretch twice."""
    from kubernetes.client.exceptions import ApiException

    from labkeeper.api.policy import LabPolicy
    from labkeeper.controller.accounting import Accountant

    ws = {"metadata": {"name": "ws", "namespace": "lab-ann"}, "status": {"meter": scripted_day()}}
    stored = {"metadata": {"name": "ann", "resourceVersion": "8"}, "status": {"usage": {"gpuEquivalents": 1}}}
    watched = {"metadata": {"name": "ann", "resourceVersion": "7"}, "status": {}}

    class Kube:
        patches: list[str] = []  # the resourceVersion each patch was made under, and each read

        def get(self, kind: str, name: str) -> dict:
            self.patches.append("read")
            return stored

        def list(self, kind: str, namespace: str | None = None) -> list[dict]:
            return [ws]

        def patch(self, kind: str, name: str, patch: dict, subresource: str | None = None) -> dict:
            self.patches.append(patch["metadata"]["resourceVersion"])
            if patch["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            return stored

    kube = Kube()
    policy = type("Store", (), {"current": LabPolicy()})()
    assert Accountant(kube, policy, lambda: at(200)).flush("ann", watched)  # type: ignore[arg-type]
    assert kube.patches == ["7", "read", "8"]
    kube.patches.clear()
    assert Accountant(kube, policy, lambda: at(200)).flush("ann", stored)  # type: ignore[arg-type]
    assert kube.patches == ["8"]  # a watch that is current costs no read


def test_users_seen_at_once_have_their_first_folds_spread_over_the_flush_interval():
    from labkeeper.controller.accounting import first_fold_after

    delays = sorted(first_fold_after(f"s{i:04d}", 300.0) for i in range(1000))
    assert delays[0] >= 0.0 and delays[-1] < 300.0
    # about as many in each tenth of the interval: no burst, and no stretch without folds
    per_tenth = [sum(1 for d in delays if 30 * k <= d < 30 * (k + 1)) for k in range(10)]
    assert min(per_tenth) > 60 and max(per_tenth) < 140
    assert first_fold_after("ann", 300.0) == first_fold_after("ann", 300.0)  # hers, at every start


@pytest.mark.parametrize(("ran_late_by", "next_in"), [
    (0, 300), (10, 290), (299, 1), (300, 300), (301, 299), (1000, 200),
])
def test_a_fold_that_ran_late_keeps_her_beat_and_the_next_comes_on_it(ran_late_by, next_in):
    from labkeeper.controller.accounting import next_fold_due

    due = T0
    now = T0 + dt.timedelta(seconds=ran_late_by)
    assert next_fold_due(due, dt.timedelta(seconds=300), now) == now + dt.timedelta(seconds=next_in)
