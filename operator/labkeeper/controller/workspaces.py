"""Workspace → pod, with entitlement, weighted GPU quota, holds after stop and a lifecycle.

Level-based, in three steps per pass (Cluster API's shape): read one frozen scope (the Workspace parsed into
the api model, its user and her entitlement under one policy snapshot, its pod), ask the pure decision in
controller/workspace_decisions.py for the status and the actions, apply the actions and write the status once,
only the fields that changed. A per-user lock in the caller makes the weighted quota check and the pod creation
one step, so concurrent applies never overshoot the cap. A workspace that asks for a GPU gets no pod until
admission (controller/admission.py) gives it a device: until then it waits in the lab's queue with no pod for
the scheduler to place; the admission lock is held from admission's view to the pod it allows."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api.names import MANAGED_SELECTOR, hold_name, pod_name, username_of
from labkeeper.api.phases import ENDED_PHASES, RUNNING_PHASES, WorkspacePhase
from labkeeper.api.resources import WorkspaceSpec
from labkeeper.api.trees import TREE_KINDS
from labkeeper.controller import workspace_decisions as decisions
from labkeeper.controller.admission import Admissions
from labkeeper.controller.failures import record_failure
from labkeeper.controller.liveness import KubeletLiveness, Sight
from labkeeper.controller.policy import PolicyStore
from labkeeper.kube.client import Kube, api_error_message, is_conflict

Body = dict[str, Any]


@dataclass
class Outcome:
    requeue_after: float | None = None
    wake: tuple[tuple[str, str], ...] = ()  # (namespace, name) of Workspaces admission let start
    freed: bool = False  # a device came free: whoever waits gets a pass
    needs_user_lock: bool = False  # nothing was done: the pass would create a pod, so it runs again under the lock
    moved: tuple[tuple[str, str], ...] = ()  # (namespace, name) of waiters whose queue place moved: a pass soon


class WorkspaceReconciler:
    def __init__(self, kube: Kube, policy: PolicyStore, clock: Callable[[], dt.datetime], liveness: KubeletLiveness,
                 *, data_root: str = "/data", lab_users_gid: int | None = None) -> None:
        self.kube = kube
        self.policy = policy
        self.clock = clock
        self.liveness = liveness
        # (namespace, name) → (runningSince, the stretch it was seen alive in) of each run this process watched
        self._watched: dict[tuple[str, str], tuple[str, dt.datetime]] = {}
        self.data_root = data_root.rstrip("/")
        self.lab_users_gid = lab_users_gid
        # idle clocks never start before this process did: no mass culling after a restart. Whole seconds, as every
        # time in a status: a deadline counted from it is then the one status.idleDeadline states, not up to 1 s later
        self.started_at = clock().replace(microsecond=0)
        # each GPUUser as the user watch last delivered it, put here before the passes that event queues: what a
        # pass reads of her is then never older than the event that made her workspaces' passes run, as a GET
        # racing that event could not promise more (a user the watch has not shown yet is read)
        self.watched_users: dict[str, Body] = {}
        self.admissions = Admissions(kube, policy, self.watched_users)
        # (namespace, workspace) of each hold pod an older labkeeper left, as the pod watch reports them: nothing
        # makes one now, so a pass reads one only where the watch has shown it (not a read for each pass)
        self.hold_pods: set[tuple[str, str]] = set()

    def user_seen(self, name: str, user: Body | None) -> None:
        """The user watch delivered `user` (None: she was deleted)."""
        if user is None:
            self.watched_users.pop(name, None)
        else:
            self.watched_users[name] = user

    def hold_pod_seen(self, namespace: str, workspace: str, *, present: bool) -> None:
        """The pod watch saw a hold pod of `workspace` come or go (before the pass that event queues)."""
        (self.hold_pods.add if present else self.hold_pods.discard)((namespace, workspace))

    # ---- one pass ---------------------------------------------------------------------------------------------
    def reconcile(self, ws: Body, *, lost_pod: Body | None = None, user_locked: bool = True) -> Outcome:
        """One pass. The weighted-quota check and the pod creation must be one step for the user, so a pass that
        does not hold her lock (`user_locked`, the caller's) applies nothing when it would create a pod and says
        so; every other pass (a stop, a status, a hold) needs no more than the Workspace's own lock, so a burst of
        one user's deadlines is not served one at a time."""
        if not user_locked and may_start(ws):
            return Outcome(needs_user_lock=True)  # asked before anything is read: most such passes create a pod
        scope = self.scope(ws, lost_pod)
        with contextlib.ExitStack() as admission_lock:
            while True:
                try:
                    decision = decisions.decide(scope)
                    break
                except decisions.Unread as need:
                    if not user_locked and need.what == "lab" and need.my_since is not None:
                        return Outcome(needs_user_lock=True)  # admission for a start: not twice over
                    scope = self.read(scope, need, admission_lock)
            if not user_locked and any(isinstance(a, decisions.CreatePod) for a in decision.actions):
                return Outcome(needs_user_lock=True)
            return self.apply(scope, decision, admission_lock)

    def scope(self, ws: Body, lost_pod: Body | None = None) -> decisions.WorkspaceScope:
        """Everything a pass decides from, read once; the policy is one snapshot for the whole pass."""
        meta = ws["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        policy = self.policy.current
        username = username_of(namespace)
        user = None
        if username:
            user = self.watched_users[username] if username in self.watched_users \
                else self.kube.get("GPUUser", username)
        pod = self.kube.get("Pod", pod_name(name), namespace)
        hold = self.kube.get("Pod", hold_name(name), namespace) if (namespace, name) in self.hold_pods else None
        entitlement = None
        if username and user is not None and (user.get("status") or {}).get("uid"):
            entitlement = self.policy.entitlement(username, user.get("spec") or {}, policy)
        return decisions.WorkspaceScope(
            body=ws, spec=WorkspaceSpec.model_validate(ws.get("spec") or {}), user=user, entitlement=entitlement,
            pod=pod, hold=hold, policy=policy, now=self.clock(), started_at=self.started_at,
            data_root=self.data_root, lab_users_gid=self.lab_users_gid, lost_pod=lost_pod,
            sight=self.sight(ws, pod))

    def sight(self, ws: Body, pod: Body | None) -> Sight:
        """What this process knows of the Workspace's run (controller/liveness.py): watched, if it saw this run
        alive in the stretch its node's kubelet is still believed in."""
        meta, status = ws["metadata"], ws.get("status") or {}
        node = ((pod or {}).get("spec") or {}).get("nodeName") or status.get("node")
        watched = self._watched.get((meta["namespace"], meta["name"]))
        since = status.get("runningSince")
        return self.liveness.sight(node, watched[1] if watched is not None and since and watched[0] == since
                                   else None)

    def sweep(self) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """Admission decided for the whole lab with no pass asking: the waiters it lets start and the holders whose
        hold it finds lost, for a pass at once, and the waiters whose queue status it changes, for a pass soon. What
        a device that came free, or a waiter that left the queue, asks of the lab: one decision, not a pass for
        every waiter."""
        with contextlib.ExitStack() as held:
            # read now: a kept view may be up to REUSE_FOR old and hold no statuses as they are shown
            view = self.admissions.view(self.clock(), fresh=True, held=held)
            decision = view.decide()
        now, soon = decisions.to_wake(view, decision, shown=True)
        return decisions.owners_to_keys(now), decisions.owners_to_keys(soon)

    def forget(self, namespace: str, name: str) -> None:
        self._watched.pop((namespace, name), None)

    def read(self, scope: decisions.WorkspaceScope, need: decisions.Unread,
             admission_lock: contextlib.ExitStack) -> decisions.WorkspaceScope:
        """The fact a decision asked for, added to the scope."""
        if need.what == "preemption" and need.pod is not None:
            meta = need.pod["metadata"]
            events = self.kube.list("Event", meta["namespace"],
                                    field_selector=f"involvedObject.uid={meta['uid']},reason=Preempted")
            return dataclasses.replace(scope, preempted_event=bool(events))
        if need.what == "neighbourhood":
            pods = self.kube.list("Pod", scope.namespace, label_selector=MANAGED_SELECTOR)
            workspaces = self.kube.list("Workspace", scope.namespace)
            near = decisions.Neighbourhood(tuple(pods), tuple(workspaces))
            return dataclasses.replace(scope, neighbourhood=near)
        if need.what == "trees" and scope.neighbourhood is not None:
            trees = {kind: self.kube.list(kind) for kind in TREE_KINDS}
            return dataclasses.replace(scope, neighbourhood=dataclasses.replace(scope.neighbourhood, trees=trees))
        if need.what == "lab":
            # one decision (and the pod it admits) at a time, for the whole lab: held until the pod exists
            view = self.admissions.view(scope.now, me=scope.body if need.my_since else None,
                                        my_since=need.my_since, my_user=scope.user, policy=scope.policy,
                                        held=admission_lock)
            return dataclasses.replace(scope, lab=view)
        raise RuntimeError(f"a decision asked for {need.what!r}, which no read provides")

    def apply(self, scope: decisions.WorkspaceScope, decision: decisions.Decision,
              admission_lock: contextlib.ExitStack) -> Outcome:
        """The actions in order, then the status in one write (the fields that changed), then what follows it."""
        ws = scope.body
        meta = ws["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        current = scope.status
        status = decision.status
        created = False
        for action in decision.actions:
            if isinstance(action, decisions.PostEvent):
                self.kube.event(ws, action.reason, action.message, type_=action.type_)
            elif isinstance(action, decisions.RecordHold):
                self.kube.patch_status("Workspace", {**ws, "status": current}, action.record)
                current = {**current, **action.record}
            elif isinstance(action, decisions.DeletePod):
                self.kube.delete("Pod", action.name, namespace, grace_seconds=action.grace_seconds)
            elif isinstance(action, decisions.CreatePod):
                try:
                    pod = self.kube.create(action.body)
                except ApiException as err:
                    # the same decision, told the API refused: what came before is done, only its status is left
                    refused = decisions.decide(dataclasses.replace(
                        scope, create_failed=decisions.CreateFailed(err.status or 0, api_error_message(err))))
                    decision, status = refused, refused.status
                    break
                self.admissions.created(pod)  # a read of the lab under way may not have listed it
                status = {**(status or {}), "podUID": pod["metadata"]["uid"]}
                created = True
            elif isinstance(action, decisions.DeleteWorkspace):
                self.kube.delete("Workspace", name, namespace)
            else:
                self.act(ws, action)
        if not created:
            admission_lock.close()  # the status of a pass that admitted no pod is written outside the lock
        version = meta.get("resourceVersion")
        if status is not None:
            try:
                written = self.kube.patch_status("Workspace", {**ws, "status": current}, status,
                                                 if_unchanged=decision.if_unchanged)
            except ApiException as err:
                if decision.if_unchanged and is_conflict(err):
                    return Outcome(requeue_after=0.2)  # written since this pass read it: decide again from that
                if err.status != 404:
                    raise
            else:
                version = (written or {}).get("metadata", {}).get("resourceVersion", version)
        # the run as this pass leaves it, watched from now on if the node's kubelet is believed
        since = {**current, **(status or {})}.get("runningSince")
        if since and scope.sight.trusted_from is not None:
            self._watched[(namespace, name)] = (since, scope.sight.trusted_from)
        elif not since:
            self._watched.pop((namespace, name), None)
        for action in decision.after:
            try:
                self.act(ws, action, version if decision.if_unchanged else None)
            except ApiException as err:
                if not (decision.if_unchanged and is_conflict(err)):
                    raise
                return Outcome(requeue_after=0.2)  # the status was written, then the Workspace: decide again
        return Outcome(decision.requeue_after, decision.wake, decision.freed, moved=decision.moved)

    def act(self, ws: Body, action: object, version: str | None = None) -> None:
        """A step that follows the status write; `version`: only onto the Workspace at that resourceVersion."""
        meta = ws["metadata"]
        if isinstance(action, decisions.StopSpec):
            patch: Body = {"spec": {"state": "Stopped"}}
            if version is not None:
                patch["metadata"] = {"resourceVersion": version}
            self.kube.patch("Workspace", meta["name"], patch, meta["namespace"])
        elif isinstance(action, decisions.PostEvent):
            self.kube.event(ws, action.reason, action.message, type_=action.type_)
        else:
            raise TypeError(f"no step applies {action!r}")

    # ---- a pass that failed -----------------------------------------------------------------------------------
    def record_failure(self, ws: Body, err: Exception) -> None:
        """A pass that raised leaves Reconciled=False with its error and a Warning Event (controller/failures.py)."""
        record_failure(self.kube, "Workspace", ws, err, self.clock())


def may_start(ws: Body) -> bool:
    """A Workspace that wants to run and is not running yet: its pass is likely to create a pod."""
    spec, status = ws.get("spec") or {}, ws.get("status") or {}
    return spec.get("state") != "Stopped" and status.get("phase") not in (*RUNNING_PHASES, *ENDED_PHASES)


def lags(ws: Mapping[str, Any]) -> bool:
    """Whether its status lags what was asked of it where someone waits on it: a workspace that should run with no
    phase yet, its pod on the way (Starting), a spec change not yet observed (a stop frees a device). Its passes go
    first (controller/executor.py). One that is Stopped, or applied Stopped and never looked at, waits on nothing."""
    spec, status = ws.get("spec") or {}, ws.get("status") or {}
    phase = status.get("phase")
    if spec.get("state") == "Stopped" and phase in (None, WorkspacePhase.STOPPED):
        return False
    return phase in (None, WorkspacePhase.STARTING) \
        or status.get("observedGeneration") != (ws.get("metadata") or {}).get("generation")


HANDOVER_PREFIX = "handover.labkeeper.io/"


def set_node_taint(kube: Kube, node_name: str, taint: Body, *, present: bool) -> None:
    for _attempt in range(10):
        node = kube.get("Node", node_name)
        if node is None:
            return
        taints = [t for t in node["spec"].get("taints") or [] if t.get("key") != taint["key"]]
        if present:
            taints.append(taint)
        if taints == (node["spec"].get("taints") or []):
            return
        node["spec"]["taints"] = taints
        try:
            kube.replace(node)  # resourceVersion guards against clobbering the kubelet's own taints
            return
        except ApiException as err:
            if not is_conflict(err):
                raise


def clear_stale_handovers(kube: Kube) -> int:
    """A fence an older labkeeper put up to hand a hold pod's device back (holds are records now) is lifted
    at the next start."""
    cleared = 0
    for node in kube.list("Node"):
        for taint in node["spec"].get("taints") or []:
            if taint.get("key", "").startswith(HANDOVER_PREFIX):
                set_node_taint(kube, node["metadata"]["name"], taint, present=False)
                cleared += 1
    return cleared


