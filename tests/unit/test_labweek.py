"""bench/labweek.py's pure parts: the seeded trace, the people's behaviour, DS01's rules and Jain's index."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import labweek
from labweek import DAY, HOUR, MINUTE, Day, Person, Run, Trace


def test_the_same_seed_gives_the_same_trace_and_another_seed_another():
    first, again = labweek.generate(7), labweek.generate(7)
    assert first == again and first.digest() == again.digest()
    assert labweek.generate(8).digest() != first.digest()
    assert len(first.people) == 30 and first.days == 7


def test_the_trace_keeps_to_working_days_bursts_and_the_week():
    trace = labweek.generate(3)
    weekdays = sum(1 for d in trace.sessions if (d.arrive // DAY) % 7 < 5)
    assert weekdays > 4 * (len(trace.sessions) - weekdays)  # weekends are quiet
    for day in trace.sessions:
        assert 7 * HOUR <= day.arrive % DAY <= 15 * HOUR and day.leave > day.arrive
        starts = [a for a, _ in day.bursts]
        assert starts == sorted(starts) and day.arrive <= day.bursts[0][0] < day.leave
        for a, b in day.bursts:
            assert b > a
            # only an overnight job goes on after its owner leaves
            assert b <= day.leave or (day.at_leave == "overnight" and (a, b) == day.bursts[-1])
        # nobody computes through lunch: some gap of at least 25 minutes between 12:00 and 15:10
        gaps = [(b, a2) for (_, b), (a2, _) in zip(day.bursts, day.bursts[1:], strict=False)]
        if day.arrive % DAY < 12 * HOUR and day.leave % DAY > 15.2 * HOUR:
            assert any(e - s >= 25 * MINUTE and 12 * HOUR <= s % DAY <= 13.5 * HOUR for s, e in gaps), day
    assert {d.at_leave for d in trace.sessions} == {"stop", "forget", "overnight"}
    assert trace.runs and all(r.duration >= 20 * MINUTE for r in trace.runs)


def test_jain_index():
    assert labweek.jain([3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert labweek.jain([5.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert labweek.jain([1.0, 2.0, 3.0]) == pytest.approx(36 / 42)
    assert labweek.jain([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        labweek.jain([])


def one_day(*days: Day, people: tuple[Person, ...] | None = None, runs: tuple[Run, ...] = ()) -> Trace:
    people = people or tuple(Person(d.user, "student", "1g.10gb") for d in days)
    return Trace(0, 1, people, days, runs)


def test_ds01_stops_a_forgotten_workspace_at_the_third_hourly_idle_reading_and_holds_its_slice():
    # computes 10:00-10:30, then leaves it open: idle readings at 11:00, 12:00, 13:00, stopped at 13:00, held to 13:15
    trace = one_day(Day("ann", 10 * HOUR, 10.5 * HOUR, ((10 * HOUR, 10.5 * HOUR),), "forget"))
    figures = labweek.simulate_ds01(trace)
    assert figures["held_slice_hours"] == pytest.approx(3.2, abs=0.05)  # 10:00 -> 13:15
    assert figures["idle_held_slice_hours"] == pytest.approx(2.8, abs=0.05)  # 10:30 -> 13:15
    assert figures["system_stops"] == {"Idle": 1} and figures["stopped_while_active"] == 0
    assert figures["wait_p95_min"] == 0 and figures["jain_gpu_hours"] == 1.0
    # of the idle, 10:30 -> 11:00 is within a student's 30 min timeout and the hold is policy: 11:00 -> 13:00 is late
    assert figures["idle_past_timeout_slice_hours"] == pytest.approx(2.0, abs=0.05)
    assert figures["idle_within_timeout_share_percent"] == pytest.approx(100 * 0.75 / 3.25, abs=1.0)


def test_an_idle_stretch_is_late_past_its_owners_timeout_and_ends_when_the_assignment_computes():
    tally = labweek.Tally()
    idle = labweek.Holding("ann", "nvidia.com/mig-1g.10gb", 1, False, False, 1 / 7, owner="ann/ws", idle_timeout=600)
    for _ in range(30):  # 15 min idle: the last 5 past the timeout
        tally.step(30, [idle])
    tally.step(30, [dataclasses.replace(idle, computing=True)])
    for _ in range(10):  # a new stretch of 5 min: within the timeout again
        tally.step(30, [idle])
    tally.step(30, [dataclasses.replace(idle, hold=True, owner="ann/ws")])  # a hold is policy, never late
    assert tally.idle_late == pytest.approx(300) and tally.idle == pytest.approx(15 * 60 + 5 * 60 + 30)


def test_ds01_takes_the_first_free_slot_without_a_queue_and_a_retry_waits_its_interval():
    # two 1g.10gb slices; cy asks at 10:05 while ann and bob hold both; ann stops at 10:20 and her slice is held for
    # her until 10:35: cy's tries at 10:05, 10:15, 10:25 find nothing, the one at 10:35 finds ann's, 30 minutes on
    days = (Day("ann", 10 * HOUR, 10 * HOUR + 20 * MINUTE, ((10 * HOUR, 10 * HOUR + 20 * MINUTE),), "stop"),
            Day("bob", 10 * HOUR, 10 * HOUR + 50 * MINUTE, ((10 * HOUR, 10 * HOUR + 50 * MINUTE),), "stop"),
            Day("cy", 10 * HOUR + 5 * MINUTE, 11 * HOUR + 30 * MINUTE, ((10 * HOUR + 5 * MINUTE, 11.5 * HOUR),), "stop"))
    figures = labweek.simulate_ds01(one_day(*days))
    assert figures["waits"] == 3 and figures["wait_p50_min"] == 0
    assert figures["wait_p95_min"] == pytest.approx(30.0)
    assert figures["users_who_asked"] == 3


def test_ds01_stops_a_workspace_that_computes_between_its_hourly_readings():
    # busy from :05 to :58 every hour, idle at each reading on the hour: stopped at 13:00, two minutes after computing
    # (she asks again at 13:05 and gets her held slice back; two more readings before she leaves at 15:30)
    bursts = tuple((h * HOUR + 5 * MINUTE, h * HOUR + 58 * MINUTE) for h in range(10, 15))
    trace = one_day(Day("ann", 10 * HOUR + 5 * MINUTE, 15.5 * HOUR, bursts, "stop"))
    figures = labweek.simulate_ds01(trace)
    assert figures["system_stops"] == {"Idle": 1}
    assert figures["stopped_while_active"] == 1


def test_a_person_asks_when_they_want_to_compute_and_stops_at_the_end_of_the_day_only_if_they_mean_to():
    trace = one_day(Day("ann", 9 * HOUR, 17 * HOUR, ((9 * HOUR, 10 * HOUR), (11 * HOUR, 12 * HOUR)), "stop"),
                    Day("bob", 9 * HOUR, 17 * HOUR, ((9 * HOUR, 10 * HOUR),), "forget"))
    people = labweek.Behaviour(trace)
    assert people.action("ann", 8 * HOUR, "off") is None
    assert people.action("ann", 9 * HOUR, "off") == "start"
    assert people.action("ann", 9 * HOUR, "waiting") is None
    assert people.action("ann", 10.5 * HOUR, "off") is None  # culled in a gap: asks again at the next burst
    assert people.action("ann", 11 * HOUR, "off") == "start"
    assert people.computing("ann", 11.5 * HOUR) and not people.computing("ann", 10.5 * HOUR)
    assert people.action("ann", 17 * HOUR, "running") == "stop"
    assert people.action("ann", 17.5 * HOUR, "running") is None  # once
    assert people.action("bob", 17 * HOUR, "running") is None
