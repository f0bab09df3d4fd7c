"""What one pass over a Workspace decides, as a pure function of a frozen scope: the status to write and the
actions to take (Cluster API's scope → status and actions). No API call happens here; the thin step in
controller/workspaces.py reads the scope, calls `decide`, applies the actions and writes the status once.

Some facts cost API reads that most passes do not need (the scheduler's Preempted Event on a gone pod, the
namespace's pods and workspaces and the lab's trees for a start, admission's view of the whole lab). The scope
leaves those None; a decision that needs one raises `Unread` naming it, and the step reads it and decides again
with it filled in. The same scope always gives the same decision, so a table of scopes tests every rule."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from labkeeper.api import accounting as api_accounting
from labkeeper.api import admission as api_admission
from labkeeper.api import devices as api_devices
from labkeeper.api import policy as api_policy
from labkeeper.api import runs as api_runs
from labkeeper.api.admission import QUEUE_AHEAD_LISTED
from labkeeper.api.conditions import (
    KEEP_ALIVE_CAPPED,
    READY,
    RECONCILED,
    SCHEDULED,
    WITHIN_QUOTA,
    condition,
    find,
)
from labkeeper.api.names import LABEL_ROLE, LABEL_WORKSPACE, NAMESPACE_PREFIX, pod_name
from labkeeper.api.phases import ENDED_PHASES, UserState, WorkspaceEvent, WorkspacePhase, WorkspaceReason
from labkeeper.api.resources import WorkspaceSpec
from labkeeper.api.trees import TREE_KINDS, tree_conflicts
from labkeeper.api.units import format_time, parse_time
from labkeeper.controller.admission import LabView, owner_key
from labkeeper.controller.enforcement import enforcement_clock, status_message
from labkeeper.controller.liveness import Sight
from labkeeper.controller.policy import UserEntitlement
from labkeeper.kube.client import owner_reference, stored
from labkeeper.render import pod as render_pod
from labkeeper.render.access import gpu_resource, priority_class_for
from labkeeper.render.toolchains import toolchain_mounts

Body = dict[str, Any]
Phase, Reason = WorkspacePhase, WorkspaceReason

FAILED_WAITING_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                          "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
NO_HOLD: dict[str, Any] = dict.fromkeys(api_admission.HOLD_FIELDS)


# ---- the scope ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Neighbourhood:
    """What a start needs beyond the workspace: labkeeper's pods and the Workspaces in her namespace, and, once
    a pod is to be made, the lab's SharedCaches and ModelStores (kind → objects)."""

    pods: tuple[Body, ...]
    workspaces: tuple[Body, ...]
    trees: Mapping[str, list[Body]] | None = None  # read only for a pod about to be made (Unread "trees")


class CreateFailed(NamedTuple):
    """The API refused the pod a previous decision of this pass created: its HTTP status and message."""

    status: int
    message: str


NOTHING_SEEN = Sight(None, False, None)


@dataclass(frozen=True)
class WorkspaceScope:
    """Everything one pass decides from, read once: the Workspace (its spec parsed into the api model), its user
    and her entitlement under one policy snapshot, its pod and an older labkeeper's hold pod, the clock."""

    body: Body
    spec: WorkspaceSpec
    user: Body | None
    entitlement: UserEntitlement | None  # None while the user is missing or has no uid
    pod: Body | None
    hold: Body | None
    policy: api_policy.LabPolicy
    now: dt.datetime
    started_at: dt.datetime  # this operator's start: idle clocks never count from before it
    data_root: str = "/data"
    lab_users_gid: int | None = None
    lost_pod: Body | None = None  # a deleted pod's last body, from its watch event
    # what this process knows of the run on the pod's node (controller/liveness.py); by default: nothing
    sight: Sight = NOTHING_SEEN
    # read only when a decision asks for them (see Unread)
    preempted_event: bool | None = None  # the scheduler's Preempted Event names the gone pod
    neighbourhood: Neighbourhood | None = None
    lab: LabView | None = None  # admission's view, read under the admission lock
    create_failed: CreateFailed | None = None

    @property
    def status(self) -> Body:
        return dict(self.body.get("status") or {})

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def username(self) -> str | None:
        return self.namespace.removeprefix(NAMESPACE_PREFIX) if self.namespace.startswith(NAMESPACE_PREFIX) else None


WAITER_RECHECK = 300.0  # seconds between passes over a workspace waiting for a device
UNWATCHED_RECHECK = 10.0  # seconds between passes over a running workspace whose kubelet is not believed yet


