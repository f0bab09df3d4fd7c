"""A lab's week, twice: under DS01's rules (simulated) and under the real labkeeper operator (replayed).

One seeded trace of 30 people over 7 days on one H100 in the MIG all-balanced layout (2 x 1g.10gb, 1 x 2g.20gb,
1 x 3g.40gb) and one box with two whole GPUs. Each person comes in on some days, opens a workspace, computes in
bursts with idle gaps between them, goes to lunch, and at the end of the day stops the workspace, forgets it, or
leaves a long job running overnight; a few batch runs come on top. The same user behaviour is then played against

* DS01's documented rules (DESIGN.md, "The predecessors"): a container takes the first free slot of its kind and
  there is no queue, priority or fair share (a user whose request finds nothing free tries again every
  `DS01_RETRY` seconds, as a user re-running the launch command or a retry loop does); the idle check runs hourly
  and stops a container at its third consecutive idle reading; a stop keeps the device for its owner
  `gpuHoldAfterStop`; the runtime limit counts from the container's (re)start. The simulation reads the trace's
  ground truth at each check, so it is kinder to DS01 than DS01 was (its network test against a cumulative counter
  is not modelled);
* the real labkeeper operator as a subprocess against a real control plane with kwok nodes, on the example lab
  policy unchanged (idle timeouts 30 min / 1 h / 2 h by tier, 15 min hold, 30 s samples, 60 s reports), with its
  clock accelerated (`labkeeper operator --accelerated-clock`, controller/main.py ScaledClock): the operator
  reads a clock that runs SCALE times faster than the wall clock and waits 1/SCALE of every delay it decides, so
  the policy's durations keep their meaning while a week passes in 7 * 24 h / SCALE of wall time. The agent's
  activity loop (agent/activity_loop.py: the file-backed sampler, the verdict, the publish throttle) runs in this
  process on the same clock, one loop per node, every sampleInterval of that clock; the file it reads says for each
  running workspace pod whether its slice computes (60 % SM) or not (0 %), from the trace.

Both columns come from one run and the same trace. Figures: slice-hours held while idle (a device counted as held
from its pod's creation, or its hold record, to its release; idle when the trace says its workspace does not
compute), p50/p95 wait from a request to a device, Jain's fairness index of the GPU-equivalent-hours each person
who asked for a device received, and workspaces the system stopped while they computed (at the stop or within the
5 minutes before it).

Where the trace's shapes come from (parameters are ours, chosen for a university lab; none is a figure from these
studies): job and session durations are heavy-tailed, so bursts, overnight jobs and batch runs are log-normal, as
the duration distributions in Microsoft's Philly trace (Jeon et al., "Analysis of Large-Scale Multi-Tenant GPU
Clusters for DNN Training Workloads", USENIX ATC 2019), SenseTime's Helios traces (Hu et al., "Characterization
and Prediction of Deep Learning Workloads in Large-Scale GPU Datacenters", SC 2021) and Alibaba PAI (Weng et al.,
"MLaaS in the Wild", NSDI 2022) are heavy-tailed over seconds to days; demand follows the working day and the week
(Helios reports strong diurnal and weekly submission patterns); interactive sessions hold devices far longer than
they compute (Philly and PAI both report low GPU utilisation of allocated devices), which here is the idle gaps
inside a session, lunch, and sessions left open.

`python bench/labweek.py` (as any user; ~30 min plus ~1 min of lab start). `--ds01-only` prints the simulated
column alone in a second. Writes bench/results/labweek.json."""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labkeeper.api.policy import DEFAULT_WEIGHTS
from labkeeper.render.access import gpu_resource

