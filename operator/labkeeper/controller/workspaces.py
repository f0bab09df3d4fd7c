"""Workspace → pod, with entitlement, weighted GPU quota, holds after stop and a lifecycle.

Level-based: each pass reads the Workspace, its user, its pod and its hold, decides the one next
step, and writes status only when it changed. A per-user lock in the caller makes the weighted
quota check and the pod creation one step, so concurrent applies never overshoot the cap. A workspace
that asks for a GPU gets no pod until admission (controller/admission.py) gives it a device: until then
it waits in the lab's queue with no pod for the scheduler to place."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from labkeeper.api import accounting as api_accounting
from labkeeper.api import admission as api_admission
from labkeeper.api import policy as api_policy
from labkeeper.api import runs as api_runs
from labkeeper.api.names import MANAGED_SELECTOR, NAMESPACE_PREFIX, username_of
from labkeeper.api.trees import TREE_KINDS, tree_conflicts
from labkeeper.api.units import format_time, parse_time
from labkeeper.controller.admission import Admissions, LabView, owner_key
from labkeeper.controller.enforcement import enforcement_clock, status_message
from labkeeper.controller.policy import PolicyStore
from labkeeper.kube.client import Kube, api_error_message, condition, is_conflict, owner_reference
from labkeeper.render import pod as render_pod
from labkeeper.render.access import gpu_resource, priority_class_for
from labkeeper.render.toolchains import toolchain_mounts

FAILED_WAITING_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                          "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
NO_HOLD = {"holdNode": None, "holdResource": None, "holdCount": None, "holdUntil": None}


@dataclass
class Outcome:
    requeue_after: float | None = None
    wake: tuple[tuple[str, str], ...] = ()  # (namespace, name) of Workspaces admission let start
    freed: bool = False  # a device came free: whoever waits gets a pass


@dataclass(frozen=True)
class GpuRequest:
    profile: str
    count: int

    def equivalents(self, weights: dict[str, float]) -> float:
        if self.profile == "none":
            return 0.0
        return weights.get(self.profile, 1.0) * self.count


def gpu_request(spec: dict) -> GpuRequest:
    gpu = spec.get("gpu") or {}
    return GpuRequest(gpu.get("profile") or "none", int(gpu.get("count") or 1))


class WorkspaceReconciler:
    def __init__(self, kube: Kube, policy: PolicyStore, clock: Callable[[], dt.datetime], *,
                 data_root: str = "/data", lab_users_gid: int | None = None) -> None:
        self.kube = kube
        self.policy = policy
        self.clock = clock
        self.data_root = data_root.rstrip("/")
        self.lab_users_gid = lab_users_gid
        # idle clocks never start before this process did: no mass culling after a restart
        self.started_at = clock()
        self.admissions = Admissions(kube, policy)

    # ---- entry ------------------------------------------------------------------------------
    def reconcile(self, ws: dict, *, lost_pod: dict | None = None) -> Outcome:
        meta, spec = ws["metadata"], ws.get("spec") or {}
        status = ws.get("status") or {}
        namespace, name = meta["namespace"], meta["name"]
        now = self.clock()
        username = username_of(namespace)
        user = self.kube.get("GPUUser", username) if username else None
        pod = self.kube.get("Pod", render_pod.pod_name(name), namespace)
        hold = self.kube.get("Pod", render_pod.hold_name(name), namespace)
        policy = self.policy.current
        request = gpu_request(spec)
        desired: dict = {"observedGeneration": meta.get("generation"), "podName": render_pod.pod_name(name),
                         "gpuEquivalents": round(request.equivalents(policy.gpu_weights), 4),
                         # kept only by a pass that finds the workspace still waiting for a device
                         "waitingSince": None, "queue": None}
        runtime = self._runtime(status, pod, now)
        desired.update(runtime)

        if meta.get("deletionTimestamp"):
            return Outcome()
        batch = api_runs.is_batch(ws)
        if batch and status.get("phase") in api_runs.ENDED_PHASES and status.get("finishedAt"):
            # a run that ended stays ended, whatever happens to its pod, its user or spec.state
            return self._ended(ws, desired, now)
        if user is None or not (user.get("status") or {}).get("uid"):
            return self._set(ws, desired, "Pending", "UserNotReady",
                             f"GPUUser {username!r} does not exist or has no uid yet", now, requeue=2.0)
        user_state = (user.get("spec") or {}).get("state", "Active")
        want_running = spec.get("state", "Running") == "Running" and user_state == "Active"
        if hold is not None:
            ws = self._adopt_hold_pod(ws, hold, now, keep=user_state == "Active")
            hold = None

        if not want_running:
            # a suspended or offboarded user cannot come back to a held device: hers are released at once
            return self._stop(ws, desired, pod, hold, request, now,
                              reason="UserSuspended" if user_state != "Active" else "Stopped",
                              # a run never comes back to its device: it goes to the next in line at once
                              hold_device=user_state == "Active" and not batch)
        # idle and runtime clocks describe a running pod; a workspace waiting to run shows none (_enforce sets them)
        desired.update({"idleSince": None, "idleDeadline": None, "runtimeDeadline": None})
        held = user_held(user)
        if held and (pod is None or pod["metadata"].get("deletionTimestamp")):
            # her tier left the policy (or never was in it): no new pod on limits nobody chose; a running one goes on
            return self._set(ws, desired, "Pending", "UserNotReady", held, now)

        entitlement = self.policy.entitlement(username, user.get("spec") or {})
        problem = self._entitlement_problem(spec, request, entitlement, policy)
        if problem:
            return self._set(ws, desired, "Pending", "NotEntitled", problem, now)

        if pod is None or pod["metadata"].get("deletionTimestamp"):
            last_uid = (ws.get("status") or {}).get("podUID")
            gone = pod or lost_pod or ({"metadata": {"uid": last_uid, "namespace": namespace}} if last_uid else None)
            if gone is not None and (ws.get("status") or {}).get("reason") != "PreemptedByScheduler" \
                    and self._preempted(gone):
                self.kube.event(ws, "Preempted", "a higher-priority workspace took this workspace's GPU; "
                                "it waits for a free device", type_="Warning")
                desired["podUID"] = None
                return self._set(ws, desired, "Preempted", "PreemptedByScheduler",
                                 "a higher-priority workspace took the GPU; waiting to start again", now,
                                 requeue=0.5)
            # a preempted run's killed command is no end: it waits in the queue and starts again
            end = api_runs.run_end(gone) if batch and gone is not None and not _was_preempted(gone) else None
            if end is not None:  # its pod ended while going, or went before a pass saw it: the end is the end
                return self._finish(ws, desired, end, now)
            if pod is not None:
                return self._set(ws, desired, "Stopping", "PodTerminating", "previous pod is terminating", now,
                                 requeue=1.0)
            max_runtime = _within(spec.get("maxRuntime"), entitlement.limits.get("maxRuntime", {}).get("value"))
            if max_runtime is not None and desired["runtimeSeconds"] >= max_runtime.total_seconds():
                # a restart must not reset the runtime clock
                return self._set(ws, desired, "Stopped", "MaxRuntime",
                                 f"total runtime {desired['runtimeSeconds']}s has reached the limit of "
                                 f"{int(max_runtime.total_seconds())}s; an admin can raise the user's maxRuntime",
                                 now)
            return self._start(ws, desired, user, entitlement, request, hold, now)
        return self._observe_pod(ws, desired, pod, hold, now)

    # ---- decisions --------------------------------------------------------------------------
    def _entitlement_problem(self, spec: dict, request: GpuRequest, entitlement, policy) -> str | None:
        # the same words labctl uses to refuse before it applies anything
        return api_policy.not_entitled(spec, tier=entitlement.tier, cpu=entitlement.access.cpu,
                                       memory=entitlement.access.memory,
                                       allowed_profiles=entitlement.access.allowed_profiles,
                                       allowed_images=entitlement.allowed_images)

    def _start(self, ws: dict, desired: dict, user: dict, entitlement, request: GpuRequest, hold: dict | None,
               now: dt.datetime) -> Outcome:
        meta = ws["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        policy = self.policy.current
        pods = self.kube.list("Pod", namespace, label_selector=MANAGED_SELECTOR)
        # an ended run's pod stays for its logs but holds no device and counts for nothing
        others = [p for p in pods if p["metadata"].get("labels", {}).get(render_pod.LABEL_WORKSPACE) != name
                  and not p["metadata"].get("deletionTimestamp")
                  and (p.get("status") or {}).get("phase") not in api_runs.ENDED_PHASES]
        running = [p for p in others if p["metadata"]["labels"].get(render_pod.LABEL_ROLE) == "workspace"]
        cap = entitlement.access.max_gpu_equivalents
        in_use = sum(_pod_equivalents(p, policy.gpu_weights) for p in others)
        # a device she holds after a stop is still hers
        holding = {p["metadata"].get("labels", {}).get(render_pod.LABEL_WORKSPACE) for p in others}
        for other in self.kube.list("Workspace", namespace):
            held = api_admission.hold_claim(other, now)
            if held is not None and other["metadata"]["name"] not in holding | {name}:
                in_use += api_admission.equivalents(held.resource, held.count, policy.gpu_weights)
        asked = request.equivalents(policy.gpu_weights)
        if asked > 0 and in_use + asked > cap + 1e-9:
            message = (f"{in_use:.2f} GPU equivalents in use + {asked:.2f} requested > cap {cap:.2f} "
                       f"for tier {entitlement.tier}")
            if (ws.get("status") or {}).get("reason") != "QuotaExceeded":
                self.kube.event(ws, "QuotaExceeded", message, type_="Warning")
            return self._set(ws, desired, "Pending", "QuotaExceeded", message, now, within_quota=False)
        if len(running) >= entitlement.access.max_workspaces:
            message = (f"{len(running)} workspaces running, tier {entitlement.tier} allows "
                       f"{entitlement.access.max_workspaces}")
            return self._set(ws, desired, "Pending", "QuotaExceeded", message, now, within_quota=False)

        inputs = self.pod_inputs(ws, user, entitlement)
        if request.profile == "none":
            return self._create(ws, desired, inputs, request, hold, now)
        me = owner_key(ws)
        freed = False
        status = ws.get("status") or {}
        if status.get("holdNode") and (status.get("holdResource"), status.get("holdCount")) \
                != (gpu_resource(request.profile), request.count):
            # it asks for other devices now: the ones it held go back to the queue
            self.kube.event(ws, "HoldReleased", f"the {self._held_words(status)} held on {status['holdNode']} was "
                            f"released: spec.gpu now asks for {request.count} x {request.profile}")
            desired.update(NO_HOLD)
            freed = True
        with self.admissions.lock:
            since = api_admission.waiting_since(ws) or now
            view = self.admissions.view(now, me=ws, my_since=since)
            decision = view.decide()
            # those ahead that may start now, and holders whose hold is gone, get a pass of their own,
            # whoever's pass found out
            wake = tuple(tuple(o.split("/", 1)) for o in
                         [*(o for o in decision.admitted if o not in view.pods_of), *(c.owner for c in decision.lost_holds),
                          *view.moved(decision)]
                         if o != me)
            lost = self._lost_hold(ws, desired, decision, view)
            node = decision.admitted.get(me)
            if node is not None:
                outcome = self._create(ws, desired, dataclasses.replace(inputs, node_name=node), request, hold, now)
                outcome.wake, outcome.freed = wake, freed
                return outcome
        message = decision.waiting[me].message()
        if lost:
            message = f"{lost}; {message}"
        elif (ws.get("status") or {}).get("holdNode") and api_admission.hold_claim(ws, now) is None:
            desired.update(NO_HOLD)  # its window ran out while it waited
        if api_admission.waiting_since(ws) is None:
            self.kube.event(ws, "Waiting", f"waiting for a device: {message}")
        desired["waitingSince"] = api_admission.format_waiting_since(since)
        desired["queue"] = self._queue_place(decision.waiting[me], view, message)
        # level-based: a missed wake-up costs at most this long
        outcome = self._set(ws, desired, "Pending", "WaitingForDevice", message, now, requeue=30.0)
        outcome.wake, outcome.freed = wake, freed
        return outcome

    def _create(self, ws: dict, desired: dict, inputs: render_pod.PodInputs, request: GpuRequest,
                hold: dict | None, now: dt.datetime) -> Outcome:
        body = render_pod.workspace_pod(inputs)
        try:
            created = self.kube.create(body)
            desired["podUID"] = created["metadata"]["uid"]
        except ApiException as err:
            if is_conflict(err):  # someone (an earlier pass) created it already
                return Outcome(requeue_after=0.5)
            message = api_error_message(err)
            reason = "QuotaExceeded" if err.status == 403 and "quota" in message.lower() else "PodRejected"
            return self._set(ws, desired, "Pending", reason, message, now, requeue=5.0)
        if hold is not None:  # a hold pod of an older labkeeper: the record replaced it
            self.kube.delete("Pod", hold["metadata"]["name"], inputs.namespace, grace_seconds=0)
        self.kube.event(ws, "Starting", f"pod {body['metadata']['name']} created"
                        + (f" with {request.count} x {request.profile}" if request.profile != "none" else "")
                        + (f" on {inputs.node_name}" if inputs.node_name else ""))
        # the pod now holds what the hold kept: the record goes (admission counts each owner once meanwhile)
        desired.update(NO_HOLD)
        desired["waitingSince"] = None
        desired["stopReason"] = None
        return self._set(ws, desired, "Starting", "PodCreated", "waiting for the scheduler", now)

    @staticmethod
    def _queue_place(wait: api_admission.Wait, view: LabView, message: str) -> dict:
        """Where it stands in the queue, who is ahead and why, and when it may start if the lab knows."""
        mine = next((w for w in view.waiters if w.owner == wait.owner), None)
        release = api_admission.estimated_start(wait, view.releases, view.closed)
        return {"position": wait.ahead + 1,
                "ahead": [o.removeprefix(NAMESPACE_PREFIX) for o in wait.ahead_owners],
                "reason": message,
                "relativeUsage": round(mine.usage, 2) if mine is not None else None,
                "estimatedStart": format_time(release.at) if release is not None else None,
                "estimateBasis": release.why if release is not None else None}

    def _lost_hold(self, ws: dict, desired: dict, decision: api_admission.Admission,
                   view: LabView) -> str | None:
        """A hold that no longer fits its node (a pod the lab did not admit took the device, the node shrank
        or went away) is dropped, with a Warning: the status never promises a device that is gone."""
        mine = [c for c in decision.lost_holds if c.owner == owner_key(ws)]
        if not mine:
            return None
        hold = mine[0]
        offered = view.capacity.get((hold.node, hold.resource), 0)
        message = (f"the {api_admission.device_words(hold.resource, hold.count)} held on {hold.node} until "
                   f"{format_time(hold.held_until)} was lost: {hold.node} offers {offered} and pods now use "
                   f"{sum(c.count for c in view.claims if not c.is_hold and (c.node, c.resource) == (hold.node, hold.resource))}")
        self.kube.event(ws, "HoldLost", message + "; starting again waits for a free device", type_="Warning")
        desired.update(NO_HOLD)
        return message

    def _observe_pod(self, ws: dict, desired: dict, pod: dict, hold: dict | None, now: dt.datetime) -> Outcome:
        desired.update(NO_HOLD)  # the pod has the devices now (a pass killed after creating it left the record)
        pod_status = pod.get("status") or {}
        node = pod["spec"].get("nodeName")
        desired["node"] = node
        desired["podUID"] = pod["metadata"]["uid"]
        phase = pod_status.get("phase")
        waiting = _waiting_reason(pod_status)
        if waiting and waiting[0] in FAILED_WAITING_REASONS:
            return self._set(ws, desired, "Failed", waiting[0], waiting[1] or waiting[0], now)
        end = api_runs.run_end(pod) if api_runs.is_batch(ws) else None
        if end is not None:
            return self._finish(ws, desired, end, now)
        if phase in ("Failed", "Succeeded"):
            return self._set(ws, desired, "Failed", pod_status.get("reason") or "ContainerExited",
                             pod_status.get("message") or f"pod {phase.lower()}", now)
        if phase == "Running":
            desired["devices"] = _devices(pod)
            return self._enforce(ws, desired, node, now)
        if not node:
            unschedulable = next((c for c in pod_status.get("conditions") or []
                                  if c.get("type") == "PodScheduled" and c.get("status") == "False"), None)
            message = (unschedulable or {}).get("message") or "waiting for a free device"
            return self._set(ws, desired, "Pending", "Unschedulable" if unschedulable else "Scheduling", message, now)
        return self._set(ws, desired, "Starting", "ContainerCreating", f"scheduled on {node}", now, scheduled=True)

    def _enforce(self, ws: dict, desired: dict, node: str | None, now: dt.datetime) -> Outcome:
        """Idle and runtime limits: warnings at the policy's fractions, a stop at the deadline."""
        status, spec = ws.get("status") or {}, ws.get("spec") or {}
        policy = self.policy.current
        username = username_of(ws["metadata"]["namespace"]) or ""
        user = self.kube.get("GPUUser", username) or {}
        limits = self.policy.entitlement(username, user.get("spec") or {}).limits
        idle_timeout = _within(spec.get("idleTimeout"), limits.get("idleTimeout", {}).get("value"))
        max_runtime = _within(spec.get("maxRuntime"), limits.get("maxRuntime", {}).get("value"))
        clock = enforcement_clock(status, desired, now, self.started_at, idle_timeout, max_runtime,
                                  keep_alive_until=parse_time(spec.get("keepAliveUntil")),
                                  keep_alive=api_policy.parse_duration(spec["keepAlive"]) if spec.get("keepAlive") else None,
                                  keep_alive_cap=policy.keep_alive_max)
        desired.update(clock.status())
        warnings = list(status.get("warnings") or [])
        for warning in clock.due_warnings(policy.warnings.idle, policy.warnings.runtime):
            if warning.key not in {w.get("key") for w in warnings}:
                warnings.append(warning.as_status(now))
                self.kube.event(ws, warning.reason, warning.message, type_="Warning")
        # warnings belong to the current idle stretch; activity clears the idle ones
        warnings = [w for w in warnings if not (w["key"].startswith("idle-") and w.get("since") != format_time(clock.idle_since))]
        desired["warnings"] = warnings
        if clock.keep_alive_refused:
            desired["message"] = clock.keep_alive_refused
        stop = clock.stop_reason()
        if stop:
            message = clock.stop_message(stop)
            self.kube.event(ws, "Culled" if stop == "Idle" else "MaxRuntime", message, type_="Warning")
            desired["stopReason"] = stop
            self.kube.patch_status("Workspace", ws, {"stopReason": stop, "message": message})
            # the stop is recorded as desired state, so a restart of the operator cannot undo it
            self.kube.patch("Workspace", ws["metadata"]["name"], {"spec": {"state": "Stopped"}},
                            ws["metadata"]["namespace"])
            return Outcome(requeue_after=0.2)
        phase = "IdleWarning" if any(w["key"].startswith("idle-") for w in warnings) else "Running"
        reason = "IdleWarning" if phase == "IdleWarning" else "PodRunning"
        message = status_message(node, clock)
        capped = condition("KeepAliveCapped", bool(clock.keep_alive_refused),
                           "Capped" if clock.keep_alive_refused else "WithinCap",
                           clock.keep_alive_refused or "no keep-alive asks for more than the policy's keepAliveMax",
                           status.get("conditions") or [], now)
        requeue = clock.next_check(now, policy.warnings.idle, policy.warnings.runtime)
        # the meter sees an idle stretch begin once it is a report and a check old: look then, not at the next warning
        seen = api_accounting.idle_from({**status, **desired})
        turns_idle = (seen + policy.report_interval + policy.check_interval - now).total_seconds() if seen else 0
        if turns_idle > 0:
            requeue = min(requeue, turns_idle + 0.2)
        requeue = min(requeue, policy.report_interval.total_seconds())  # the heartbeat (lastSeenRunning) is due then
        return self._set(ws, desired, phase, reason, message, now, ready=True, extra_conditions=[capped],
                         requeue=requeue)

    def _stop(self, ws: dict, desired: dict, pod: dict | None, hold: dict | None, request: GpuRequest,
              now: dt.datetime, *, reason: str, hold_device: bool = True) -> Outcome:
        meta = ws["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        status = ws.get("status") or {}
        policy = self.policy.current
        stop_reason = status.get("stopReason") or reason
        desired["stopReason"] = stop_reason
        if pod is not None:
            node = pod["spec"].get("nodeName")
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            devices = api_admission.pod_devices(pod)
            if devices and node and not status.get("holdNode") and not terminating and hold_device \
                    and policy.gpu_hold_after_stop.total_seconds() > 0:
                # The hold is a record in this status, counted by admission, not a placeholder pod: a pod
                # would wait Pending for the scheduler while this one terminates, and the scheduler may give
                # the device to any pod pending beside it. Admission creates every GPU pod of the lab and
                # counts a recorded hold as taken for all but its holder, so nothing can slip in. It is
                # written before the pod is deleted: killed between the two, the next pass finds both.
                resource, count = devices[0]
                record = {"holdNode": node, "holdResource": resource, "holdCount": count,
                          "holdUntil": format_time(now + policy.gpu_hold_after_stop)}
                self.kube.patch_status("Workspace", ws, record)
                ws["status"] = {**status, **record}
                desired.update(record)
            if not terminating:
                self.kube.delete("Pod", pod["metadata"]["name"], namespace,
                                 grace_seconds=int(policy.termination_grace.total_seconds()))
                self.kube.event(ws, "Stopping", f"stopping: {stop_reason}")
            return self._set(ws, desired, "Stopping", stop_reason, "pod is terminating", now, requeue=1.0)

        requeue = None
        freed = False
        reason, note = stop_reason, ""
        hold_until = parse_time(status.get("holdUntil"))
        still_held = False
        if status.get("holdNode"):
            if hold_until is None or now >= hold_until or not hold_device:
                desired.update(NO_HOLD)
                self.kube.event(ws, "HoldReleased", f"the {self._held_words(status)} held on {status['holdNode']} "
                                "after stop was released")
                freed = True
            else:
                with self.admissions.lock:
                    view = self.admissions.view(now)
                    lost = self._lost_hold(ws, desired, view.decide(), view)
                if lost:
                    reason, note = "HoldLost", f"; {lost}"
                else:
                    still_held = True
                    # a hold is checked again now and then: a device it keeps can be taken by a pod the lab
                    # did not admit, or vanish with the node
                    requeue = min((hold_until - now).total_seconds(), 10.0)
        elif status.get("reason") == "HoldLost":
            reason, note = "HoldLost", (status.get("message") or "").removeprefix("stopped")
        retention = policy.stopped_retention
        stopped_at = parse_time(status.get("stoppedAt")) or now
        desired["stoppedAt"] = format_time(stopped_at)
        if retention and retention.total_seconds() > 0 and spec_state(ws) == "Stopped":
            expires = stopped_at + retention
            if now >= expires and not still_held:
                self.kube.delete("Workspace", name, namespace)
                return Outcome()
            wait = (expires - now).total_seconds()
            requeue = min(requeue, wait) if requeue is not None else wait
        if still_held:
            note = f"; {self._held_words(status)} held on {status['holdNode']} until {format_time(hold_until)}"
        outcome = self._set(ws, desired, "Stopped", reason, "stopped" + note, now, requeue=requeue)
        outcome.freed = freed
        return outcome

    def _finish(self, ws: dict, desired: dict, end: api_runs.RunEnd, now: dt.datetime) -> Outcome:
        """A run's command ended: its phase, reason and exit code go into status once, and its device, which its
        ended pod no longer holds, goes to whoever waits (no hold: a run does not come back)."""
        desired.update(NO_HOLD)
        desired.update({"exitCode": end.exit_code, "finishedAt": format_time(end.finished_at or now),
                        "stopReason": end.reason})
        outcome = self._ended(ws, desired, now, phase=end.phase, reason=end.reason, message=end.message)
        outcome.freed = True
        return outcome

    def _ended(self, ws: dict, desired: dict, now: dt.datetime, *, phase: str | None = None,
               reason: str | None = None, message: str | None = None) -> Outcome:
        """An ended run keeps its pod, and so its logs, for the policy's stoppedRetention; then it goes."""
        status = ws.get("status") or {}
        desired.update({"idleSince": None, "idleDeadline": None, "runtimeDeadline": None})
        for key in ("exitCode", "finishedAt", "stopReason", "node", "podUID", "devices"):
            desired.setdefault(key, status.get(key))
        retention = self.policy.current.stopped_retention
        requeue = None
        if retention and retention.total_seconds() > 0:
            expires = (parse_time(desired.get("finishedAt")) or now) + retention
            if now >= expires:
                self.kube.delete("Workspace", ws["metadata"]["name"], ws["metadata"]["namespace"])
                return Outcome()
            requeue = (expires - now).total_seconds()
        return self._set(ws, desired, phase or status["phase"], reason or status.get("reason") or "",
                         message or status.get("message") or "", now, requeue=requeue,
                         scheduled=bool(desired.get("node")))

    def _adopt_hold_pod(self, ws: dict, hold: dict, now: dt.datetime, *, keep: bool) -> dict:
        """A hold pod of an older labkeeper becomes a record for what is left of its window, then goes: as a
        pod it would keep the device from its own holder too."""
        status = ws.get("status") or {}
        until = (parse_time(hold["metadata"].get("creationTimestamp")) or now) + self.policy.current.gpu_hold_after_stop
        node, devices = api_admission.pinned_node(hold), api_admission.pod_devices(hold)
        if keep and not status.get("holdNode") and node and devices and until > now:
            record = {"holdNode": node, "holdResource": devices[0][0], "holdCount": devices[0][1],
                      "holdUntil": format_time(until)}
            self.kube.patch_status("Workspace", ws, record)
            ws = {**ws, "status": {**status, **record}}
        self.kube.delete("Pod", hold["metadata"]["name"], ws["metadata"]["namespace"], grace_seconds=0)
        return ws

    @staticmethod
    def _held_words(status: dict) -> str:
        return api_admission.device_words(status.get("holdResource") or "nvidia.com/gpu", int(status.get("holdCount") or 1))

    def _preempted(self, pod: dict) -> bool:
        if _was_preempted(pod):
            return True
        # the scheduler's own Event on the victim, for a pod whose last status we did not see
        events = self.kube.list("Event", pod["metadata"]["namespace"],
                                field_selector=f"involvedObject.uid={pod['metadata']['uid']},reason=Preempted")
        return bool(events)

    # ---- inputs -----------------------------------------------------------------------------
    def pod_inputs(self, ws: dict, user: dict, entitlement) -> render_pod.PodInputs:
        meta, spec = ws["metadata"], ws.get("spec") or {}
        username = user["metadata"]["name"]
        ustatus = user.get("status") or {}
        policy = self.policy.current
        request = gpu_request(spec)
        trees = {kind: self.kube.list(kind) for kind in TREE_KINDS}
        # two trees on one path would give every pod a duplicate mountPath, which the API refuses
        left_out = tree_conflicts(trees)
        caches = self._mounts("SharedCache", trees, left_out, spec.get("caches"), username, writable_default=True)
        stores = self._mounts("ModelStore", trees, left_out, spec.get("modelStores"), username,
                              writable_default=False)
        wanted = {"SharedCache": spec.get("caches"), "ModelStore": spec.get("modelStores")}
        skipped = [why for (kind, name), why in sorted(left_out.items()) if wanted[kind] is None or name in wanted[kind]]
        if skipped:
            self.kube.event(ws, "TreeLeftOut", "not mounted: " + "; ".join(skipped), type_="Warning")
        toolchains, unknown = toolchain_mounts(policy.toolchains, self.data_root, spec.get("toolchains") or ())
        if unknown:
            self.kube.event(ws, "UnknownToolchain", f"spec.toolchains names {', '.join(unknown)}, which the lab "
                            f"policy does not provide; known: {', '.join(t.name for t in policy.toolchains) or 'none'}",
                            type_="Warning")
        lab_gid = self.lab_users_gid if self.lab_users_gid is not None else policy.lab_users_gid
        return render_pod.PodInputs(
            workspace=meta["name"],
            namespace=meta["namespace"],
            owner=owner_reference(ws),
            username=username,
            uid=int(ustatus["uid"]),
            gid=int(ustatus.get("gid") or ustatus["uid"]),
            supplemental_gids=[lab_gid],
            home_host_path=f"{self.data_root}/users/{username}",
            image=spec["image"],
            command=spec.get("command") or (),
            args=spec.get("args") or (),
            cpu=str(spec.get("cpu") or "1"),
            memory=str(spec.get("memory") or "2Gi"),
            gpu_profile=request.profile,
            gpu_count=request.count,
            batch=api_runs.is_batch(ws),
            priority_class=priority_class_for(entitlement.tier),
            runtime_class=policy.runtime_class_name or None,
            grace_seconds=int(policy.termination_grace.total_seconds()),
            caches=caches,
            model_stores=stores,
            toolchains=toolchains,
        )

    def _mounts(self, kind: str, trees: dict[str, list[dict]], left_out: dict, wanted: list[str] | None,
                username: str, *, writable_default: bool):
        mounts = []
        for obj in sorted(trees[kind], key=lambda o: o["metadata"]["name"]):
            name = obj["metadata"]["name"]
            if (wanted is not None and name not in wanted) or (kind, name) in left_out:
                continue
            spec = obj.get("spec") or {}
            host_path = f"{self.data_root}/{spec['path'].strip('/')}"
            env = [(e["name"], e.get("value", "").replace("$(PATH)", host_path)) for e in spec.get("env") or []]
            writers = spec.get("writers") or {}
            writable = writable_default if kind == "SharedCache" else username in (writers.get("users") or [])
            mounts.append(render_pod.Mount(name, host_path, tuple(env), writable))
        return mounts

    # ---- status -----------------------------------------------------------------------------
    def _runtime(self, status: dict, pod: dict | None, now: dt.datetime) -> dict:
        """Cumulative runtime: closed segments in runtimeSeconds, the open one from runningSince.

        lastSeenRunning is the last moment an operator saw the pod running. A segment that this process has not
        seen running yet (it ran before the operator went away) ends there, not now: a power cut that took the
        pod, or restarted its containers, while nobody watched is no runtime."""
        total = int(status.get("runtimeSeconds") or 0)
        since = parse_time(status.get("runningSince"))
        seen = parse_time(status.get("lastSeenRunning"))
        running = pod is not None and (pod.get("status") or {}).get("phase") == "Running" \
            and not pod["metadata"].get("deletionTimestamp")
        unseen = since is not None and seen is not None and seen < self.started_at.replace(microsecond=0)
        if running and unseen:
            started = _containers_started(pod)
            if started is not None and started > seen:
                # its containers started again while nobody watched (a reboot): the old run ended when last seen
                total += max(0, int((seen - since).total_seconds()))
                since = started
        if running and since is None:
            since = now
        if not running and since is not None:
            total += max(0, int(((seen if unseen else now) - since).total_seconds()))
            since = None
        if running:
            # a heartbeat: written when a report interval old, or when this process has not written one yet
            due = seen is None or seen < self.started_at.replace(microsecond=0) \
                or now - seen >= self.policy.current.report_interval
            seen = now if due else seen
        return {"runtimeSeconds": total, "runningSince": format_time(since),
                "lastSeenRunning": format_time(seen) if running else None}

    def _set(self, ws: dict, desired: dict, phase: str, reason: str, message: str, now: dt.datetime, *,
             requeue: float | None = None, ready: bool = False, scheduled: bool | None = None,
             within_quota: bool = True, extra_conditions: list[dict] | None = None) -> Outcome:
        status = ws.get("status") or {}
        previous = status.get("conditions") or []
        scheduled = ready or bool(desired.get("node")) if scheduled is None else scheduled
        meter = self._meter(ws, desired, phase, reason, now)
        if meter is not None:
            desired["meter"] = meter
        desired.update({
            "phase": phase,
            "reason": reason,
            "message": message,
            "conditions": [
                condition("Scheduled", scheduled, "Scheduled" if scheduled else reason,
                          f"on {desired.get('node')}" if scheduled else message, previous, now),
                condition("Ready", ready, "PodRunning" if ready else reason, message, previous, now),
                condition("WithinQuota", within_quota, "WithinQuota" if within_quota else "QuotaExceeded",
                          message if not within_quota else "within the user's GPU-equivalent cap", previous, now),
                *(extra_conditions or []),
            ],
        })
        if phase != status.get("phase") and phase in ("Running", "Stopped", "Failed", "Succeeded"):
            self.kube.event(ws, phase, message, type_="Warning" if phase == "Failed" else "Normal")
        if desired.get("lastSeenRunning") and any(status.get(k) != v for k, v in desired.items()):
            desired["lastSeenRunning"] = format_time(now)  # status is written anyway: the heartbeat rides on it
        try:
            self.kube.patch_status("Workspace", ws, desired)
        except ApiException as err:
            if err.status != 404:
                raise
        return Outcome(requeue_after=requeue)


    def _meter(self, ws: dict, desired: dict, phase: str, reason: str, now: dt.datetime) -> list[dict] | None:
        """The usage meter with what this pass finds (api/accounting.py); it rides on the status write the change
        causes anyway. Workspaces that never asked for a device carry none."""
        status = ws.get("status") or {}
        if not desired.get("gpuEquivalents") and not status.get("meter"):
            return None
        policy = self.policy.current
        marks = api_accounting.marks_of(ws)
        mark = api_accounting.current_mark({**status, **desired}, phase, reason, now,
                                           idle_grace=policy.report_interval + policy.check_interval,
                                           hold_after_stop=policy.gpu_hold_after_stop,
                                           previous=marks[-1] if marks else None)
        return api_accounting.next_meter(status.get("meter") or [], mark, now)


def _within(requested, entitled) -> dt.timedelta | None:
    """The workspace's own limit, never beyond the user's entitlement."""
    cap = api_policy.parse_duration(str(entitled)) if entitled not in (None, "", "None") else None
    mine = api_policy.parse_duration(str(requested)) if requested else None
    if cap is None:
        return mine
    return min(mine, cap) if mine is not None else cap


HANDOVER_PREFIX = "handover.labkeeper.io/"


def set_node_taint(kube: Kube, node_name: str, taint: dict, *, present: bool) -> None:
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


def user_held(user: dict) -> str | None:
    """Why the user reconciler holds this GPUUser (an unknown tier), from her Ready condition; None if it does not."""
    ready = next((c for c in (user.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("reason") != "UnknownTier":
        return None
    return f"GPUUser {user['metadata']['name']}: {ready.get('message', '')}"


def spec_state(ws: dict) -> str:
    return (ws.get("spec") or {}).get("state", "Running")


def _was_preempted(pod: dict) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("reason") == "PreemptionByScheduler":
            return True
    return False


def _containers_started(pod: dict) -> dt.datetime | None:
    """When the pod's running containers last started (the kubelet restarts them after a reboot)."""
    starts = [parse_time(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
              for cs in (pod.get("status") or {}).get("containerStatuses") or []]
    return max((s for s in starts if s is not None), default=None)


def _waiting_reason(pod_status: dict) -> tuple[str, str] | None:
    for cs in pod_status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason", ""), waiting.get("message", "")
    return None


def _pod_equivalents(pod: dict, weights: dict[str, float]) -> float:
    return sum(api_admission.equivalents(r, n, weights) for r, n in api_admission.pod_devices(pod))


def _devices(pod: dict) -> list[str]:
    devices = []
    for container in pod["spec"].get("containers", []):
        for resource, qty in ((container.get("resources") or {}).get("limits") or {}).items():
            if resource.startswith("nvidia.com/"):
                devices.append(f"{qty} x {resource}")
    return devices


