"""Who gets the next GPU device: the admission decision, a pure function of what each node offers,
what is bound, pinned or held there, and who waits.

The operator acts on it (it creates a waiting workspace's pod only when this admits it, pinned to the
node chosen here) and labctl's board sorts its queue with the same key, so both tell the same story.
A held device is counted as in use for everyone but its holder, so it is never offered to anyone else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labkeeper.api.devices import FULL_GPU, is_device, profile_of, resource_of
from labkeeper.api.names import LABEL_ROLE as LABEL_ROLE
from labkeeper.api.names import LABEL_WORKSPACE as LABEL_WORKSPACE
from labkeeper.api.names import username_of
from labkeeper.api.phases import RUNNING_PHASES
from labkeeper.api.units import parse_time

QUEUE_AHEAD_LISTED = 5  # those ahead a waiter is told of by name; the rest are counted (a list of all grew with the
# square of the queue, in each decision and in each status)

Slot = tuple[str, str]  # (node, resource)


@dataclass(frozen=True)
class Claim:
    """Devices one workspace has on a node: its pod (bound there, or pinned there and waiting for the
    scheduler) or, with `held_until`, the hold that keeps them for it after a stop."""

    owner: str  # "namespace/name" of the Workspace
    node: str
    resource: str
    count: int
    held_until: dt.datetime | None = None
    priority: int = 0
    terminating: bool = False

    @property
    def is_hold(self) -> bool:
        return self.held_until is not None


@dataclass(frozen=True)
class Waiter:
    owner: str
    resource: str
    count: int
    priority: int
    waiting_since: dt.datetime
    may_preempt: bool = False
    usage: float = 0.0  # her decayed usage relative to her tier's share (api/accounting.py)

    @property
    def key(self) -> tuple[int, float, dt.datetime, str]:
        return queue_key(self.priority, self.usage, self.waiting_since, self.owner)


def queue_key(priority: int, usage: float, waiting_since: dt.datetime, owner: str) -> tuple[int, float, dt.datetime, str]:
    """Tier priority first, then fair share (the lowest decayed usage relative to her tier's share), then first
    come, first served. Usage is rounded to a thousandth so that what accrues while two wait cannot reorder them
    by noise."""
    return (-priority, round(usage, 3), waiting_since, owner)


def device_words(resource: str, count: int = 1) -> str:
    """`1g.10gb slice`, `2 full GPUs`: a device as the lab speaks of it."""
    if resource == FULL_GPU:
        return "full GPU" if count == 1 else f"{count} full GPUs"
    profile = profile_of(resource)
    return f"{profile} slice" if count == 1 else f"{count} {profile} slices"


@dataclass(frozen=True)
class Wait:
    """Why a workspace still waits, in numbers the message is made of."""

    owner: str
    resource: str
    count: int
    offered: int  # devices of this kind on open nodes
    in_use: int
    held_until: tuple[dt.datetime, ...]
    ahead: int
    ahead_owners: tuple[str, ...] = ()  # "namespace/name" of the first QUEUE_AHEAD_LISTED ahead of it for this device

    def message(self) -> str:
        what = device_words(self.resource, self.count)
        if self.offered == 0:
            return f"no node offers a {what}" if self.count == 1 else f"no node offers {what}"
        wanted = f"free {what}" if self.count == 1 else f"{what} free on one node"
        parts = [f"{self.in_use} in use"]
        if self.held_until:
            first = min(self.held_until).strftime("%H:%M:%S UTC")
            parts.append(f"{len(self.held_until)} held until {first}" if len(self.held_until) == 1
                         else f"{len(self.held_until)} held, the first until {first}")
        queue = (f"{self.ahead} workspace{'s' if self.ahead != 1 else ''} ahead of you" if self.ahead
                 else "you are next")
        return f"no {wanted} ({', '.join(parts)}); {queue}"

    def short(self) -> str:
        """The same, for a line that already names the device (labctl's board)."""
        if self.offered == 0:
            return "no node offers it"
        held = f", {len(self.held_until)} held until {min(self.held_until).strftime('%H:%M')}" if self.held_until else ""
        return f"{self.in_use} in use{held}; " + (f"{self.ahead} ahead" if self.ahead else "next in line")


@dataclass
class Admission:
    admitted: dict[str, str] = field(default_factory=dict)  # owner → node its pod is pinned to
    preempting: set[str] = field(default_factory=set)  # admitted owners that need the scheduler to preempt
    waiting: dict[str, Wait] = field(default_factory=dict)
    lost_holds: list[Claim] = field(default_factory=list)


@dataclass
class Usage:
    """What a node's devices are taken by: pods, and holds beyond what their holder's pod already covers."""

    pods: dict[Slot, int] = field(default_factory=dict)
    held: dict[Slot, int] = field(default_factory=dict)
    holds: dict[str, Claim] = field(default_factory=dict)  # owner → its hold, still good
    extra: dict[str, int] = field(default_factory=dict)  # owner → devices only its hold keeps
    lost: list[Claim] = field(default_factory=list)

    def used(self, slot: Slot) -> int:
        return self.pods.get(slot, 0) + self.held.get(slot, 0)


def usage(capacity: Mapping[Slot, int], claims: Iterable[Claim]) -> Usage:
    """A workspace's pod and its hold on the same node are one set of devices (the hold is taken while
    the pod terminates, and dropped once the next pod is pinned), so each owner counts once, at the
    larger. Pods are facts; where pods and holds together exceed what a node offers, the holds taken
    last are the ones lost."""
    per_owner: dict[tuple[str, str, str], list[Claim]] = {}
    for claim in claims:
        per_owner.setdefault((claim.node, claim.resource, claim.owner), []).append(claim)
    result = Usage()
    extras: dict[Slot, list[tuple[Claim, int]]] = {}
    for (node, resource, _owner), group in per_owner.items():
        pods = sum(c.count for c in group if not c.is_hold)
        result.pods[(node, resource)] = result.pods.get((node, resource), 0) + pods
        for hold in (c for c in group if c.is_hold):
            extras.setdefault((node, resource), []).append((hold, max(0, hold.count - pods)))
    for slot, entries in sorted(extras.items()):
        for hold, extra in sorted(entries, key=lambda e: (e[0].held_until, e[0].owner)):
            if extra and result.used(slot) + extra > capacity.get(slot, 0):
                result.lost.append(hold)
                continue
            result.held[slot] = result.held.get(slot, 0) + extra
            result.holds[hold.owner] = hold
            result.extra[hold.owner] = extra
    return result


def decide(capacity: Mapping[Slot, int], claims: Iterable[Claim], waiters: Iterable[Waiter],
           closed: frozenset[str] = frozenset()) -> Admission:
    """Admits waiting workspaces in queue order onto free devices; `closed` nodes take no new pod.

    A holder coming back gets its own held devices, whatever its place in the queue. Everyone else takes
    only devices that are neither in use nor held; once one waiter for a kind of device cannot be placed,
    nobody behind it gets that kind (no overtaking). A waiter whose tier may preempt, with nothing free,
    is pinned to a node where lower-priority pods hold enough devices and nothing of that kind is held,
    so the scheduler's preemption can only ever take from those pods, never from a hold."""
    claims = list(claims)
    taken = usage(capacity, claims)
    holds = taken.holds
    result = Admission(lost_holds=taken.lost)
    free = {slot: capacity.get(slot, 0) - taken.used(slot) for slot in capacity}
    victims: dict[Slot, list[Claim]] = {}
    for claim in claims:
        if not claim.is_hold and not claim.terminating:
            victims.setdefault((claim.node, claim.resource), []).append(claim)
    held_slots = {(c.node, c.resource) for c in holds.values()}
    ordered = sorted(waiters, key=lambda w: w.key)
    blocked: set[str] = set()
    behind: dict[str, list[str]] = {}  # resource → the first QUEUE_AHEAD_LISTED waiting for it
    waiting_for: dict[str, int] = {}  # resource → how many wait for it
    granted: dict[Slot, int] = {}  # devices given in this decision to waiters whose pods are not there yet
    facts: dict[str, tuple[int, int, tuple[dt.datetime, ...]]] = {}  # resource → offered, in use, held until
    for waiter in ordered:
        own = holds.get(waiter.owner)
        if own is not None and own.resource == waiter.resource and own.count >= waiter.count \
                and own.node not in closed:
            result.admitted[waiter.owner] = own.node
            continue
        node = None
        if waiter.resource not in blocked:
            fits = [(free[slot], slot[0]) for slot in free
                    if slot[1] == waiter.resource and slot[0] not in closed and free[slot] >= waiter.count]
            if fits:
                node = min(fits)[1]  # the tightest fit keeps larger free blocks for larger requests
                free[(node, waiter.resource)] -= waiter.count
            elif waiter.may_preempt:
                node = _preemption_target(waiter, free, victims, held_slots, closed)
                if node is not None:
                    result.preempting.add(waiter.owner)
        if node is not None:
            result.admitted[waiter.owner] = node
            granted[(node, waiter.resource)] = granted.get((node, waiter.resource), 0) + waiter.count
            continue
        blocked.add(waiter.resource)
        if waiter.resource not in facts:
            # nothing more of a blocked kind is granted in this decision: what its waiters are told is the same
            facts[waiter.resource] = _wait_facts(waiter.resource, capacity, closed, taken, granted)
        offered, in_use, held = facts[waiter.resource]
        ahead = waiting_for.get(waiter.resource, 0)
        waiting_for[waiter.resource] = ahead + 1
        first = behind.setdefault(waiter.resource, [])
        result.waiting[waiter.owner] = Wait(
            waiter.owner, waiter.resource, waiter.count, offered=offered, in_use=in_use, held_until=held,
            ahead=ahead, ahead_owners=tuple(first))
        if len(first) < QUEUE_AHEAD_LISTED:
            first.append(waiter.owner)
    return result


def _wait_facts(resource: str, capacity: Mapping[Slot, int], closed: frozenset[str], taken: Usage,
                granted: Mapping[Slot, int]) -> tuple[int, int, tuple[dt.datetime, ...]]:
    """Devices of `resource` on open nodes: offered, in use (pods and those just granted), held until when."""
    open_slots = {s for s in capacity if s[1] == resource and s[0] not in closed}
    held = tuple(sorted(c.held_until for c in taken.holds.values() if (c.node, c.resource) in open_slots
                        and c.held_until is not None for _ in range(taken.extra[c.owner])))
    return (sum(capacity[s] for s in open_slots),
            sum(taken.pods.get(s, 0) + granted.get(s, 0) for s in open_slots), held)


@dataclass(frozen=True)
class Release:
    """A moment known in advance when devices come free: a hold's expiry, a runtime limit, an idle deadline."""

    at: dt.datetime
    node: str
    resource: str
    count: int
    why: str  # "the hold of lab-bob/slice expires", ...


def estimated_start(wait: Wait, releases: Iterable[Release], closed: frozenset[str] = frozenset()) -> Release | None:
    """When a waiting workspace can start at the earliest, if the lab knows: it needs the devices of the releases
    that come first, one set for each of those ahead of it and then its own (an idle deadline may move later
    with activity, so this is an estimate). None when too few releases are known."""
    return start_from(wait, release_order(releases, closed).get(wait.resource, ()))


def release_order(releases: Iterable[Release], closed: frozenset[str] = frozenset()) -> dict[str, tuple[Release, ...]]:
    """resource → its releases on open nodes, soonest first: sorted once for a decision's every waiter."""
    order: dict[str, list[Release]] = {}
    for release in sorted(releases, key=lambda r: (r.at, r.node)):
        if release.node not in closed:
            order.setdefault(release.resource, []).append(release)
    return {resource: tuple(known) for resource, known in order.items()}


def start_from(wait: Wait, known: Iterable[Release]) -> Release | None:
    """estimated_start from the releases of its kind, soonest first (release_order)."""
    needed = wait.count * (wait.ahead + 1)
    freed = 0
    for release in known:
        freed += release.count
        if freed >= needed:
            return release
    return None


def _preemption_target(waiter: Waiter, free: dict[Slot, int], victims: dict[Slot, list[Claim]],
                       held_slots: set[Slot], closed: frozenset[str]) -> str | None:
    options = []
    for slot, pods in victims.items():
        node, resource = slot
        if resource != waiter.resource or node in closed or slot in held_slots:
            continue
        lower = [c for c in pods if c.priority < waiter.priority]
        if max(0, free.get(slot, 0)) + sum(c.count for c in lower) >= waiter.count:
            options.append((sum(c.count for c in lower), node))
    if not options:
        return None
    _fewest, node = min(options)
    victims[(node, waiter.resource)] = []  # one preemptor per node and kind at a time
    return node


# ---- from API objects ---------------------------------------------------------------------------
# labels and fields shared by the operator, which writes them, and labctl, which reads them


def equivalents(resource: str, count: int, weights: Mapping[str, float]) -> float:
    """GPU equivalents of `count` devices of one kind, by the policy's weights (a full GPU weighs `full`)."""
    if not is_device(resource):
        return 0.0
    return weights.get(profile_of(resource), 1.0) * count


def capacity_of(nodes: Iterable[dict[str, Any]]) -> tuple[dict[Slot, int], frozenset[str]]:
    """Devices each node offers, and the nodes that take no new pod (cordoned or not Ready)."""
    capacity: dict[Slot, int] = {}
    closed = set()
    for node in nodes:
        name = node["metadata"]["name"]
        for resource, qty in ((node.get("status") or {}).get("allocatable") or {}).items():
            if is_device(resource) and str(qty).isdigit() and int(qty) > 0:
                capacity[(name, resource)] = int(qty)
        ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        if (node.get("spec") or {}).get("unschedulable") or (ready is not None and ready.get("status") != "True"):
            closed.add(name)
    return capacity, frozenset(closed)


def pinned_node(pod: dict[str, Any]) -> str | None:
    """The node a pod is bound to, or the one node its required affinity allows."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for expr in (term.get("matchFields") or []) + (term.get("matchExpressions") or []):
            if expr.get("key") in ("metadata.name", "kubernetes.io/hostname") and expr.get("operator") == "In" \
                    and len(expr.get("values") or []) == 1:
                return str(expr["values"][0])
    host = (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname")
    return str(host) if host is not None else None


def pod_devices(pod: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for resource, qty in ((container.get("resources") or {}).get("limits") or {}).items():
            if is_device(resource):
                out.append((resource, int(qty)))
    return out


def owner_of(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace')}/{(meta.get('labels') or {}).get(LABEL_WORKSPACE) or meta['name']}"


def pod_claims(pods: Iterable[dict[str, Any]]) -> list[Claim]:
    """Devices of every pod that is bound or pinned to a node and not finished."""
    claims = []
    for pod in pods:
        node = pinned_node(pod)
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for resource, count in pod_devices(pod):
            claims.append(Claim(owner_of(pod), node, resource, count, priority=int(pod["spec"].get("priority") or 0),
                                terminating=bool(pod["metadata"].get("deletionTimestamp"))))
    return claims


# The workspaces admission counts, as a union of field selectors on the Workspace's selectable fields (crds.py):
# every one not Stopped (it may wait, start, run or stop) and every one holding a device. The rest, most of a lab,
# are Stopped and keep nothing: their status carries no waitingSince (a pass clears it unless it finds one waiting),
# no hold and no deadline, so hold_claim, waiting_since and releases_of find nothing in them.
LIVE_WORKSPACES = ("status.holdNode!=", "status.phase!=Stopped")


HOLD_FIELDS = ("holdNode", "holdResource", "holdCount", "holdUntil")  # a hold after a stop, in a Workspace's status


def hold_claim(ws: dict[str, Any], now: dt.datetime) -> Claim | None:
    """The hold a stopped workspace's status records (holdNode, holdResource, holdCount, holdUntil), if
    it has not expired."""
    status = ws.get("status") or {}
    until = parse_time(status.get("holdUntil"))
    if not status.get("holdNode") or not status.get("holdResource") or until is None or until <= now:
        return None
    meta = ws["metadata"]
    return Claim(f"{meta.get('namespace')}/{meta['name']}", status["holdNode"], status["holdResource"],
                 int(status.get("holdCount") or 1), held_until=until)


def waiting_since(ws: dict[str, Any]) -> dt.datetime | None:
    return parse_time((ws.get("status") or {}).get("waitingSince"))


def format_waiting_since(t: dt.datetime) -> str:
    """To the microsecond: two workspaces that begin to wait in the same second keep their order."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def releases_of(workspaces: Iterable[dict[str, Any]], now: dt.datetime) -> list[Release]:
    """What each workspace's status says about when its devices come free: a hold's expiry, or for a running one
    the nearer of its runtime deadline and idle deadline."""
    out = []
    for ws in workspaces:
        status = ws.get("status") or {}
        who = f"{username_of(ws['metadata']['namespace']) or ws['metadata']['namespace']}/{ws['metadata']['name']}"
        hold = hold_claim(ws, now)
        if hold is not None and hold.held_until is not None:
            out.append(Release(hold.held_until, hold.node, hold.resource, hold.count, f"the hold of {who} expires"))
            continue
        gpu = (ws.get("spec") or {}).get("gpu") or {}
        profile = gpu.get("profile") or "none"
        if status.get("phase") not in RUNNING_PHASES or not status.get("node") or profile == "none":
            continue
        resource = resource_of(profile)
        deadlines = [(t, why) for t, why in ((parse_time(status.get("runtimeDeadline")), f"{who} reaches its runtime limit"),
                                             (parse_time(status.get("idleDeadline")), f"{who} reaches its idle deadline"))
                     if t is not None]
        if deadlines:
            at, why = min(deadlines)
            out.append(Release(max(at, now), status["node"], resource, int(gpu.get("count") or 1), why))
    return out