RESULTS = Path(__file__).resolve().parent / "results"
EPOCH = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)  # a Monday, 00:00 UTC: trace times are seconds from here
HOUR, MINUTE, DAY = 3600.0, 60.0, 86400.0
STEP = 30.0  # seconds of lab time per step: DS01's simulation and the replay's users and agent samples
DS01_RETRY = 600.0  # a DS01 user whose request found no free slot tries again this often
ACTIVE_WINDOW = 300.0  # a stop "while active": the workspace computed at the stop or this long before it
HOLD = 15 * MINUTE  # gpuHoldAfterStop, DS01's and the example policy's
MAX_RUNTIME = {"student": 24 * HOUR, "researcher": 48 * HOUR, "faculty": 72 * HOUR}
# the example policy's idle timeouts (DESIGN's defaults): idle held past them is what a cull at the deadline saves
IDLE_TIMEOUT = {"student": 30 * MINUTE, "researcher": HOUR, "faculty": 2 * HOUR}
# the two boxes: node -> resource -> devices (kwok profiles h100-balanced and full-gpus)
DEVICES: dict[str, dict[str, int]] = {
    "h100": {"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/mig-3g.40gb": 1},
    "gpus": {"nvidia.com/gpu": 2},
}
WEIGHT = DEFAULT_WEIGHTS  # GPU equivalents per device, the product's own defaults (the example policy's too)
resource_of = gpu_resource  # the device plugin's resource name, as the operator asks for it


# ---- the trace ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Person:
    name: str
    tier: str
    profile: str


@dataclass(frozen=True)
class Day:
    """One person's day at the lab: present from `arrive` to `leave`, computing in `bursts` (which an overnight
    job extends past `leave`); at `leave` they `stop` the workspace, `forget` it, or leave it on `overnight`."""

    user: str
    arrive: float
    leave: float
    bursts: tuple[tuple[float, float], ...]
    at_leave: str


@dataclass(frozen=True)
class Run:
    user: str
    name: str
    submit: float
    duration: float


@dataclass(frozen=True)
class Trace:
    seed: int
    days: int
    people: tuple[Person, ...]
    sessions: tuple[Day, ...]
    runs: tuple[Run, ...]

    def person(self, name: str) -> Person:
        return next(p for p in self.people if p.name == name)

    def of(self, user: str) -> list[Day]:
        return [d for d in self.sessions if d.user == user]

    def digest(self) -> str:
        """A short fingerprint of the whole trace (same seed, same digest)."""
        import hashlib

        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    return min(high, max(low, rng.lognormvariate(math.log(median), sigma)))