class Unread(Exception):
    """A decision needs a fact the scope does not hold yet: `what` is "preemption", "neighbourhood", "trees" or "lab"
    (with `my_since`: admission's view with this workspace waiting since then; None: the view as it is)."""

    def __init__(self, what: str, *, my_since: dt.datetime | None = None, pod: Body | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.my_since = my_since
        self.pod = pod  # "preemption": the gone pod whose Events tell


# ---- the actions --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostEvent:
    reason: str
    message: str
    type_: str = "Normal"


@dataclass(frozen=True)
class CreatePod:
    body: Body  # its uid goes into status.podUID


@dataclass(frozen=True)
class DeletePod:
    name: str
    grace_seconds: int


@dataclass(frozen=True)
class RecordHold:
    """The hold record, written before the pod whose devices it keeps is deleted: a pass killed between the
    two finds both, never neither."""

    record: Body


@dataclass(frozen=True)
class StopSpec:
    """spec.state Stopped: the stop is desired state, so an operator restart cannot undo it."""


@dataclass(frozen=True)
class DeleteWorkspace:
    pass


Action = PostEvent | CreatePod | DeletePod | RecordHold | StopSpec | DeleteWorkspace


@dataclass(frozen=True)
class Decision:
    status: Body | None  # merged into the status in one write, only the fields that changed; None: no write
    actions: tuple[Action, ...] = ()  # in order, before the status is written
    after: tuple[Action, ...] = ()  # once the status is written
    requeue_after: float | None = None
    wake: tuple[tuple[str, str], ...] = ()  # (namespace, name) of Workspaces admission let start, or found lost
    moved: tuple[tuple[str, str], ...] = ()  # ... of waiters whose queue place it moved: a pass soon, not at once
    freed: bool = False  # a device came free: whoever waits gets a pass
    # the status write and what follows it hold only on the Workspace exactly as this pass read it: a write since
    # (the agent's report of new activity) refuses them and the pass decides again from it
    if_unchanged: bool = False


# ---- rules ----------------------------------------------------------------------------------------------------------
def gpu_equivalents(spec: WorkspaceSpec, weights: Mapping[str, float]) -> float:
    if spec.gpu.profile == "none":
        return 0.0
    return weights.get(spec.gpu.profile, 1.0) * spec.gpu.count


def within(requested: str | None, entitled: dt.timedelta | None) -> dt.timedelta | None:
    """The workspace's own limit, never beyond the user's entitlement."""
    mine = api_policy.parse_duration(requested) if requested else None
    if entitled is None:
        return mine
    return min(mine, entitled) if mine is not None else entitled


def user_held(user: Body) -> str | None:
    """Why the user reconciler holds this GPUUser (an unknown tier), from her Ready condition; None if it does not."""
    ready = find((user.get("status") or {}).get("conditions"), READY) or {}
    if ready.get("reason") != "UnknownTier":
        return None
    return f"GPUUser {user['metadata']['name']}: {ready.get('message', '')}"


def was_preempted(pod: Body) -> bool:
    return any(c.get("type") == "DisruptionTarget" and c.get("reason") == "PreemptionByScheduler"
               for c in (pod.get("status") or {}).get("conditions") or [])


def rejected_at_admission(pod_status: Body) -> bool:
    """The kubelet failed the pod at admission, before any container ran: its device manager had no healthy
    device yet (UnexpectedAdmissionError) or the node did not have the resource then (OutOf<resource>)."""
    reason = str(pod_status.get("reason") or "")
    return reason == "UnexpectedAdmissionError" or reason.startswith("OutOf")


def containers_started(pod: Body) -> dt.datetime | None:
    """When the pod's running containers last started (the kubelet restarts them after a reboot)."""
    starts = [parse_time(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
              for cs in (pod.get("status") or {}).get("containerStatuses") or []]
    return max((s for s in starts if s is not None), default=None)


def waiting_reason(pod_status: Body) -> tuple[str, str] | None:
    for cs in pod_status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason", "")), str(waiting.get("message", ""))
    return None


def pod_equivalents(pod: Body, weights: Mapping[str, float]) -> float:
    return sum(api_admission.equivalents(r, n, dict(weights)) for r, n in api_admission.pod_devices(pod))


def held_words(status: Mapping[str, Any]) -> str:
    return api_admission.device_words(status.get("holdResource") or "nvidia.com/gpu", int(status.get("holdCount") or 1))


def running_time(status: Mapping[str, Any], pod: Body | None, now: dt.datetime, sight: Sight) -> Body:
    """Cumulative runtime: closed segments in runtimeSeconds, the open one from runningSince.

    A run this process has watched alive while it believed the node's kubelet (`sight.watched`, controller/
    liveness.py) ends when its pod goes. Any other run ends, if its containers started again or its pod went,
    at the last moment it was known alive: `sight.alive_until` (the end of the stretch it was watched in, or what
    the operator before this one recorded in its Lease) or status.lastSeenRunning, whichever is later. A power
    cut that took the pod, or restarted its containers, while nobody watched is no runtime; and a status the
    kubelet may not have rewritten yet proves nothing: after a cut the API server still says "Running" for pods
    that are dead. No heartbeat is written for it: lastSeenRunning is set when a run starts and rides on the
    status writes a watched run makes anyway."""
    total = int(status.get("runtimeSeconds") or 0)
    since = parse_time(status.get("runningSince"))
    seen = parse_time(status.get("lastSeenRunning")) or since  # a run is at least seen when it starts
    if since is not None and sight.alive_until is not None and (seen is None or sight.alive_until > seen):
        seen = sight.alive_until.replace(microsecond=0)
    running = pod is not None and (pod.get("status") or {}).get("phase") == "Running" \
        and not pod["metadata"].get("deletionTimestamp")
    unseen = since is not None and not sight.watched
    if running and unseen and seen is not None and since is not None and pod is not None:
        restarted = containers_started(pod)
        if restarted is not None and restarted > seen:
            # its containers started again while nobody watched (a reboot): the old run ended when last seen,
            # and the kubelet saw the new one alive when it started it
            total += max(0, int((seen - since).total_seconds()))
            since = seen = restarted
    if running and since is None:
        since = seen = now
    if not running and since is not None:
        total += max(0, int(((seen if unseen and seen is not None else now) - since).total_seconds()))
        since = None
    return {"runtimeSeconds": total, "runningSince": format_time(since),
            "lastSeenRunning": format_time(seen) if running else None}


# ---- the decision ----------------------------------------------------------------------------------------------
def decide(scope: WorkspaceScope) -> Decision:
    """The one next step for this Workspace; raises Unread when it needs a fact the scope lacks."""
    return _Pass(scope).run()


@dataclass
class _Pass:
    """One decision in the making: the scope, the status it builds and the actions it collects."""

    scope: WorkspaceScope
    desired: Body = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    status: Body = field(default_factory=dict)  # the status as read, with a hold record this pass adopted
    within_quota: bool | None = None  # known once a start checked the cap, or a pod exists that passed it

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self.actions.append(PostEvent(reason, message, type_))

    def run(self) -> Decision:
        s = self.scope
        self.status = s.status
        meta = s.body["metadata"]
        policy = s.policy
        self.desired = {"observedGeneration": meta.get("generation"), "podName": pod_name(s.name),
                        "gpuEquivalents": round(gpu_equivalents(s.spec, policy.gpu_weights), 4),
                        # kept only by a pass that finds the workspace still waiting for a device
                        "waitingSince": None, "queue": None}
        self.desired.update(running_time(self.status, s.pod, s.now, s.sight))
        if meta.get("deletionTimestamp"):
            return Decision(None)
        batch = s.spec.mode == api_runs.BATCH
        if batch and self.status.get("phase") in ENDED_PHASES and self.status.get("finishedAt"):
            # a run that ended stays ended, whatever happens to its pod, its user or spec.state
            return self.ended()
        user = s.user
        if user is None or s.entitlement is None or not (user.get("status") or {}).get("uid"):
            return self.set(Phase.PENDING, Reason.USER_NOT_READY,
                            f"GPUUser {s.username!r} does not exist or has no uid yet", requeue=2.0)
        user_state = (user.get("spec") or {}).get("state", UserState.ACTIVE)
        want_running = s.spec.state == "Running" and user_state == UserState.ACTIVE
        if s.hold is not None:
            self.adopt_hold_pod(s.hold, keep=user_state == UserState.ACTIVE)

        if not want_running:
            # a suspended or offboarded user cannot come back to a held device: hers are released at once
            return self.stop(reason=Reason.USER_SUSPENDED if user_state != UserState.ACTIVE else Reason.STOPPED,
                             # a run never comes back to its device: it goes to the next in line at once
                             hold_device=user_state == UserState.ACTIVE and not batch)
        # idle and runtime clocks describe a running pod; a workspace waiting to run shows none (enforce sets them)
        self.desired.update({"idleSince": None, "idleDeadline": None, "runtimeDeadline": None})
        pod = s.pod
        gone_pod = pod is None or bool(pod["metadata"].get("deletionTimestamp"))
        held = user_held(user)
        if held and gone_pod:
            # her tier left the policy (or never was in it): no new pod on limits nobody chose; a running one goes on
            return self.set(Phase.PENDING, Reason.USER_NOT_READY, held)

        entitlement = s.entitlement
        problem = api_policy.not_entitled(  # the same words labctl uses to refuse before it applies anything
            s.body.get("spec") or {}, tier=entitlement.tier, cpu=entitlement.access.cpu,
            memory=entitlement.access.memory, allowed_profiles=entitlement.access.allowed_profiles,
            allowed_images=entitlement.allowed_images)
        if problem:
            return self.set(Phase.PENDING, Reason.NOT_ENTITLED, problem)

        if pod is None or gone_pod:
            return self.no_pod(batch)
        return self.observe_pod(pod)

    # ---- no pod, or one going ----------------------------------------------------------------------------------
    def no_pod(self, batch: bool) -> Decision:
        s = self.scope
        last_uid = self.status.get("podUID")
        gone = s.pod or s.lost_pod or ({"metadata": {"uid": last_uid, "namespace": s.namespace}} if last_uid else None)
        if gone is not None and self.status.get("reason") != Reason.PREEMPTED_BY_SCHEDULER and self.preempted(gone):
            self.event(WorkspaceEvent.PREEMPTED, "a higher-priority workspace took this workspace's GPU; "
                       "it waits for a free device", "Warning")
            self.desired["podUID"] = None
            return self.set(Phase.PREEMPTED, Reason.PREEMPTED_BY_SCHEDULER,
                            "a higher-priority workspace took the GPU; waiting to start again", requeue=0.5)
        # a preempted run's killed command is no end: it waits in the queue and starts again
        end = api_runs.run_end(gone) if batch and gone is not None and not was_preempted(gone) else None
        if end is not None:  # its pod ended while going, or went before a pass saw it: the end is the end
            return self.finish(end)
        if s.pod is not None:
            return self.set(Phase.STOPPING, Reason.POD_TERMINATING, "previous pod is terminating", requeue=1.0)
        assert s.entitlement is not None
        max_runtime = within(s.spec.max_runtime, s.entitlement.max_runtime)
        if max_runtime is not None and self.desired["runtimeSeconds"] >= max_runtime.total_seconds():
            # a restart must not reset the runtime clock
            return self.set(Phase.STOPPED, Reason.MAX_RUNTIME,
                            f"total runtime {self.desired['runtimeSeconds']}s has reached the limit of "
                            f"{int(max_runtime.total_seconds())}s; an admin can raise the user's maxRuntime")
        return self.start()

    def preempted(self, pod: Body) -> bool:
        if was_preempted(pod):
            return True
        # the scheduler's own Event on the victim, for a pod whose last status we did not see
        if self.scope.preempted_event is None:
            raise Unread("preemption", pod=pod)
        return self.scope.preempted_event

    # ---- a start: quota, admission, the pod ----------------------------------------------------------------------
    def start(self) -> Decision:
        s = self.scope
        assert s.entitlement is not None
        near = s.neighbourhood
        if near is None:
            raise Unread("neighbourhood")
        weights = s.policy.gpu_weights
        # an ended run's pod stays for its logs but holds no device and counts for nothing
        others = [p for p in near.pods if p["metadata"].get("labels", {}).get(LABEL_WORKSPACE) != s.name
                  and not p["metadata"].get("deletionTimestamp")
                  and (p.get("status") or {}).get("phase") not in ENDED_PHASES]
        running = [p for p in others if p["metadata"]["labels"].get(LABEL_ROLE) == "workspace"]
        cap = s.entitlement.access.max_gpu_equivalents
        in_use = sum(pod_equivalents(p, weights) for p in others)
        # a device she holds after a stop is still hers
        holding = {p["metadata"].get("labels", {}).get(LABEL_WORKSPACE) for p in others}
        for other in near.workspaces:
            hold = api_admission.hold_claim(other, s.now)
            if hold is not None and other["metadata"]["name"] not in holding | {s.name}:
                in_use += api_admission.equivalents(hold.resource, hold.count, weights)
        asked = gpu_equivalents(s.spec, weights)
        tier = s.entitlement.tier
        if asked > 0 and in_use + asked > cap + 1e-9:
            message = f"{in_use:.2f} GPU equivalents in use + {asked:.2f} requested > cap {cap:.2f} for tier {tier}"
            if self.status.get("reason") != Reason.QUOTA_EXCEEDED:
                self.event(WorkspaceEvent.QUOTA_EXCEEDED, message, "Warning")
            return self.set(Phase.PENDING, Reason.QUOTA_EXCEEDED, message, within_quota=False)
        if len(running) >= s.entitlement.access.max_workspaces:
            message = f"{len(running)} workspaces running, tier {tier} allows {s.entitlement.access.max_workspaces}"
            return self.set(Phase.PENDING, Reason.QUOTA_EXCEEDED, message, within_quota=False)

        self.within_quota = True
        profile, count = s.spec.gpu.profile, s.spec.gpu.count
        if profile == "none":
            return self.create(self.pod_inputs(near))
        me = owner_key(s.body)
        freed = False
        if self.status.get("holdNode") and (self.status.get("holdResource"), self.status.get("holdCount")) \
                != (gpu_resource(profile), count):
            # it asks for other devices now: the ones it held go back to the queue
            self.event(WorkspaceEvent.HOLD_RELEASED, f"the {held_words(self.status)} held on "
                       f"{self.status['holdNode']} was released: spec.gpu now asks for {count} x {profile}")
            self.desired.update(NO_HOLD)
            freed = True
        since = api_admission.waiting_since(s.body) or s.now
        view = s.lab
        if view is None:
            raise Unread("lab", my_since=since)
        admission = view.decide()
        # those ahead that may start now, and holders whose hold is gone, get a pass of their own, whoever's
        # pass found out; those whose place moved, a pass soon
        now_owners, moved_owners = to_wake(view, admission)
        wake = owners_to_keys(now_owners - {me})
        moved = owners_to_keys(moved_owners - now_owners - {me})
        lost = self.lost_hold(admission, view)
        node = admission.admitted.get(me)
        if node is not None:
            decision = self.create(dataclasses.replace(self.pod_inputs(near), node_name=node))
            return dataclasses.replace(decision, wake=wake, moved=moved, freed=freed)
        wait = admission.waiting[me]
        message = wait.message()
        if lost:
            message = f"{lost}; {message}"
        elif self.status.get("holdNode") and api_admission.hold_claim(s.body, s.now) is None:
            self.desired.update(NO_HOLD)  # its window ran out while it waited
        if api_admission.waiting_since(s.body) is None:
            self.event(WorkspaceEvent.WAITING, f"waiting for a device: {message}")
        self.desired["waitingSince"] = api_admission.format_waiting_since(since)
        self.desired["queue"] = queue_place(wait, view, message)
        # a device that comes free is found by the operator's admission for the whole lab (every SWEEP_EVERY at
        # the latest), which wakes whom it lets start or moves; this pass again refreshes what only its own status
        # shows (an estimate whose basis aged)
        decision = self.set(Phase.PENDING, Reason.WAITING_FOR_DEVICE, message, requeue=WAITER_RECHECK)
        return dataclasses.replace(decision, wake=wake, moved=moved, freed=freed)

    def create(self, inputs: render_pod.PodInputs) -> Decision:
        s = self.scope
        failed = s.create_failed
        if failed is not None:
            if failed.status == 409:  # someone (an earlier pass) created it already
                return Decision(None, requeue_after=0.5)
            reason = Reason.QUOTA_EXCEEDED if failed.status == 403 and "quota" in failed.message.lower() \
                else Reason.POD_REJECTED
            # what came before the create was done already; only the status is left to write
            return self.set(Phase.PENDING, reason, failed.message, requeue=5.0)
        body = render_pod.workspace_pod(inputs)
        self.actions.append(CreatePod(body))
        if s.hold is not None:  # a hold pod of an older labkeeper: the record replaced it
            self.actions.append(DeletePod(s.hold["metadata"]["name"], 0))
        profile, count = s.spec.gpu.profile, s.spec.gpu.count
        self.event(WorkspaceEvent.STARTING, f"pod {body['metadata']['name']} created"
                   + (f" with {count} x {profile}" if profile != "none" else "")
                   + (f" on {inputs.node_name}" if inputs.node_name else ""))
        # the pod now holds what the hold kept: the record goes (admission counts each owner once meanwhile)
        self.desired.update(NO_HOLD)
        self.desired["waitingSince"] = None
        self.desired["stopReason"] = None
        return self.set(Phase.STARTING, Reason.POD_CREATED, "waiting for the scheduler")

    def lost_hold(self, admission: api_admission.Admission, view: LabView) -> str | None:
        """A hold that no longer fits its node (a pod the lab did not admit took the device, the node shrank
        or went away) is dropped, with a Warning: the status never promises a device that is gone."""
        mine = [c for c in admission.lost_holds if c.owner == owner_key(self.scope.body)]
        if not mine:
            return None
        hold = mine[0]
        offered = view.capacity.get((hold.node, hold.resource), 0)
        used = sum(c.count for c in view.claims if not c.is_hold and (c.node, c.resource) == (hold.node, hold.resource))
        message = (f"the {api_admission.device_words(hold.resource, hold.count)} held on {hold.node} until "
                   f"{format_time(hold.held_until)} was lost: {hold.node} offers {offered} and pods now use {used}")
        self.event(WorkspaceEvent.HOLD_LOST, message + "; starting again waits for a free device", "Warning")
        self.desired.update(NO_HOLD)
        return message

    def pod_inputs(self, near: Neighbourhood) -> render_pod.PodInputs:
        s = self.scope
        assert s.user is not None and s.entitlement is not None
        spec, policy = s.spec, s.policy
        username = str(s.user["metadata"]["name"])
        ustatus = s.user.get("status") or {}
        if near.trees is None:
            raise Unread("trees")  # a waiter's pass makes no pod: the lab's trees are read for the one that does
        # two trees on one path would give every pod a duplicate mountPath, which the API refuses
        trees = {kind: list(near.trees.get(kind) or []) for kind in TREE_KINDS}
        left_out = tree_conflicts(trees)
        caches = self.mounts("SharedCache", trees, left_out, spec.caches, username, writable_default=True)
        stores = self.mounts("ModelStore", trees, left_out, spec.model_stores, username, writable_default=False)
        wanted = {"SharedCache": spec.caches, "ModelStore": spec.model_stores}
        skipped = [why for (kind, name), why in sorted(left_out.items())
                   if wanted[kind] is None or name in (wanted[kind] or ())]
        if skipped:
            self.event(WorkspaceEvent.TREE_LEFT_OUT, "not mounted: " + "; ".join(skipped), "Warning")
        toolchains, unknown = toolchain_mounts(policy.toolchains, s.data_root, spec.toolchains)
        if unknown:
            self.event(WorkspaceEvent.UNKNOWN_TOOLCHAIN, f"spec.toolchains names {', '.join(unknown)}, which the lab "
                       f"policy does not provide; known: {', '.join(t.name for t in policy.toolchains) or 'none'}",
                       "Warning")
        lab_gid = s.lab_users_gid if s.lab_users_gid is not None else policy.lab_users_gid
        return render_pod.PodInputs(
            workspace=s.name, namespace=s.namespace, owner=owner_reference(s.body), username=username,
            uid=int(ustatus["uid"]), gid=int(ustatus.get("gid") or ustatus["uid"]), supplemental_gids=[lab_gid],
            home_host_path=f"{s.data_root}/users/{username}", image=spec.image, command=spec.command,
            args=spec.args, cpu=spec.cpu, memory=spec.memory, gpu_profile=spec.gpu.profile,
            gpu_count=spec.gpu.count, batch=spec.mode == api_runs.BATCH,
            priority_class=priority_class_for(s.entitlement.tier), runtime_class=policy.runtime_class_name or None,
            grace_seconds=int(policy.termination_grace.total_seconds()), caches=caches, model_stores=stores,
            toolchains=toolchains,
        )

    def mounts(self, kind: str, trees: Mapping[str, list[Body]], left_out: Mapping[tuple[str, str], str],
               wanted: list[str] | None, username: str, *, writable_default: bool) -> list[render_pod.Mount]:
        out = []
        for obj in sorted(trees[kind], key=lambda o: str(o["metadata"]["name"])):
            name = obj["metadata"]["name"]
            if (wanted is not None and name not in wanted) or (kind, name) in left_out:
                continue
            spec = obj.get("spec") or {}
            host_path = f"{self.scope.data_root}/{spec['path'].strip('/')}"
            env = [(e["name"], e.get("value", "").replace("$(PATH)", host_path)) for e in spec.get("env") or []]
            writers = spec.get("writers") or {}
            writable = writable_default if kind == "SharedCache" else username in (writers.get("users") or [])
            out.append(render_pod.Mount(name, host_path, tuple(env), writable))
        return out

    # ---- a pod that exists ------------------------------------------------------------------------------------
    def observe_pod(self, pod: Body) -> Decision:
        self.within_quota = True  # its pod was admitted within the cap
        self.desired.update(NO_HOLD)  # the pod has the devices now (a pass killed after creating it left the record)
        pod_status = pod.get("status") or {}
        node = pod["spec"].get("nodeName")
        self.desired["node"] = node
        self.desired["podUID"] = pod["metadata"]["uid"]
        phase = pod_status.get("phase")
        waiting = waiting_reason(pod_status)
        if waiting and waiting[0] in FAILED_WAITING_REASONS:
            return self.set(Phase.FAILED, waiting[0], waiting[1] or waiting[0])
        if phase == "Failed" and rejected_at_admission(pod_status):
            # the kubelet refused it before anything ran: a node that booted and admitted its pods again before
            # the device plugin registered ("Allocate failed due to no healthy devices present"). Nothing of it
            # ran, so it is no end and no failure of hers: a new pod takes its place
            self.event(Reason.POD_REJECTED, f"the node rejected pod {pod['metadata']['name']} "
                       f"({pod_status.get('reason')}: {pod_status.get('message', '')}); starting a new one", "Warning")
            self.actions.append(DeletePod(pod["metadata"]["name"], 0))
            return self.set(Phase.PENDING, Reason.POD_REJECTED,
                            f"the node rejected the pod ({pod_status.get('reason')}); starting a new one", requeue=1.0)
        end = api_runs.run_end(pod) if self.scope.spec.mode == api_runs.BATCH else None
        if end is not None:
            return self.finish(end)
        if phase in ("Failed", "Succeeded"):
            return self.set(Phase.FAILED, pod_status.get("reason") or Reason.CONTAINER_EXITED,
                            pod_status.get("message") or f"pod {phase.lower()}")
        if phase == "Running":
            self.desired["devices"] = api_devices.device_list(pod)
            return self.enforce(node)
        if not node:
            unschedulable = next((c for c in pod_status.get("conditions") or []
                                  if c.get("type") == "PodScheduled" and c.get("status") == "False"), None)
            message = (unschedulable or {}).get("message") or "waiting for a free device"
            return self.set(Phase.PENDING, Reason.UNSCHEDULABLE if unschedulable else Reason.SCHEDULING, message)
        return self.set(Phase.STARTING, Reason.CONTAINER_CREATING, f"scheduled on {node}", scheduled=True)

    def enforce(self, node: str | None) -> Decision:
        """Idle and runtime limits: warnings at the policy's fractions, a stop at the deadline."""
        s = self.scope
        assert s.entitlement is not None
        policy, spec, status, now = s.policy, s.spec, self.status, s.now
        idle_timeout = within(spec.idle_timeout, s.entitlement.idle_timeout)
        max_runtime = within(spec.max_runtime, s.entitlement.max_runtime)
        clock = enforcement_clock(status, self.desired, now, s.started_at, idle_timeout, max_runtime,
                                  keep_alive_until=spec.keep_alive_until,
                                  keep_alive=api_policy.parse_duration(spec.keep_alive) if spec.keep_alive else None,
                                  keep_alive_cap=policy.keep_alive_max)
        self.desired.update(clock.status())
        warnings = list(status.get("warnings") or [])
        for warning in clock.due_warnings(policy.warnings.idle, policy.warnings.runtime):
            if warning.key not in {w.get("key") for w in warnings}:
                warnings.append(warning.as_status(now))
                self.event(warning.reason, warning.message, "Warning")
        # warnings belong to the current idle stretch; activity clears the idle ones
        warnings = [w for w in warnings
                    if not (w["key"].startswith("idle-") and w.get("since") != format_time(clock.idle_since))]
        self.desired["warnings"] = warnings
        if clock.keep_alive_refused:
            self.desired["message"] = clock.keep_alive_refused
        stop = clock.stop_reason()
        if stop:
            message = clock.stop_message(stop)
            culled = PostEvent(WorkspaceEvent.CULLED if stop == Reason.IDLE else WorkspaceEvent.MAX_RUNTIME, message,
                               "Warning")
            # the reason is written first; the stop itself is desired state, so a restart cannot undo it. Both only
            # on the status this verdict was read from: activity the agent reported since then cancels the stop
            return Decision({"stopReason": stop, "message": message}, tuple(self.actions), (StopSpec(), culled),
                            requeue_after=0.2, if_unchanged=True)
        # it runs on: a stop whose reason was written but whose spec write was refused (if_unchanged) is no stop
        self.desired["stopReason"] = None
        idle = any(w["key"].startswith("idle-") for w in warnings)
        capped = condition(KEEP_ALIVE_CAPPED, bool(clock.keep_alive_refused),
                           "Capped" if clock.keep_alive_refused else "WithinCap",
                           clock.keep_alive_refused or "no keep-alive asks for more than the policy's keepAliveMax",
                           status.get("conditions") or [], now, observed_generation=self.generation)
        requeue = clock.next_check(now, policy.warnings.idle, policy.warnings.runtime)
        # the meter sees an idle stretch begin once it is a report and a check old: look then, not at the next warning
        seen = api_accounting.idle_from({**status, **self.desired})
        turns_idle = (seen + policy.report_interval + policy.check_interval - now).total_seconds() if seen else 0
        if turns_idle > 0:
            requeue = min(requeue, turns_idle + 0.2)
        if s.sight.trusted_from is None:
            # its node's kubelet is not believed yet (settling after a start, or away): look again, as the first
            # pass after it is believed starts watching the run
            requeue = min(requeue, UNWATCHED_RECHECK)
        return self.set(Phase.IDLE_WARNING if idle else Phase.RUNNING,
                        Reason.IDLE_WARNING if idle else Reason.POD_RUNNING, status_message(node, clock),
                        ready=True, extra_conditions=[capped], requeue=requeue)

    # ---- stops, holds, ends ------------------------------------------------------------------------------------
    def stop(self, *, reason: str, hold_device: bool = True) -> Decision:
        s = self.scope
        status, policy, now, pod = self.status, s.policy, s.now, s.pod
        stop_reason = status.get("stopReason") or reason
        self.desired["stopReason"] = stop_reason
        if pod is not None:
            node = pod["spec"].get("nodeName")
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            devices = api_admission.pod_devices(pod)
            if devices and node and not status.get("holdNode") and not terminating and hold_device \
                    and policy.gpu_hold_after_stop.total_seconds() > 0:
                # The hold is a record in this status, counted by admission, not a placeholder pod: a pod
                # would wait Pending for the scheduler while this one terminates, and the scheduler may give
                # the device to any pod pending beside it. Admission creates every GPU pod of the lab and
                # counts a recorded hold as taken for all but its holder, so nothing can slip in.
                resource, count = devices[0]
                record = {"holdNode": node, "holdResource": resource, "holdCount": count,
                          "holdUntil": format_time(now + policy.gpu_hold_after_stop)}
                self.actions.append(RecordHold(record))
                self.status = {**status, **record}
                self.desired.update(record)
            if not terminating:
                self.actions.append(DeletePod(pod["metadata"]["name"], int(policy.termination_grace.total_seconds())))
                self.event(WorkspaceEvent.STOPPING, f"stopping: {stop_reason}")
            return self.set(Phase.STOPPING, stop_reason, "pod is terminating", requeue=1.0)

        requeue: float | None = None
        freed = False
        reason, note = stop_reason, ""
        hold_until = parse_time(status.get("holdUntil"))
        still_held = False
        if status.get("holdNode"):
            if hold_until is None or now >= hold_until or not hold_device:
                self.desired.update(NO_HOLD)
                self.event(WorkspaceEvent.HOLD_RELEASED, f"the {held_words(status)} held on {status['holdNode']} "
                           "after stop was released")
                freed = True
            else:
                if s.lab is None:
                    raise Unread("lab")
                lost = self.lost_hold(s.lab.decide(), s.lab)
                if lost:
                    reason, note = Reason.HOLD_LOST, f"; {lost}"
                else:
                    still_held = True
                    # a hold is checked again now and then: a device it keeps can be taken by a pod the lab
                    # did not admit, or vanish with the node
                    requeue = min((hold_until - now).total_seconds(), 10.0)
        elif status.get("reason") == Reason.HOLD_LOST:
            reason, note = Reason.HOLD_LOST, (status.get("message") or "").removeprefix("stopped")
        retention = policy.stopped_retention
        stopped_at = parse_time(status.get("stoppedAt")) or now
        self.desired["stoppedAt"] = format_time(stopped_at)
        if retention and retention.total_seconds() > 0 and s.spec.state == "Stopped":
            expires = stopped_at + retention
            if now >= expires and not still_held:
                return Decision(None, (*self.actions, DeleteWorkspace()))
            wait = (expires - now).total_seconds()
            requeue = min(requeue, wait) if requeue is not None else wait
        if still_held:
            note = f"; {held_words(status)} held on {status['holdNode']} until {format_time(hold_until)}"
        decision = self.set(Phase.STOPPED, reason, "stopped" + note, requeue=requeue)
        return dataclasses.replace(decision, freed=freed)

    def finish(self, end: api_runs.RunEnd) -> Decision:
        """A run's command ended: its phase, reason and exit code go into status once, and its device, which its
        ended pod no longer holds, goes to whoever waits (no hold: a run does not come back)."""
        self.desired.update(NO_HOLD)
        self.desired.update({"exitCode": end.exit_code, "finishedAt": format_time(end.finished_at or self.scope.now),
                             "stopReason": end.reason})
        return dataclasses.replace(self.ended(phase=end.phase, reason=end.reason, message=end.message), freed=True)

    def ended(self, *, phase: str | None = None, reason: str | None = None, message: str | None = None) -> Decision:
        """An ended run keeps its pod, and so its logs, for the policy's stoppedRetention; then it goes."""
        s = self.scope
        status = self.status
        self.desired.update({"idleSince": None, "idleDeadline": None, "runtimeDeadline": None})
        for key in ("exitCode", "finishedAt", "stopReason", "node", "podUID", "devices"):
            self.desired.setdefault(key, status.get(key))
        retention = s.policy.stopped_retention
        requeue = None
        if retention and retention.total_seconds() > 0:
            expires = (parse_time(self.desired.get("finishedAt")) or s.now) + retention
            if s.now >= expires:
                return Decision(None, (*self.actions, DeleteWorkspace()))
            requeue = (expires - s.now).total_seconds()
        return self.set(phase or status["phase"], reason or status.get("reason") or "",
                        message or status.get("message") or "", requeue=requeue,
                        scheduled=bool(self.desired.get("node")))

    def adopt_hold_pod(self, hold: Body, *, keep: bool) -> None:
        """A hold pod of an older labkeeper becomes a record for what is left of its window, then goes: as a
        pod it would keep the device from its own holder too."""
        s = self.scope
        until = (parse_time(hold["metadata"].get("creationTimestamp")) or s.now) + s.policy.gpu_hold_after_stop
        node, devices = api_admission.pinned_node(hold), api_admission.pod_devices(hold)
        if keep and not self.status.get("holdNode") and node and devices and until > s.now:
            record = {"holdNode": node, "holdResource": devices[0][0], "holdCount": devices[0][1],
                      "holdUntil": format_time(until)}
            self.actions.append(RecordHold(record))
            self.status = {**self.status, **record}
        self.actions.append(DeletePod(hold["metadata"]["name"], 0))

    # ---- the status ---------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int | None:
        generation = self.scope.body["metadata"].get("generation")
        return int(generation) if generation is not None else None

    def set(self, phase: str, reason: str, message: str, *, requeue: float | None = None, ready: bool = False,
            scheduled: bool | None = None, within_quota: bool | None = None,
            extra_conditions: list[Body] | None = None) -> Decision:
        """The whole status this pass found, with one setter per condition. WithinQuota is Unknown where this
        pass did not check the quota (only a start does)."""
        s = self.scope
        status, now, desired = self.status, s.now, self.desired
        previous = status.get("conditions") or []
        scheduled = ready or bool(desired.get("node")) if scheduled is None else scheduled
        if within_quota is None:
            within_quota = self.within_quota
        meter = self.meter(phase, reason)
        if meter is not None:
            desired["meter"] = meter
        generation = self.generation
        conditions = [
            condition(SCHEDULED, scheduled, "Scheduled" if scheduled else reason,
                      f"on {desired.get('node')}" if scheduled else message, previous, now,
                      observed_generation=generation),
            condition(READY, ready, "PodRunning" if ready else reason, message, previous, now,
                      observed_generation=generation),
            condition(WITHIN_QUOTA, within_quota, "WithinQuota" if within_quota else (
                "QuotaExceeded" if within_quota is False else "NotChecked"),
                message if within_quota is False else "within the user's GPU-equivalent cap" if within_quota
                else "the quota is checked when the workspace starts", previous, now,
                observed_generation=generation),
            *(extra_conditions or []),
        ]
        if find(previous, RECONCILED) is not None:  # a failed pass said so; this one did not fail
            conditions.append(condition(RECONCILED, True, "Reconciled", "the last pass succeeded", previous, now,
                                        observed_generation=generation))
        desired.update({"phase": phase, "reason": reason, "message": message, "conditions": conditions})
        if phase != status.get("phase") and phase in (Phase.RUNNING, Phase.STOPPED, Phase.FAILED, Phase.SUCCEEDED):
            self.event(phase, message, "Warning" if phase == Phase.FAILED else "Normal")
        if desired.get("lastSeenRunning") and self.scope.sight.watched \
                and any(status.get(k) != v for k, v in desired.items()):
            desired["lastSeenRunning"] = format_time(now)  # status is written anyway: the heartbeat rides on it
        return Decision(desired, tuple(self.actions), requeue_after=requeue)

    def meter(self, phase: str, reason: str) -> list[Body] | None:
        """The usage meter with what this pass finds (api/accounting.py); it rides on the status write the change
        causes anyway. Workspaces that never asked for a device carry none."""
        status, desired, policy = self.status, self.desired, self.scope.policy
        if not desired.get("gpuEquivalents") and not status.get("meter"):
            return None
        marks = api_accounting.marks_of({"status": status})
        mark = api_accounting.current_mark({**status, **desired}, phase, reason, self.scope.now,
                                           idle_grace=policy.report_interval + policy.check_interval,
                                           hold_after_stop=policy.gpu_hold_after_stop,
                                           previous=marks[-1] if marks else None)
        return api_accounting.next_meter(status.get("meter") or [], mark, self.scope.now)


def to_wake(view: LabView, decision: api_admission.Admission, *,
            shown: bool = False) -> tuple[set[str], set[str]]:
    """Whom an admission decision gives a pass, whoever's pass (or the lab's own decision) made it: at once, the
    waiters it lets start and the holders whose hold it finds lost; soon, the waiters whose place moved. `shown`:
    the view was read just now, so it holds the statuses as shown: soon too, every waiter whose queue its pass would
    write otherwise (who is ahead, why, the estimate), which a device freed, held or taken changes with no place
    moving. That is for the lab's own decision, not each pass's, as a device taken would change every waiter's."""
    now = {*(o for o in decision.admitted if o not in view.pods_of), *(c.owner for c in decision.lost_holds)}
    soon = set(view.moved(decision))
    if shown and not view.reused and view.before is None:
        soon.update(owner for owner, wait in decision.waiting.items()
                    if stored(view.queues.get(owner)) != stored(queue_place(wait, view, wait.message())))
    return now, soon - now


def owners_to_keys(owners: set[str]) -> tuple[tuple[str, str], ...]:
    """"namespace/name" owners as sorted (namespace, name) keys."""
    return tuple(sorted((o.split("/", 1)[0], o.split("/", 1)[1]) for o in owners))


def queue_place(wait: api_admission.Wait, view: LabView, message: str) -> Body:
    """Where it stands in the queue, who is ahead and why, and when it may start if the lab knows."""
    mine = view.waiter_of.get(wait.owner)
    release = api_admission.start_from(wait, view.releases_of.get(wait.resource, ()))
    return {"position": wait.ahead + 1,
            "ahead": [o.removeprefix(NAMESPACE_PREFIX) for o in wait.ahead_owners[:QUEUE_AHEAD_LISTED]],
            "reason": message,
            "relativeUsage": round(mine.usage, 2) if mine is not None else None,
            "estimatedStart": format_time(release.at) if release is not None else None,
            "estimateBasis": release.why if release is not None else None}
