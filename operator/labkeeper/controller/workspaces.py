"""Workspace → pod, with entitlement, weighted GPU quota, holds after stop and a lifecycle.

Level-based: each pass reads the Workspace, its user, its pod and its hold, decides the one next
step, and writes status only when it changed. A per-user lock in the caller makes the weighted
quota check and the pod creation one step, so concurrent applies never overshoot the cap."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from labkeeper.api import policy as api_policy
from labkeeper.api.units import format_time, parse_time
from labkeeper.controller.enforcement import enforcement_clock, status_message
from labkeeper.controller.policy import PolicyStore
from labkeeper.kube.client import Kube, api_error_message, condition, is_conflict, owner_reference
from labkeeper.render import pod as render_pod
from labkeeper.render.access import priority_class_for
from labkeeper.render.toolchains import toolchain_mounts

FAILED_WAITING_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                          "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
@dataclass
class Outcome:
    requeue_after: float | None = None


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


def username_for(namespace: str) -> str | None:
    return namespace[4:] if namespace.startswith("lab-") else None


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

    # ---- entry ------------------------------------------------------------------------------
    def reconcile(self, ws: dict, *, lost_pod: dict | None = None) -> Outcome:
        meta, spec = ws["metadata"], ws.get("spec") or {}
        status = ws.get("status") or {}
        namespace, name = meta["namespace"], meta["name"]
        now = self.clock()
        username = username_for(namespace)
        user = self.kube.get("GPUUser", username) if username else None
        pod = self.kube.get("Pod", render_pod.pod_name(name), namespace)
        hold = self.kube.get("Pod", render_pod.hold_name(name), namespace)
        policy = self.policy.current
        request = gpu_request(spec)
        desired: dict = {"observedGeneration": meta.get("generation"), "podName": render_pod.pod_name(name),
                         "gpuEquivalents": round(request.equivalents(policy.gpu_weights), 4)}
        runtime = self._runtime(status, pod, now)
        desired.update(runtime)

        if meta.get("deletionTimestamp"):
            return Outcome()
        if user is None or not (user.get("status") or {}).get("uid"):
            return self._set(ws, desired, "Pending", "UserNotReady",
                             f"GPUUser {username!r} does not exist or has no uid yet", now, requeue=2.0)
        user_state = (user.get("spec") or {}).get("state", "Active")
        want_running = spec.get("state", "Running") == "Running" and user_state == "Active"

        if not want_running:
            return self._stop(ws, desired, pod, hold, request, now,
                              reason="UserSuspended" if user_state != "Active" else "Stopped")
        # idle and runtime clocks describe a running pod; a workspace waiting to run shows none (_enforce sets them)
        desired.update({"idleSince": None, "idleDeadline": None, "runtimeDeadline": None})

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
        pods = self.kube.list("Pod", namespace, label_selector="app.kubernetes.io/managed-by=labkeeper")
        others = [p for p in pods if p["metadata"].get("labels", {}).get(render_pod.LABEL_WORKSPACE) != name
                  and not p["metadata"].get("deletionTimestamp")]
        running = [p for p in others if p["metadata"]["labels"].get(render_pod.LABEL_ROLE) == "workspace"]
        cap = entitlement.access.max_gpu_equivalents
        in_use = sum(_pod_equivalents(p, policy.gpu_weights) for p in others)
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
        body = render_pod.workspace_pod(inputs)
        held_node = None
        if hold is not None and not hold["metadata"].get("deletionTimestamp"):
            held_node = hold["spec"].get("nodeName")
        handover = None
        if held_node:
            # take the held device back without a scheduling cycle in which a waiting pod could grab
            # it: fence the node, release the hold, bind straight to the node, lift the fence
            handover = handover_taint(ws)
            set_node_taint(self.kube, held_node, handover, present=True)
            self.kube.delete("Pod", hold["metadata"]["name"], namespace, grace_seconds=0)
            body["spec"]["nodeName"] = held_node
            body["spec"].pop("nodeSelector", None)
            body["spec"]["tolerations"] = [{"key": handover["key"], "operator": "Exists", "effect": "NoSchedule"}]
        try:
            created = self.kube.create(body)
            desired["podUID"] = created["metadata"]["uid"]
        except ApiException as err:
            if is_conflict(err):  # someone (an earlier pass) created it already
                return Outcome(requeue_after=0.5)
            message = api_error_message(err)
            reason = "QuotaExceeded" if err.status == 403 and "quota" in message.lower() else "PodRejected"
            return self._set(ws, desired, "Pending", reason, message, now, requeue=5.0)
        finally:
            if handover is not None:
                set_node_taint(self.kube, held_node, handover, present=False)
        if hold is not None and not held_node:
            self.kube.delete("Pod", hold["metadata"]["name"], namespace, grace_seconds=0)
        self.kube.event(ws, "Starting", f"pod {body['metadata']['name']} created"
                        + (f" with {request.count} x {request.profile}" if request.profile != "none" else ""))
        desired["holdPodName"] = None
        desired["holdUntil"] = None
        desired["stopReason"] = None
        return self._set(ws, desired, "Starting", "PodCreated", "waiting for the scheduler", now)

    def _observe_pod(self, ws: dict, desired: dict, pod: dict, hold: dict | None, now: dt.datetime) -> Outcome:
        pod_status = pod.get("status") or {}
        node = pod["spec"].get("nodeName")
        desired["node"] = node
        desired["podUID"] = pod["metadata"]["uid"]
        phase = pod_status.get("phase")
        waiting = _waiting_reason(pod_status)
        if waiting and waiting[0] in FAILED_WAITING_REASONS:
            return self._set(ws, desired, "Failed", waiting[0], waiting[1] or waiting[0], now)
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
        username = username_for(ws["metadata"]["namespace"]) or ""
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
        return self._set(ws, desired, phase, reason, message, now, ready=True, extra_conditions=[capped],
                         requeue=clock.next_check(now, policy.warnings.idle, policy.warnings.runtime))

    def _stop(self, ws: dict, desired: dict, pod: dict | None, hold: dict | None, request: GpuRequest,
              now: dt.datetime, *, reason: str) -> Outcome:
        meta = ws["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        status = ws.get("status") or {}
        policy = self.policy.current
        stop_reason = status.get("stopReason") or reason
        desired["stopReason"] = stop_reason
        if pod is not None:
            node = pod["spec"].get("nodeName")
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            if request.profile != "none" and node and hold is None and not terminating \
                    and policy.gpu_hold_after_stop.total_seconds() > 0:
                # the hold goes up before the pod goes down, so nobody slips in between
                holder = render_pod.hold_pod(self._hold_inputs(ws, request), node)
                try:
                    self.kube.create(holder)
                    held = True
                except ApiException as err:
                    if err.status is None or err.status >= 500:
                        raise  # the API is unwell: retry, the pod stays until the hold is up
                    held = is_conflict(err)
                    if not held:
                        # refused for good (quota, admission): the stop the user asked for goes ahead
                        self.kube.event(ws, "HoldRefused", f"the GPU cannot be held after stop, it is released: "
                                        f"{api_error_message(err)}", type_="Warning")
                if held:
                    desired["holdPodName"] = holder["metadata"]["name"]
                    desired["holdUntil"] = format_time(now + policy.gpu_hold_after_stop)
            if not terminating:
                self.kube.delete("Pod", pod["metadata"]["name"], namespace,
                                 grace_seconds=int(policy.termination_grace.total_seconds()))
                self.kube.event(ws, "Stopping", f"stopping: {stop_reason}")
            return self._set(ws, desired, "Stopping", stop_reason, "pod is terminating", now, requeue=1.0)

        requeue = None
        hold_until = parse_time(status.get("holdUntil"))
        if hold is not None and hold_until is None and not hold["metadata"].get("deletionTimestamp"):
            # a status that does not know the hold yet (a stale read, a crash between creating the hold and
            # recording it): the hold's own age decides, it is never released early
            created = parse_time(hold["metadata"].get("creationTimestamp")) or now
            hold_until = created + policy.gpu_hold_after_stop
            desired["holdPodName"] = hold["metadata"]["name"]
            desired["holdUntil"] = format_time(hold_until)
        still_held = False
        if hold is not None:
            if hold_until is None or now >= hold_until:
                self.kube.delete("Pod", hold["metadata"]["name"], namespace, grace_seconds=0)
                self.kube.event(ws, "HoldReleased", "the GPU held after stop was released")
                desired["holdPodName"] = None
                desired["holdUntil"] = None
            else:
                still_held = True
                requeue = (hold_until - now).total_seconds()
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
        message = "stopped" + (f"; GPU held until {format_time(hold_until)}" if still_held else "")
        return self._set(ws, desired, "Stopped", stop_reason, message, now, requeue=requeue)

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
        caches = self._mounts("SharedCache", spec.get("caches"), username, writable_default=True)
        stores = self._mounts("ModelStore", spec.get("modelStores"), username, writable_default=False)
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
            priority_class=priority_class_for(entitlement.tier),
            runtime_class=policy.runtime_class_name or None,
            grace_seconds=int(policy.termination_grace.total_seconds()),
            caches=caches,
            model_stores=stores,
            toolchains=toolchains,
        )

    def _hold_inputs(self, ws: dict, request: GpuRequest) -> render_pod.PodInputs:
        meta = ws["metadata"]
        return render_pod.PodInputs(
            workspace=meta["name"], namespace=meta["namespace"], owner=owner_reference(ws),
            username=username_for(meta["namespace"]) or "", uid=0, gid=0, supplemental_gids=(),
            home_host_path="", image="", gpu_profile=request.profile, gpu_count=request.count,
            runtime_class=self.policy.current.runtime_class_name or None,
        )

    def _mounts(self, kind: str, wanted: list[str] | None, username: str, *, writable_default: bool):
        mounts = []
        for obj in sorted(self.kube.list(kind), key=lambda o: o["metadata"]["name"]):
            name = obj["metadata"]["name"]
            if wanted is not None and name not in wanted:
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
        """Cumulative runtime: closed segments in runtimeSeconds, the open one from runningSince."""
        total = int(status.get("runtimeSeconds") or 0)
        since = parse_time(status.get("runningSince"))
        running = pod is not None and (pod.get("status") or {}).get("phase") == "Running" \
            and not pod["metadata"].get("deletionTimestamp")
        if running and since is None:
            since = now
        if not running and since is not None:
            total += int((now - since).total_seconds())
            since = None
        return {"runtimeSeconds": total, "runningSince": format_time(since)}

    def _set(self, ws: dict, desired: dict, phase: str, reason: str, message: str, now: dt.datetime, *,
             requeue: float | None = None, ready: bool = False, scheduled: bool | None = None,
             within_quota: bool = True, extra_conditions: list[dict] | None = None) -> Outcome:
        status = ws.get("status") or {}
        previous = status.get("conditions") or []
        scheduled = ready or bool(desired.get("node")) if scheduled is None else scheduled
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
        if phase != status.get("phase") and phase in ("Running", "Stopped", "Failed"):
            self.kube.event(ws, phase, message, type_="Warning" if phase == "Failed" else "Normal")
        try:
            self.kube.patch_status("Workspace", ws, desired)
        except ApiException as err:
            if err.status != 404:
                raise
        return Outcome(requeue_after=requeue)


def _within(requested, entitled) -> dt.timedelta | None:
    """The workspace's own limit, never beyond the user's entitlement."""
    cap = api_policy.parse_duration(str(entitled)) if entitled not in (None, "", "None") else None
    mine = api_policy.parse_duration(str(requested)) if requested else None
    if cap is None:
        return mine
    return min(mine, cap) if mine is not None else cap


HANDOVER_PREFIX = "handover.labkeeper.io/"


def handover_taint(ws: dict) -> dict:
    return {"key": HANDOVER_PREFIX + ws["metadata"]["uid"][:8], "value": ws["metadata"]["name"][:63],
            "effect": "NoSchedule"}


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
    """A fence left by an operator killed mid-handover is lifted at the next start."""
    cleared = 0
    for node in kube.list("Node"):
        for taint in node["spec"].get("taints") or []:
            if taint.get("key", "").startswith(HANDOVER_PREFIX):
                set_node_taint(kube, node["metadata"]["name"], taint, present=False)
                cleared += 1
    return cleared


def spec_state(ws: dict) -> str:
    return (ws.get("spec") or {}).get("state", "Running")


def _was_preempted(pod: dict) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("reason") == "PreemptionByScheduler":
            return True
    return False


def _waiting_reason(pod_status: dict) -> tuple[str, str] | None:
    for cs in pod_status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason", ""), waiting.get("message", "")
    return None


def _pod_equivalents(pod: dict, weights: dict[str, float]) -> float:
    total = 0.0
    for container in pod["spec"].get("containers", []):
        for resource, qty in ((container.get("resources") or {}).get("limits") or {}).items():
            if resource == "nvidia.com/gpu":
                total += weights.get("full", 1.0) * int(qty)
            elif resource.startswith("nvidia.com/mig-"):
                total += weights.get(resource.removeprefix("nvidia.com/mig-"), 1.0) * int(qty)
    return total


def _devices(pod: dict) -> list[str]:
    devices = []
    for container in pod["spec"].get("containers", []):
        for resource, qty in ((container.get("resources") or {}).get("limits") or {}).items():
            if resource.startswith("nvidia.com/"):
                devices.append(f"{qty} x {resource}")
    return devices