def generate(seed: int = 7, users: int = 30, days: int = 7) -> Trace:
    """The seeded trace. Same seed and sizes, same trace."""
    rng = random.Random(seed)
    people = []
    # a third of each tier's profiles are the larger ones: the balanced box has two 1g slices, one 2g, one 3g
    for i in range(users):
        if i < round(users * 0.6):
            tier, profile = "student", ("1g.10gb", "1g.10gb", "2g.20gb")[i % 3]
        elif i < round(users * 0.9):
            tier, profile = "researcher", ("3g.40gb", "full", "2g.20gb", "full")[i % 4]
        else:
            tier, profile = "faculty", "full"
        people.append(Person(f"u{i:02d}", tier, profile))
    presence = {"student": 0.55, "researcher": 0.5, "faculty": 0.3}
    sessions = []
    for person in people:
        for day in range(days):
            weekend = day % 7 >= 5
            if rng.random() >= (0.08 if weekend else presence[person.tier]):
                continue
            base = day * DAY
            arrive = base + min(15 * HOUR, max(7 * HOUR, rng.gauss(10 * HOUR, 1.25 * HOUR)))
            leave = min(base + 23 * HOUR, arrive + min(11 * HOUR, max(2 * HOUR, rng.gauss(7.5 * HOUR, 1.5 * HOUR))))
            lunch = base + rng.uniform(12 * HOUR, 13.5 * HOUR)
            lunch_end = lunch + _lognormal(rng, 50 * MINUTE, 0.3, 25 * MINUTE, 100 * MINUTE)
            bursts, t = [], arrive
            while t < leave:
                if lunch <= t < lunch_end:
                    t = lunch_end
                    continue
                end = min(t + _lognormal(rng, 40 * MINUTE, 0.8, 3 * MINUTE, 4 * HOUR), leave)
                if t < lunch < end:
                    end = lunch
                bursts.append((t, end))
                t = end + _lognormal(rng, 10 * MINUTE, 0.9, 1 * MINUTE, 90 * MINUTE)
            roll = rng.random()
            at_leave = "stop" if roll < 0.55 else "forget" if roll < 0.85 else "overnight"
            if at_leave == "overnight":
                job = _lognormal(rng, 5 * HOUR, 0.6, 1 * HOUR, 14 * HOUR)
                bursts.append((leave, leave + job))
            if bursts:
                sessions.append(Day(person.name, arrive, leave, tuple(bursts), at_leave))
    runs = []
    seniors = [p for p in people if p.tier != "student"]
    for k in range(max(1, users // 4)):
        who = rng.choice(seniors)
        day = rng.randrange(days)
        submit = day * DAY + rng.uniform(9 * HOUR, 19 * HOUR)
        runs.append(Run(who.name, f"run-{k}", submit, _lognormal(rng, 3 * HOUR, 0.7, 20 * MINUTE, 20 * HOUR)))
    return Trace(seed, days, tuple(people), tuple(sessions), tuple(runs))


class Behaviour:
    """What each person does with their interactive workspace at a moment, given what it is doing: the same rules
    drive DS01's simulation and labkeeper's replay. State is one of `off` (none, stopped, culled), `waiting`,
    `running` (its device is assigned)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.days = {p.name: sorted(trace.of(p.name), key=lambda d: d.arrive) for p in trace.people}
        self._bursts = {user: sorted(b for d in days for b in d.bursts) for user, days in self.days.items()}
        self._starts = {user: [a for a, _b in bursts] for user, bursts in self._bursts.items()}
        self._left: set[tuple[str, float]] = set()

    def computing(self, user: str, t: float) -> bool:
        """Whether the person's work computes at `t` (when their workspace runs)."""
        i = bisect.bisect_right(self._starts[user], t)
        return i > 0 and self._bursts[user][i - 1][1] > t

    def present(self, user: str, t: float) -> Day | None:
        return next((d for d in self.days[user] if d.arrive <= t < d.leave), None)

    def action(self, user: str, t: float, state: str) -> str | None:
        """`start`, `stop` or None. A person asks for the workspace when they want to compute and it is off;
        at the end of a day they stop it (or withdraw the request) if that day's plan says so."""
        for d in self.days[user]:
            if d.leave <= t and (user, d.leave) not in self._left:
                self._left.add((user, d.leave))
                if d.at_leave == "stop" and state != "off":
                    return "stop"
        day = self.present(user, t)
        if day is not None and state == "off" and any(a <= t < b for a, b in day.bursts):
            return "start"
        return None


# ---- the tally both columns are made of ---------------------------------------------------------------------------
@dataclass
class Holding:
    """One device assignment seen at a step: whose, what, whether it is a hold after a stop, whether it computes."""

    user: str
    resource: str
    count: int
    hold: bool
    computing: bool
    equivalents: float
    present: bool = True  # its owner is at the lab (between arriving and leaving that day)
    owner: str = ""  # user/workspace: an idle stretch is this assignment's
    idle_timeout: float = math.inf  # its owner's tier's; a batch run or a hold has none


@dataclass
class Tally:
    held: float = 0.0  # device-seconds
    idle: float = 0.0
    idle_absent: float = 0.0  # of which its owner had left (or not come): what an idle rule can take back
    idle_late: float = 0.0  # of which past its tier's idle timeout: what a stop at the idle deadline would not hold
    stretches: dict[str, float] = field(default_factory=dict)  # owner -> seconds idle in the stretch up to now
    equivalent_seconds: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    active_stops: int = 0
    stops: Counter = field(default_factory=Counter)
    asked: set[str] = field(default_factory=set)

    def step(self, seconds: float, holdings: Iterable[Holding]) -> None:
        stretches = {}
        for h in holdings:
            self.held += h.count * seconds
            if not h.computing:
                self.idle += h.count * seconds
                if not h.present:
                    self.idle_absent += h.count * seconds
                if h.owner and not h.hold:
                    before = self.stretches.get(h.owner, 0.0)
                    stretches[h.owner] = before + seconds
                    self.idle_late += h.count * max(0.0, before + seconds - max(before, h.idle_timeout))
            if not h.hold:
                self.equivalent_seconds[h.user] = self.equivalent_seconds.get(h.user, 0.0) + h.equivalents * seconds
        self.stretches = stretches  # a stretch ends when its assignment computes or goes

    def figures(self) -> dict:
        received = [self.equivalent_seconds.get(u, 0.0) / HOUR for u in sorted(self.asked)]
        return {
            "held_slice_hours": round(self.held / HOUR, 1),
            "idle_held_slice_hours": round(self.idle / HOUR, 1),
            "idle_share_percent": round(100 * self.idle / self.held, 1) if self.held else None,
            "idle_owner_present_slice_hours": round((self.idle - self.idle_absent) / HOUR, 1),
            "idle_owner_away_slice_hours": round(self.idle_absent / HOUR, 1),
            "idle_past_timeout_slice_hours": round(self.idle_late / HOUR, 1),
            "idle_within_timeout_share_percent": round(100 * (self.idle - self.idle_late) / self.held, 1)
            if self.held else None,
            "wait_p50_min": round(percentile(self.waits, 0.5) / MINUTE, 1) if self.waits else None,
            "wait_p95_min": round(percentile(self.waits, 0.95) / MINUTE, 1) if self.waits else None,
            "waits": len(self.waits),
            "jain_gpu_hours": round(jain(received), 3) if received else None,
            "users_who_asked": len(received),
            "gpu_equivalent_hours": round(sum(received), 1),
            "stopped_while_active": self.active_stops,
            "system_stops": dict(self.stops),
        }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 when all are equal, 1/n when one has everything."""
    if not values:
        raise ValueError("Jain's index of nothing")
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else sum(values) ** 2 / (len(values) * squares)


# ---- DS01's rules, simulated ----------------------------------------------------------------------------------------
@dataclass
class _Container:
    owner: str  # "user/workspace"
    user: str
    slot: tuple[str, str, int]
    started: float
    run_end: float | None = None  # batch runs end by themselves
    idle_hits: int = 0
    last_computing: float = -1e18


def simulate_ds01(trace: Trace, step: float = STEP) -> dict:
    behaviour = Behaviour(trace)
    people = {p.name: p for p in trace.people}
    slots = [(node, res, i) for node, kinds in DEVICES.items() for res, n in kinds.items() for i in range(n)]
    containers: dict[str, _Container] = {}
    holds: dict[tuple[str, str, int], tuple[str, float]] = {}  # slot -> (owner, until)
    requests: dict[str, tuple[float, float, str, float | None]] = {}  # owner -> (since, next try, resource, run)
    tally = Tally()

    def stop(owner: str, t: float, reason: str | None, hold: bool = True) -> None:
        c = containers.pop(owner)
        if hold:
            holds[c.slot] = (owner, t + HOLD)
        if reason is not None:
            tally.stops[reason] += 1
            if c.last_computing >= t - ACTIVE_WINDOW:
                tally.active_stops += 1

    t = 0.0
    end = trace.days * DAY
    while t < end:
        for slot, (_owner, until) in list(holds.items()):
            if until <= t:
                del holds[slot]
        for owner, c in list(containers.items()):
            if c.run_end is not None and c.run_end <= t:
                stop(owner, t, None, hold=False)
            elif t - c.started >= MAX_RUNTIME[people[c.user].tier]:
                stop(owner, t, "MaxRuntime")
        if t % HOUR == 0:
            for owner, c in list(containers.items()):
                if c.run_end is not None:
                    continue
                c.idle_hits = 0 if behaviour.computing(c.user, t) else c.idle_hits + 1
                if c.idle_hits >= 3:
                    stop(owner, t, "Idle")
        for person in trace.people:
            owner = f"{person.name}/ws"
            state = "running" if owner in containers else "waiting" if owner in requests else "off"
            act = behaviour.action(person.name, t, state)
            if act == "start":
                requests[owner] = (t, t, resource_of(person.profile), None)
                tally.asked.add(person.name)
            elif act == "stop":
                if owner in containers:
                    stop(owner, t, None)
                requests.pop(owner, None)
        for run in trace.runs:
            if run.submit <= t < run.submit + step:
                owner = f"{run.user}/{run.name}"
                requests[owner] = (t, t, resource_of(people[run.user].profile), run.duration)
                tally.asked.add(run.user)
        for owner, (since, next_try, resource, duration) in sorted(requests.items(), key=lambda kv: (kv[1][1], kv[0])):
            if next_try > t:
                continue
            own = [s for s, (o, _u) in holds.items() if o == owner and s[1] == resource]
            free = own or [s for s in slots if s[1] == resource and s not in holds
                           and all(c.slot != s for c in containers.values())]
            if free:
                slot = free[0]  # the first free slot
                holds.pop(slot, None)
                user = owner.split("/", 1)[0]
                containers[owner] = _Container(owner, user, slot, t, None if duration is None else t + duration)
                tally.waits.append(t - since)
                del requests[owner]
            else:
                requests[owner] = (since, next_try + DS01_RETRY, resource, duration)
        holdings = []
        for c in containers.values():
            computing = c.run_end is not None or behaviour.computing(c.user, t)
            if computing:
                c.last_computing = t
            holdings.append(Holding(c.user, c.slot[1], 1, False, computing, WEIGHT[people[c.user].profile],
                                    behaviour.present(c.user, t) is not None, c.owner,
                                    math.inf if c.run_end is not None else IDLE_TIMEOUT[people[c.user].tier]))
        for slot, (owner, _until) in holds.items():
            user = owner.split("/", 1)[0]
            holdings.append(Holding(user, slot[1], 1, True, False, 0.0, behaviour.present(user, t) is not None))
        tally.step(step, holdings)
        t += step
    return tally.figures()


# ---- labkeeper, replayed --------------------------------------------------------------------------------------------
def replay_labkeeper(trace: Trace, scale: float, workdir: Path) -> dict:
    """The real operator on a real control plane; this process plays the people and each node's agent."""
    from labkeeper.agent.activity import ActivityMonitor, FileSampler, HostReader
    from labkeeper.agent.activity_loop import ActivityLoop, thresholds_of
    from labkeeper.api.policy import load_policy, parse_duration
    from labkeeper.controller.main import ScaledClock
    from labkeeper.kube.client import Kube
    from labkeeper.render import pod as render_pod
    from labkeeper.testing.cluster import NodeSpec
    from labkeeper.testing.kwokstages import EXIT_CODE_ANNOTATION
    from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace

    policy_doc = example_policy()  # unchanged: the durations are the lab's, the clock is what runs faster
    import yaml

    policy = load_policy(yaml.safe_dump(policy_doc))
    timeouts = {tier: parse_duration(policy.effective_limits("anyone", tier)["idleTimeout"].value).total_seconds()
                for tier in policy.tiers}
    if timeouts != IDLE_TIMEOUT:
        raise SystemExit(f"the example policy's idle timeouts {timeouts} are not the ones the figures assume")
    people = {p.name: p for p in trace.people}
    # the week starts a minute of wall time from now: the lab starts and the users are provisioned before
    anchor = time.time() + 90.0
    clock = ScaledClock(EPOCH, anchor, scale)
    lab = Lab((NodeSpec("h100", "h100-balanced"), NodeSpec("gpus", "full-gpus")), policy_doc, workdir / "lab",
              operator_args=["--accelerated-clock", f"{scale}@{EPOCH.isoformat()}@{anchor}"])
    tally = Tally()
    lag: list[float] = []
    cull_lag: list[float] = []
    preempted: set[str] = set()
    active_stops: list[dict] = []
    with lab:
        lab.add_users(*(gpuuser(p.name, p.tier) for p in trace.people), timeout=300)
        kube = Kube.from_kubeconfig(str(lab.cluster.kubeconfig))
        activity_file = workdir / "gpus.json"
        activity_file.write_text(json.dumps({"devices": [], "processes": []}))
        empty = workdir / "host"
        (empty / "proc").mkdir(parents=True, exist_ok=True)
        (empty / "cgroup").mkdir(parents=True, exist_ok=True)
        step_kube = _StepKube(kube)
        agents = [ActivityLoop(step_kube, node, ActivityMonitor(FileSampler(activity_file), thresholds_of(policy), clock,
                                                           host=HostReader(empty / "proc", empty / "cgroup")),
                               lambda: policy, clock) for node in DEVICES]
        behaviour = Behaviour(trace)
        late = (clock() - EPOCH).total_seconds()
        if late > 6 * HOUR:  # the first person arrives at 07:00
            raise SystemExit(f"the lab took too long to start: the week began {late / HOUR:.1f} h of lab time ago")
        time.sleep(max(0.0, -late / scale))
        requested: dict[str, float] = {}  # owner -> when the pending request was made
        we_stopped: set[str] = set()
        seen_stop: set[str] = set()
        last_computing: dict[str, float] = {}
        run_started: dict[str, float] = {}
        runs = {f"{r.user}/{r.name}": r for r in trace.runs}
        submitted: set[str] = set()
        end = trace.days * DAY
        prev = 0.0
        next_step = 0.0
        report_at = 6 * HOUR
        while next_step < end:
            now = (clock() - EPOCH).total_seconds()
            if now < next_step:
                time.sleep((next_step - now) / scale)
                continue
            # a step that ran long is not made up for: the next one is a step from now (the lag is reported)
            lag.append(now - next_step)
            t = now
            step_kube.items = kube.list("Workspace")
            listed = {f"{ws['metadata']['namespace'].removeprefix('lab-')}/{ws['metadata']['name']}": ws
                      for ws in step_kube.items}
            if t >= report_at:
                report_at += 6 * HOUR
                phases = Counter((ws.get("status") or {}).get("phase") for ws in listed.values())
                print(f"  day {int(t // DAY) + 1} {dt.timedelta(seconds=int(t % DAY))}: {dict(phases)}; step behind "
                      f"p50 {statistics.median(lag[-200:]):.0f} s, max {max(lag[-200:]):.0f} s; held "
                      f"{tally.held / HOUR:.1f} slice-h, idle {tally.idle / HOUR:.1f}; load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
            acted: set[str] = set()
            # the people
            for person in trace.people:
                owner = f"{person.name}/ws"
                ws = listed.get(owner)
                state = _state(ws)
                if owner in requested and state == "running":
                    tally.waits.append(t - requested.pop(owner))
                act = behaviour.action(person.name, t, state)
                if act is not None:
                    acted.add(owner)
                if act == "start":
                    tally.asked.add(person.name)
                    requested[owner] = t
                    we_stopped.discard(owner)
                    seen_stop.discard(owner)
                    _set_state(kube, ws, workspace("ws", person.name, profile=person.profile, cpu="1", memory="2Gi"),
                               "Running")
                elif act == "stop":
                    requested.pop(owner, None)
                    we_stopped.add(owner)
                    _set_state(kube, ws, None, "Stopped")
            for owner, run in runs.items():
                if owner not in submitted and run.submit <= t:
                    submitted.add(owner)
                    tally.asked.add(run.user)
                    requested[owner] = t
                    kube.create(workspace(run.name, run.user, profile=people[run.user].profile, cpu="1",
                                          memory="2Gi", mode="Batch", command=["python", "train.py"]))
            # the outcomes the system decided: culls, limits, preemptions, runs that end
            for owner, ws in listed.items():
                user, name = owner.split("/", 1)
                status, spec = ws.get("status") or {}, ws.get("spec") or {}
                if owner in runs:
                    if owner in requested and _state(ws) == "running":
                        tally.waits.append(t - requested.pop(owner))
                    if status.get("phase") == "Running" and owner not in run_started:
                        run_started[owner] = t
                    if owner in run_started and t - run_started[owner] >= runs[owner].duration \
                            and status.get("phase") == "Running":
                        kube.patch("Pod", render_pod.pod_name(name), {"metadata": {"annotations": {
                            EXIT_CODE_ANNOTATION: "0"}}}, f"lab-{user}")
                        run_started[owner] = float("inf")
                reason = status.get("stopReason")
                if spec.get("state") == "Stopped" and reason in ("Idle", "MaxRuntime") and owner not in we_stopped \
                        and owner not in seen_stop and owner not in acted:
                    seen_stop.add(owner)
                    tally.stops[reason] += 1
                    if last_computing.get(owner, -1e18) >= t - ACTIVE_WINDOW:
                        tally.active_stops += 1
                        # what the operator had to go on: the agent's last report against the trace's last compute
                        active_stops.append({
                            "owner": owner, "reason": reason, "seen_at": _clock_text(t),
                            "last_computing": _clock_text(last_computing[owner]),
                            "last_activity": status.get("lastActivity"), "idle_deadline": status.get("idleDeadline"),
                            "runtime_deadline": status.get("runtimeDeadline"), "message": status.get("message"),
                            "driver_step_behind_s": round(lag[-1], 1)})
                    deadline = status.get("idleDeadline")
                    if reason == "Idle" and deadline:
                        cull_lag.append(t - (_parse(deadline) - EPOCH).total_seconds())
                if status.get("phase") == "Preempted" and owner not in preempted:
                    preempted.add(owner)
                    tally.stops["Preempted"] += 1
                    if last_computing.get(owner, -1e18) >= t - ACTIVE_WINDOW:
                        tally.stops["PreemptedWhileComputing"] += 1
                elif status.get("phase") != "Preempted":
                    preempted.discard(owner)
            # what each running pod's slice does, for the agent's sampler
            holdings, devices, processes = [], [], []
            for owner, ws in listed.items():
                user, name = owner.split("/", 1)
                status = ws.get("status") or {}
                profile = ((ws.get("spec") or {}).get("gpu") or {}).get("profile") or "none"
                if profile == "none":
                    continue
                resource = resource_of(profile)
                phase = status.get("phase")
                assigned = phase in ("Starting", "Running", "IdleWarning", "Stopping") and status.get("podUID")
                computing = bool(assigned) and (owner in runs or behaviour.computing(user, t))
                if computing:
                    last_computing[owner] = t
                if assigned:
                    holdings.append(Holding(user, resource, 1, False, computing, WEIGHT[profile],
                                            behaviour.present(user, t) is not None, owner,
                                            math.inf if owner in runs else IDLE_TIMEOUT[people[user].tier]))
                    pod_uid = status["podUID"]
                    device = f"MIG-{pod_uid}" if profile != "full" else f"GPU-{pod_uid}"
                    util = 60 if computing else 0
                    if profile == "full":
                        devices.append({"uuid": device, "name": "NVIDIA H100 80GB HBM3", "utilization": util})
                    else:
                        devices.append({"uuid": f"GPU-{pod_uid}", "name": "NVIDIA H100 80GB HBM3",
                                        "migInstances": [{"uuid": device, "profile": profile, "smUtilization": util}]})
                    processes.append({"pid": 100000 + len(processes), "device": device, "usedMemory": "4Gi",
                                      "podUid": pod_uid})
                elif status.get("holdNode") and status.get("holdUntil") \
                        and _parse(status["holdUntil"]) > EPOCH + dt.timedelta(seconds=t):
                    holdings.append(Holding(user, resource, 1, True, False, 0.0, behaviour.present(user, t) is not None))
            tally.step(t - prev if prev else 0.0, holdings)
            prev = t
            temp = activity_file.with_suffix(".tmp")
            temp.write_text(json.dumps({"devices": devices, "processes": processes}))
            temp.replace(activity_file)
            for agent in agents:
                agent.tick()
            next_step = t + STEP
        figures = tally.figures()
        figures["driver_lag_p50_s"] = round(statistics.median(lag), 1) if lag else None
        figures["driver_lag_p95_s"] = round(percentile(lag, 0.95), 1) if lag else None
        figures["cull_after_idle_deadline_p50_s"] = round(statistics.median(cull_lag), 1) if cull_lag else None
        figures["cull_after_idle_deadline_p95_s"] = round(percentile(cull_lag, 0.95), 1) if cull_lag else None
        figures["agent_writes"] = sum(a.writes for a in agents)
        figures["stopped_while_active_details"] = active_stops
    return figures


class _StepKube:
    """The agents' client: their list of Workspaces is the one this step read, everything else goes to the API."""

    def __init__(self, kube) -> None:
        self.kube = kube
        self.items: list[dict] = []

    def list(self, kind: str, *args, **kwargs) -> list[dict]:
        return self.items if kind == "Workspace" and not args and not kwargs else self.kube.list(kind, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.kube, name)


def _clock_text(t: float) -> str:
    """A trace time as the lab's clock read it."""
    return (EPOCH + dt.timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _state(ws: dict | None) -> str:
    if ws is None or (ws.get("spec") or {}).get("state") == "Stopped" or ws["metadata"].get("deletionTimestamp"):
        return "off"
    status = ws.get("status") or {}
    if status.get("phase") in ("Starting", "Running", "IdleWarning") and status.get("podUID"):
        return "running"
    if status.get("phase") in ("Succeeded", "Failed", "Stopped"):
        return "off"
    return "waiting"


def _set_state(kube, ws: dict | None, doc: dict | None, state: str) -> None:
    from kubernetes.client.exceptions import ApiException

    if ws is None:
        if doc is not None:
            kube.create(doc)
        return
    try:
        kube.patch("Workspace", ws["metadata"]["name"], {"spec": {"state": state}}, ws["metadata"]["namespace"])
    except ApiException as err:
        if err.status != 404 or doc is None:
            raise
        kube.create(doc)  # stoppedRetention removed it meanwhile


# ---- the report -----------------------------------------------------------------------------------------------------
ROWS = [
    ("held_slice_hours", "slice-hours held", "-"),
    ("idle_held_slice_hours", "slice-hours held while idle", "labkeeper >= 10x less than DS01"),
    ("idle_share_percent", "idle share of held slice-hours (%)", "labkeeper <= 5 %"),
    ("idle_owner_present_slice_hours", "  of it, owner at the lab (gaps, lunch)", "-"),
    ("idle_owner_away_slice_hours", "  of it, owner gone (nights, forgotten)", "-"),
    ("idle_past_timeout_slice_hours", "  of it, past the tier's idle timeout", "-"),
    ("idle_within_timeout_share_percent", "idle within the timeouts, share of held (%)", "-"),
    ("wait_p50_min", "wait for a slice p50 (min)", "-"),
    ("wait_p95_min", "wait for a slice p95 (min)", "labkeeper < DS01"),
    ("jain_gpu_hours", "Jain's index of GPU-hours (users who asked)", "-"),
    ("gpu_equivalent_hours", "GPU-equivalent-hours received", "-"),
    ("stopped_while_active", "stopped while computing", "labkeeper 0"),
]


def table(ds01: dict, labkeeper: dict | None) -> str:
    lines = [f"| {'figure':44} | {'DS01 rules':>10} | {'labkeeper':>10} | target"]
    lines.append(f"|{'-' * 46}|{'-' * 12}|{'-' * 12}|-------")
    for key, label, target in ROWS:
        lk = "-" if labkeeper is None else labkeeper.get(key)
        lines.append(f"| {label:44} | {ds01.get(key)!s:>10} | {lk!s:>10} | {target}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--scale", type=float, default=336.0, help="lab seconds per wall second (336: a week in 30 min)")
    parser.add_argument("--ds01-only", action="store_true")
    args = parser.parse_args()
    trace = generate(args.seed, args.users, args.days)
    print(f"trace seed {args.seed} ({trace.digest()}): {len(trace.people)} people, {args.days} days, "
          f"{len(trace.sessions)} days at the lab, {sum(len(d.bursts) for d in trace.sessions)} bursts, "
          f"{Counter(d.at_leave for d in trace.sessions)}, {len(trace.runs)} batch runs")
    ds01 = simulate_ds01(trace)
    labkeeper = None
    started = time.monotonic()
    if not args.ds01_only:
        with tempfile.TemporaryDirectory(prefix="labkeeper-labweek-") as tmp:
            labkeeper = replay_labkeeper(trace, args.scale, Path(tmp))
    print(table(ds01, labkeeper))
    for name, figures in (("DS01 rules", ds01), ("labkeeper", labkeeper)):
        if figures is not None:
            print(f"{name}: system stops {figures['system_stops']}, {figures['waits']} waits, "
                  f"{figures['users_who_asked']} users asked")
    if labkeeper is not None:
        print(f"replay at {args.scale:g}x took {time.monotonic() - started:.0f} s; driver behind its step p50/p95 "
              f"{labkeeper['driver_lag_p50_s']}/{labkeeper['driver_lag_p95_s']} s of lab time; cull after the idle "
              f"deadline p50/p95 {labkeeper['cull_after_idle_deadline_p50_s']}/"
              f"{labkeeper['cull_after_idle_deadline_p95_s']} s of lab time; load average {os.getloadavg()[0]:.1f}")
        for stop in labkeeper["stopped_while_active_details"]:
            print(f"  stopped while computing: {stop}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "labweek.json").write_text(json.dumps(
        {"seed": args.seed, "trace": trace.digest(), "scale": args.scale, "ds01": ds01, "labkeeper": labkeeper},
        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
