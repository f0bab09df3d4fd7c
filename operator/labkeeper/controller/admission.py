"""The admission step: reads the lab from the API (nodes, labkeeper's pods, Workspaces, users) and asks
the pure decision in api/admission.py who may have which device now.

Everything it decides from lives in the API — pods, Workspace status (waitingSince, the hold record)
and the policy — so an operator that restarts decides exactly as the one before it. One lock serializes
every decision together with the pod creation it allows, so two passes can never count the same free
device: the next pass reads the pod the previous one created. A read of the lab is made without that lock (one
read at a time): passes a kept view serves go on while it runs, and a pod one of them creates meanwhile is counted
into what the read found (`created()`), whether or not its lists caught it.

Reading the whole lab costs a list of every pod, workspace and user; at a department's size that is seconds,
and a wake-up gives every waiting workspace a pass. So a view is kept and handed again, under the lock, to the
passes that come after it, for at most REUSE_FOR of the operator's clock and only while nothing has happened that
can free a device or reorder the queue (the operator calls `changed()` on a pod deleted or ended, a workspace
deleted or leaving the queue, a device freed, a node's devices or readiness changing, a policy change). Within
that, the only changes it cannot know of are pods the kept decision itself admitted (their passes come after and
find themselves admitted in it: the decision counted each of them already), usage accruing and tiers edited
(at most REUSE_FOR late). A workspace that waits for other devices than the view has it waiting for always gets a
fresh one.

A workspace that asks for a device and is no waiter in the kept view (it was applied after the read) extends it
instead of reading the lab again, which at a department's size took seconds for each one applied: everyone the kept
decision admitted becomes a claim on the node it was given (its pod exists, or its pass will create it there, the
devices are counted either way), the newcomer joins the waiters with her user's usage as the read found it, and
the queue is decided again. Those admitted before stay admitted; waiters whose place the newcomer changed get a
pass. A decision that admitted anyone by preemption, or a newcomer whose user the read did not see, reads afresh."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labkeeper.api import accounting as api_accounting
from labkeeper.api import admission as api_admission
from labkeeper.api.names import LABEL_GPU, LABEL_MANAGED, MANAGED_BY, username_of
from labkeeper.api.policy import LabPolicy
from labkeeper.controller.policy import PolicyStore
from labkeeper.kube.client import Kube, list_union
from labkeeper.render.access import gpu_resource


@dataclass(frozen=True)
class LabView:
    capacity: dict[api_admission.Slot, int]
    closed: frozenset[str]
    claims: list[api_admission.Claim]
    waiters: list[api_admission.Waiter]
    pods_of: frozenset[str]  # owners with a workspace pod
    releases: tuple[api_admission.Release, ...] = ()  # when devices are known to come free
    places: dict[str, int | None] = field(default_factory=dict)  # waiter → queue position its status shows
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)  # waiter → its status.queue, as read
    reused: bool = False  # handed again after the pass that read it: the moves it found were told then
    usages: dict[str, float] = field(default_factory=dict)  # username → relative usage, as read
    carried: dict[str, str] = field(default_factory=dict)  # admitted before an extension (owner → node), now claims
    before: api_admission.Admission | None = None  # the decision this view extends

    def moved(self, decision: api_admission.Admission) -> list[str]:
        """Waiters whose place in the queue is no longer the one their status shows (someone joined ahead of them,
        or left): each gets a pass so that what `labctl status` says stays true. A view handed again has none: its
        `places` are from before those passes wrote their places. An extension's are those of the decision it
        extends, which every waiter's pass wrote or was woken to write."""
        if self.reused:
            return []
        if self.before is not None:
            earlier = self.before.waiting
            return [o for o, wait in decision.waiting.items() if o in earlier and earlier[o].ahead != wait.ahead]
        return [o for o, wait in decision.waiting.items() if self.places.get(o) != wait.ahead + 1]

    @functools.cached_property
    def waiter_of(self) -> dict[str, api_admission.Waiter]:
        return {w.owner: w for w in self.waiters}

    @functools.cached_property
    def releases_of(self) -> dict[str, tuple[api_admission.Release, ...]]:
        return api_admission.release_order(self.releases, self.closed)

    @functools.cached_property
    def decision(self) -> api_admission.Admission:
        decided = api_admission.decide(self.capacity, self.claims, self.waiters, self.closed)
        if self.carried:
            decided.admitted = {**self.carried, **decided.admitted}
        return decided

    def extended(self, newcomer: api_admission.Waiter, own_hold: api_admission.Claim | None) -> LabView | None:
        """This view with `newcomer` waiting too and everyone its decision admitted counted as taking the devices it
        was given; None where that would not be the lab as it is (see the module's words). `own_hold`: the hold the
        newcomer's status records now, which replaces the one the read saw (its record may have gone since: lost)."""
        decision = self.decision
        if decision.preempting:
            return None  # a preemption's devices are the scheduler's to free: they are no plain claim
        by_owner = self.waiter_of
        claims = [c for c in self.claims if not (c.is_hold and c.owner == newcomer.owner)]
        if own_hold is not None:
            claims.append(own_hold)
        for owner, node in decision.admitted.items():
            if owner not in self.carried:
                waiter = by_owner[owner]
                claims.append(api_admission.Claim(owner, node, waiter.resource, waiter.count,
                                                  priority=waiter.priority))
        waiters = [w for w in self.waiters if w.owner not in decision.admitted]
        return dataclasses.replace(
            self, claims=claims, waiters=[*waiters, newcomer], pods_of=self.pods_of | frozenset(decision.admitted),
            places={}, queues={}, reused=False, carried=dict(decision.admitted), before=decision)

    def decide(self) -> api_admission.Admission:
        return self.decision

    def with_created(self, claims: list[api_admission.Claim]) -> LabView:
        """This view with the pods created while it was read counted, each once (a list may have caught it):
        their owners hold devices and wait no more."""
        listed = {(c.owner, c.node, c.resource) for c in self.claims if not c.is_hold}
        new = [c for c in claims if (c.owner, c.node, c.resource) not in listed]
        if not new:
            return self
        owners = frozenset(c.owner for c in new)
        return dataclasses.replace(self, claims=[*self.claims, *new], pods_of=self.pods_of | owners,
                                   waiters=[w for w in self.waiters if w.owner not in owners])


NOT_CPU_ONLY = f"{LABEL_GPU}!=none"  # every pod but a CPU workspace's (a pod without the label is in)

# how long a view of the lab may be handed to later passes when nothing that frees a device has happened
REUSE_FOR = dt.timedelta(seconds=10)


@dataclass
class _Kept:
    view: LabView  # as read, then as handed again (reused=True)
    epoch: int
    at: dt.datetime
    policy: LabPolicy


def owner_key(ws: dict[str, Any]) -> str:
    return f"{ws['metadata']['namespace']}/{ws['metadata']['name']}"


class Admissions:
    def __init__(self, kube: Kube, policy: PolicyStore, watched_users: Mapping[str, dict[str, Any]] | None = None) -> None:
        """`watched_users`: every GPUUser as the operator's watch last showed her, read instead of a list of them
        (at a department's size megabytes of accounting buckets on each read of the lab); the list is made only
        while a waiter's user is not in it yet."""
        self.kube = kube
        self.policy = policy
        self.watched_users = watched_users
        # one decision (and the pod it admits) at a time, for the whole lab
        self.lock = threading.Lock()
        # one read of the lab at a time, made without `lock`: the passes a kept view serves go on meanwhile
        self.reading = threading.Lock()
        self._created_meanwhile: list[api_admission.Claim] | None = None  # pods created while a read is under way
        self.epoch = 0  # moved on by changed(): a kept view from an older epoch is read afresh
        self._kept: _Kept | None = None
        self.views_read = 0
        self.read_why: Counter[str] = Counter()  # why each read was made (`why_read`)
        self.views_reused = 0
        self.views_extended = 0

    def changed(self) -> None:
        """Something that can free a device or reorder the queue happened: the next pass reads the lab afresh."""
        self.epoch += 1

    def view(self, now: dt.datetime, *, me: dict[str, Any] | None = None, my_since: dt.datetime | None = None,
             my_user: dict[str, Any] | None = None, policy: LabPolicy | None = None, fresh: bool = False,
             held: contextlib.ExitStack | None = None) -> LabView:
        """The whole lab as admission sees it (see the module's words on a view kept). `my_user`: the GPUUser of
        `me`, as its pass read her; `fresh`: read now, whatever is kept (then kept in its place). Returns with the
        lock taken into `held`, the pass's, which keeps it until the pod it admits exists; without `held`, let go.
        A read of the lab is made without the lock, so that a kept view goes on serving passes for its seconds."""
        policy = policy or self.policy.current
        self.lock.acquire()
        locked = True
        try:
            view = None if fresh else self._kept_for(now, me, my_since, my_user, policy)
            if view is None:
                self.lock.release()
                locked = False
                with self.reading:
                    self.lock.acquire()
                    locked = True
                    # read by the pass before this one, while it waited for its turn
                    view = None if fresh else self._kept_for(now, me, my_since, my_user, policy)
                    if view is None:  # it lets the lock go while it reads, and holds it again when it ends
                        view = self._read_and_keep(now, me, my_since, policy, fresh)
        except BaseException:
            if locked:
                self.lock.release()
            raise
        if held is not None:
            held.callback(self.lock.release)
        else:
            self.lock.release()
        return view

    def _kept_for(self, now: dt.datetime, me: dict[str, Any] | None, my_since: dt.datetime | None,
                  my_user: dict[str, Any] | None, policy: LabPolicy) -> LabView | None:
        """The kept view, handed again or extended with `me`; None where the lab must be read. Under the lock."""
        if self._kept is not None:
            now = max(now, self._kept.at)  # a pass that began before the read was made takes the read's moment
        kept = self._reusable(now, me, my_since, policy)
        if kept is not None:
            self.views_reused += 1
            return kept
        extended = self._extension(now, me, my_since, my_user, policy)
        if extended is not None:
            self.views_extended += 1
        return extended

    def _read_and_keep(self, now: dt.datetime, me: dict[str, Any] | None, my_since: dt.datetime | None,
                       policy: LabPolicy, fresh: bool) -> LabView:
        """Reads the lab with the lock let go, and keeps what it read; entered and left with the lock held (and
        `reading`). A pod a kept view admitted meanwhile is counted though the lists may have missed it."""
        self.read_why[self.why_read(now, policy, fresh=fresh)] += 1
        epoch = self.epoch  # before the lists: a change while they run makes the next pass read again
        self._created_meanwhile = []
        self.lock.release()
        try:
            view = self.read(now, me=me, my_since=my_since, policy=policy)
        finally:
            self.lock.acquire()
            created, self._created_meanwhile = self._created_meanwhile or [], None
        view = view.with_created(created)
        self.views_read += 1
        self._kept = _Kept(view, epoch, now, policy)
        return view

    def created(self, pod: dict[str, Any]) -> None:
        """A pod a decision admitted was created (under the lock): a read under way counts it."""
        meanwhile = self._created_meanwhile  # (a pod without a device, made without the lock, counts nothing)
        if meanwhile is not None:
            meanwhile.extend(api_admission.pod_claims([pod]))

    def why_read(self, now: dt.datetime, policy: LabPolicy, *, fresh: bool) -> str:
        """Why a view is read rather than handed again or extended (the metric's `why`)."""
        if fresh:
            return "asked"  # the lab-wide sweep
        # else a newcomer that may preempt, asks for other devices, or whose user the read did not see
        return self._unusable(now, policy) or "asker"

    def _unusable(self, now: dt.datetime, policy: LabPolicy) -> str | None:
        """Why the kept view may not be handed to anyone now; None while it may."""
        kept = self._kept
        if kept is None:
            return "none kept"
        if kept.epoch != self.epoch:
            return "changed"
        if policy is not kept.policy:
            return "policy"
        if not kept.at - REUSE_FOR <= now < kept.at + REUSE_FOR:
            # (a pass that began a moment before the read, and waited for it, takes it: it is newer than its own)
            return "expired"
        return None

    def _reusable(self, now: dt.datetime, me: dict[str, Any] | None, my_since: dt.datetime | None,
                  policy: LabPolicy) -> LabView | None:
        kept = self._kept
        if kept is None or self._unusable(now, policy) is not None:
            return None
        if me is not None:
            if my_since is None:
                return None
            gpu = (me.get("spec") or {}).get("gpu") or {}
            profile = gpu.get("profile") or "none"
            if profile == "none":
                return None
            asks = (gpu_resource(profile), int(gpu.get("count") or 1))
            key = owner_key(me)
            if key in kept.view.carried:
                # admitted before an extension and counted since as a claim on its node: that decision stands
                if not any(c.owner == key and not c.is_hold and (c.resource, c.count) == asks
                           for c in kept.view.claims):
                    return None
            else:
                mine = next((w for w in kept.view.waiters if w.owner == key), None)
                if mine is None or mine.waiting_since != my_since or (mine.resource, mine.count) != asks:
                    return None
        if not kept.view.reused:
            # those it admitted were woken by the pass that read it: a pass handed it again wakes none of them
            again = dataclasses.replace(kept.view, reused=True,
                                        pods_of=kept.view.pods_of | frozenset(kept.view.decision.admitted))
            again.__dict__["decision"] = kept.view.decision  # the same decision, not computed again
            kept.view = again
        return kept.view

    def _extension(self, now: dt.datetime, me: dict[str, Any] | None, my_since: dt.datetime | None,
                   my_user: dict[str, Any] | None, policy: LabPolicy) -> LabView | None:
        """The kept view extended with `me`, a newcomer to the queue, kept in its place; None where it must be read."""
        kept = self._kept
        if kept is None or me is None or my_since is None or my_user is None \
                or self._unusable(now, policy) is not None:
            return None
        username = username_of(me["metadata"]["namespace"]) or ""
        if username not in kept.view.usages or any(w.owner == owner_key(me) for w in kept.view.waiters):
            return None  # a user the read did not see; or a waiter there already, asking for other devices now
        newcomer = self.waiter(me, my_user, my_since, kept.view.usages[username], policy)
        if newcomer is None or newcomer.may_preempt or owner_key(me) in kept.view.carried:
            return None  # whom a preemption would take from is for a view read now to say
        view = kept.view.extended(newcomer, api_admission.hold_claim(me, now))
        if view is not None:
            kept.view = view
        return view

    def tier_of(self, user: dict[str, Any] | None, policy: LabPolicy | None = None) -> tuple[int, bool]:
        """The tier's priority and whether it may preempt; an unknown tier waits behind every known one."""
        policy = policy or self.policy.current
        tier = policy.tiers.get(((user or {}).get("spec") or {}).get("tier") or policy.default_tier)
        return (tier.priority, tier.preempt) if tier is not None else (0, False)

    def waiter(self, ws: dict[str, Any], user: dict[str, Any] | None, since: dt.datetime,
               usage: float = 0.0, policy: LabPolicy | None = None) -> api_admission.Waiter | None:
        gpu = (ws.get("spec") or {}).get("gpu") or {}
        profile = gpu.get("profile") or "none"
        if profile == "none":
            return None
        priority, preempt = self.tier_of(user, policy)
        return api_admission.Waiter(owner_key(ws), gpu_resource(profile), int(gpu.get("count") or 1), priority,
                                    since, preempt, usage)

    def read(self, now: dt.datetime, *, me: dict[str, Any] | None = None, my_since: dt.datetime | None = None,
             policy: LabPolicy | None = None) -> LabView:
        """The whole lab as admission sees it, read now; `me`, a workspace asking now, waits since `my_since`; under
        `policy`, the pass's own snapshot, or the policy in force."""
        capacity, closed = api_admission.capacity_of(self.kube.list("Node"))
        # every pod, not only the lab's: a device taken by anyone else (an operator's validator, an admin's
        # test pod) is not free, and a hold it took is reported lost rather than promised on
        # (only a CPU workspace's pod, labelled so, is left out: it holds no device and its workspace waits for none)
        pods = self.kube.list("Pod", label_selector=NOT_CPU_ONLY)
        claims = api_admission.pod_claims(pods)
        pods_of = frozenset(api_admission.owner_of(p) for p in pods
                            if (p["metadata"].get("labels") or {}).get(LABEL_MANAGED) == MANAGED_BY
                            and (p["metadata"].get("labels") or {}).get(api_admission.LABEL_ROLE) == "workspace")
        workspaces = list_union(self.kube, "Workspace", api_admission.LIVE_WORKSPACES)
        users = dict(self.watched_users or {})
        asking = [ws for ws in workspaces if api_admission.waiting_since(ws) is not None] + ([me] if me else [])
        if any(name not in users for name in (username_of(ws["metadata"]["namespace"]) for ws in asking) if name):
            users = {u["metadata"]["name"]: u for u in self.kube.list("GPUUser")}
        policy = policy or self.policy.current
        usages = api_accounting.relative_usages(users.values(), now, policy.fair_share.half_life, policy.share)
        waiters = []
        places: dict[str, int | None] = {}
        queues: dict[str, dict[str, Any]] = {}
        mine = owner_key(me) if me is not None else None
        for ws in workspaces:
            key = owner_key(ws)
            hold = api_admission.hold_claim(ws, now)
            if hold is not None:
                claims.append(hold)
            if key == mine:
                continue
            username = username_of(ws["metadata"]["namespace"]) or ""
            user = users.get(username)
            since = api_admission.waiting_since(ws)
            state = (user or {}).get("spec", {}).get("state", "Active")
            if since is None or key in pods_of or state != "Active" \
                    or (ws.get("spec") or {}).get("state", "Running") != "Running" \
                    or ws["metadata"].get("deletionTimestamp"):
                continue
            waiter = self.waiter(ws, user, since, usages.get(username, 0.0), policy)
            if waiter is not None:
                waiters.append(waiter)
                places[key] = (((ws.get("status") or {}).get("queue")) or {}).get("position")
                queues[key] = ((ws.get("status") or {}).get("queue")) or {}
        if me is not None and my_since is not None:
            username = username_of(me["metadata"]["namespace"]) or ""
            waiter = self.waiter(me, users.get(username), my_since, usages.get(username, 0.0), policy)
            if waiter is not None:
                waiters.append(waiter)
        return LabView(capacity, closed, claims, waiters, pods_of, tuple(api_admission.releases_of(workspaces, now)),
                       places, queues, usages=usages)
