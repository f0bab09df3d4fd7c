"""Pure functions from API objects, parsed into their api/ models, to what labctl shows: rows, summaries,
manifests, verdicts.

Nothing here talks to a cluster or a terminal, so each view is unit-tested on objects built in the test."""

from __future__ import annotations

import datetime as dt
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labkeeper.api.kinds import API_VERSION
from labkeeper.api.names import InvalidName, username_of, validate_group, validate_username
from labkeeper.api.phases import RUNNING_PHASES, WAITING_PHASES
from labkeeper.api.policy import not_entitled
from labkeeper.api.resources import (
    GpuProfile,
    GpuRequest,
    GPUUser,
    Workspace,
    WorkspaceSpec,
    WorkspaceStatus,
    read_object,
)
from labkeeper.api.units import format_time
from labkeeper.api.units import parse_duration as parse_policy_duration
from labkeeper.api.units import parse_time as parse_api_time

GPU_PROFILES: tuple[str, ...] = typing.get_args(GpuProfile)
WORKSPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
WAIT_FAILURE_REASONS = {"QuotaExceeded", "NotEntitled", "PodRejected"}


# ---- time and sizes ------------------------------------------------------------------------------
def parse_time(text: str | None) -> dt.datetime | None:
    """api.units.parse_time, and None for text that is no time."""
    try:
        return parse_api_time(text)
    except (TypeError, ValueError):
        return None


def rfc3339(t: dt.datetime) -> str:
    return format_time(t) or ""


def parse_duration(text: str) -> dt.timedelta:
    """'90m', '2h', '1h30m', '1d' → timedelta; ValueError names what is valid."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30m, 2h, 1h30m or 1d")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


def human_duration(delta: dt.timedelta | float | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds() if isinstance(delta, dt.timedelta) else delta)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m"
    return f"{sign}{secs}s"


def human_bytes(value: float | int | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def until(deadline: str | dt.datetime | None, now: dt.datetime) -> str:
    when = deadline if isinstance(deadline, dt.datetime) else parse_time(deadline)
    return "-" if when is None else human_duration(when - now)


# ---- reading ---------------------------------------------------------------------------------------
def workspace_of(ws: Workspace | Mapping[str, Any]) -> Workspace:
    """A Workspace as its model; one its model refuses is shown from its stand-in (api.resources.read_object).
    board.py hands over the bodies it lists; the commands parse theirs where they read them."""
    return ws if isinstance(ws, Workspace) else read_object(Workspace, ws)[0]


def workspaces_of(bodies: Iterable[Mapping[str, Any]]) -> list[Workspace]:
    return [workspace_of(body) for body in bodies]


def user_of(body: Mapping[str, Any]) -> GPUUser:
    return read_object(GPUUser, body)[0]


def status_of(ws: Workspace) -> WorkspaceStatus:
    return ws.status or WorkspaceStatus()


# ---- workspaces ----------------------------------------------------------------------------------
def gpu_label(spec: WorkspaceSpec | Mapping[str, Any]) -> str:
    """`2 x 1g.10gb`; a spec labctl is about to apply (or board.py lists) is a dict, of which only gpu is read."""
    try:
        gpu = spec.gpu if isinstance(spec, WorkspaceSpec) else GpuRequest.model_validate(spec.get("gpu") or {})
    except ValueError:
        return "-"
    if gpu.profile == "none":
        return "-"
    return gpu.profile if gpu.count == 1 else f"{gpu.count} x {gpu.profile}"


def status_is_current(ws: Workspace) -> bool:
    """Whether status describes the spec as it is now, not as it was before the last change."""
    observed = status_of(ws).observed_generation
    generation = ws.metadata.get("generation")
    return observed is not None and (generation is None or observed >= generation)


def phase_of(ws: Workspace | Mapping[str, Any]) -> str:
    return status_of(workspace_of(ws)).phase or "Pending"


def idle_text(ws: Workspace | Mapping[str, Any], now: dt.datetime) -> str:
    ws = workspace_of(ws)
    status = status_of(ws)
    if phase_of(ws) not in RUNNING_PHASES:
        return "-"
    keep = kept_until(ws, now)
    if keep:
        return f"kept {human_duration(keep - now)}"
    if status.idle_deadline:
        return f"stop in {until(status.idle_deadline, now)}"
    if status.idle_since:
        return f"idle {human_duration(now - status.idle_since)}"
    return "active"


def kept_until(ws: Workspace, now: dt.datetime) -> dt.datetime | None:
    """The keep-alive in force as the operator granted it (status), never what the spec asked beyond the cap."""
    keep = status_of(ws).keep_alive_until
    return keep if keep and keep > now else None


def runtime_text(ws: Workspace | Mapping[str, Any], now: dt.datetime) -> str:
    status = status_of(workspace_of(ws))
    total = float(status.runtime_seconds or 0)
    if status.running_since:
        total += max(0.0, (now - status.running_since).total_seconds())
    return human_duration(total) if total else "-"


def waiting_in_queue(ws: Workspace) -> bool:
    status = status_of(ws)
    return status.queue is not None and status.waiting_since is not None


def queue_text(ws: Workspace, now: dt.datetime) -> str:
    """A waiting workspace in the lab's words: its place, why it waits, who is ahead, when it may start."""
    status = status_of(ws)
    queue = status.queue
    place = f"#{queue.position if queue else '?'} in the queue"
    ahead = queue.ahead if queue else []
    if queue and ahead:
        more = queue.position - 1 - min(3, len(ahead))  # the status lists the first few; position counts them all
        place += f" behind {', '.join(ahead[:3])}" + (f" and {more} more" if more > 0 else "")
    text = f"{place}: {(queue and queue.reason) or status.message or 'waiting for a device'}"
    start = queue.estimated_start if queue else None
    if queue and start is not None:
        text += f"; may start at {start:%H:%M:%S} UTC, in {human_duration(max(dt.timedelta(0), start - now))} " \
                f"({queue.estimate_basis or 'a device comes free'})"
    return text


def queue_rows(workspaces: Iterable[Workspace], now: dt.datetime) -> tuple[list[str], list[list[str]]]:
    """`labctl status`: each waiting workspace's place in the queue and why."""
    rows = []
    for ws in sorted(workspaces, key=lambda w: w.name):
        queue = status_of(ws).queue
        if queue is None or not waiting_in_queue(ws):
            continue
        usage = queue.relative_usage
        listed = ", ".join(queue.ahead) + (" ..." if queue.position - 1 > len(queue.ahead) else "")
        rows.append([ws.name, str(queue.position), listed or "-",
                     f"{usage:g}" if usage is not None else "-", queue_text(ws, now)])
    return ["WAITING", "PLACE", "AHEAD", "YOUR USAGE", "WHY"], rows


def owner_of(ws: Workspace) -> str:
    """The user a workspace belongs to, from its namespace (the namespace itself when it is no user's)."""
    return username_of(ws.namespace or "") or ws.namespace or ""


def _owned(ws: Workspace, row: list[str], with_user: bool) -> list[str]:
    return [owner_of(ws), *row] if with_user else row


def workspace_rows(workspaces: Iterable[Workspace], now: dt.datetime, *,
                   with_user: bool = False) -> tuple[list[str], list[list[str]]]:
    headers = (["USER"] if with_user else []) + ["NAME", "PHASE", "GPU", "NODE", "RUNTIME", "IDLE", "MESSAGE"]
    rows = []
    for ws in sorted(workspaces, key=lambda w: (w.namespace or "", w.name)):
        status = status_of(ws)
        message = status.message or ""
        if status.reason and status.phase not in ("Running",):
            message = f"{status.reason}: {message}" if message else status.reason
        if waiting_in_queue(ws):
            message = queue_text(ws, now)
        rows.append(_owned(ws, [ws.name, phase_of(ws), gpu_label(ws.spec), status.node or "-",
                                runtime_text(ws, now), idle_text(ws, now), message], with_user))
    return headers, rows


def _given(**fields: Any) -> dict[str, Any]:
    """The fields a manifest names: only those given, so the API's defaults apply to the rest."""
    return {key: value for key, value in fields.items() if value}


def workspace_manifest(name: str, namespace: str, *, image: str, gpu: str = "none", gpu_count: int = 1,
                       cpu: str | None = None, memory: str | None = None, command: list[str] | None = None,
                       state: str = "Running", batch: bool = False) -> dict:
    if not WORKSPACE_RE.match(name):
        raise ValueError(f"workspace name {name!r} must be lowercase letters, digits and '-', at most 42 characters")
    if gpu not in GPU_PROFILES:
        raise ValueError(f"--gpu {gpu!r} is not a GPU profile; valid: {', '.join(GPU_PROFILES)}")
    if batch and not command:
        raise ValueError(f"run {name} needs a command after --, e.g. labctl run {name} --gpu 1g.10gb -- "
                         "python train.py")
    spec = {"image": image, "gpu": {"profile": gpu, "count": gpu_count}, "state": state,
            **_given(mode="Batch" if batch else None, cpu=cpu, memory=memory, command=command)}
    return {"apiVersion": API_VERSION, "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


# ---- batch runs ----------------------------------------------------------------------------------
def is_run(ws: Workspace) -> bool:
    return ws.spec.mode == "Batch"


def age(ws: Workspace, now: dt.datetime) -> str:
    created = parse_time(ws.metadata.get("creationTimestamp"))
    return human_duration(now - created) if created else "-"


def run_rows(workspaces: Iterable[Workspace], now: dt.datetime, *,
             with_user: bool = False) -> tuple[list[str], list[list[str]]]:
    """`labctl runs`: each run's phase, its command's exit code once it ended, its GPU, age and why it stands so."""
    headers = (["USER"] if with_user else []) + ["NAME", "PHASE", "EXIT", "GPU", "AGE", "MESSAGE"]
    rows = []
    for ws in sorted((w for w in workspaces if is_run(w)), key=lambda w: w.name):
        status = status_of(ws)
        code = status.exit_code
        if waiting_in_queue(ws):
            why = queue_text(ws, now)
        else:
            why = (f"{status.reason}: " if status.reason else "") + (status.message or "")
        rows.append(_owned(ws, [ws.name, phase_of(ws), "-" if code is None else str(code), gpu_label(ws.spec),
                                age(ws, now), why.strip() or "-"], with_user))
    return headers, rows


ENDED = ("Succeeded", "Failed", "Stopped")


def run_exit_code(ws: Workspace) -> int:
    """What `labctl run` exits with: the command's own code; 1 for a run that ended without one (stopped, culled,
    evicted) or failed with 0 (its pod failed, not the command)."""
    status = status_of(ws)
    if status.phase == "Succeeded":
        return 0
    return status.exit_code if status.exit_code else 1


def run_end_line(ws: Workspace) -> str:
    status = status_of(ws)
    return (f"run {ws.name} {phase_of(ws)}" + (f" ({status.reason})" if status.reason else "")
            + (f": {status.message}" if status.message else ""))


def run_wait_line(ws: Workspace, now: dt.datetime) -> str:
    """Where a run that has not started stands, one line: its place in the queue, or why it waits."""
    status = status_of(ws)
    if waiting_in_queue(ws):
        return f"{ws.name}: waiting, {queue_text(ws, now)}"
    detail = (status.reason or "") + (f": {status.message}" if status.message else "")
    return f"{ws.name}: {phase_of(ws)}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class Verdict:
    done: bool
    ok: bool
    line: str
    # where the workspace stood, for the hint after a timeout
    phase: str = field(default="", compare=False)
    reason: str = field(default="", compare=False)
    current: bool = field(default=True, compare=False)


def wait_verdict(ws: Workspace | None, want: str) -> Verdict:
    """Where a workspace stands while `up`/`start`/`stop` wait for it to reach `want` (Running|Stopped)."""
    if ws is None:
        return Verdict(True, False, "the workspace was deleted while waiting")
    name = ws.name
    status = status_of(ws)
    phase, reason, message = phase_of(ws), status.reason or "", status.message or ""
    detail = f"{phase}" + (f" ({reason})" if reason else "") + (f": {message}" if message else "")
    if not status_is_current(ws):
        return Verdict(False, False, f"{name}: waiting for the operator to pick up the change", phase, reason,
                       current=False)
    if phase == want or (want == "Running" and phase == "IdleWarning"):
        return Verdict(True, True, f"{name}: {detail}", phase, reason)
    if want == "Running" and phase == "Failed":
        return Verdict(True, False, f"workspace {name} failed: {reason or 'Failed'}: {message}", phase, reason)
    if want == "Running" and phase == "Pending" and reason in WAIT_FAILURE_REASONS:
        return Verdict(True, False, cannot_start(name, reason, message), phase, reason)
    return Verdict(False, False, f"{name}: {detail}", phase, reason)


def cannot_start(name: str, reason: str, message: str) -> str:
    return f"workspace {name} cannot start: {reason}: {message}"


def wait_hint(verdict: Verdict, name: str) -> str | None:
    """What to do after `up`/`start`/`stop` gave up or was refused, from where the workspace stood."""
    if verdict.reason == "QuotaExceeded":
        if "workspaces running" in verdict.line:
            return (f"you run as many workspaces as your tier allows: stop one (`labctl ls`, `labctl stop NAME`) "
                    f"to make room; `labctl down {name}` withdraws this one")
        return f"it stays queued and starts when you free GPUs; `labctl down {name}` withdraws it"
    if verdict.reason == "NotEntitled":
        return "`labctl status` shows your limits; ask the lab admin if you need more"
    if "timed out" not in verdict.line:
        return None
    if not verdict.current:
        return "the operator has not picked up the change: is it running? `labctl admin doctor` checks"
    if verdict.phase in WAITING_PHASES:
        return (f"it is still waiting for a device and starts by itself when one is free; `labctl ls` shows why it "
                f"waits, `labctl down {name}` withdraws it")
    if verdict.phase == "Starting":
        return f"its pod is still starting (a large image takes a while); `labctl logs {name}` shows its output"
    return f"`kubectl get ws {name} -o yaml` shows its status and conditions"


def enter_hint(name: str) -> str:
    return f"enter it with: labctl shell {name}    (logs: labctl logs {name} -f, stop: labctl stop {name})"


# ---- users ---------------------------------------------------------------------------------------
def gpuuser_manifest(name: str, *, tier: str, display_name: str | None = None, groups: Iterable[str] = (),
                     ssh_keys: Iterable[str] = (), shell: str | None = None) -> dict:
    try:  # the API's own rules, so labctl refuses exactly what the API server would
        validate_username(name)
        for group in groups:
            validate_group(group)
    except InvalidName as err:
        raise ValueError(f"{err} (the user's namespace is lab-{name})") from err
    spec = {"displayName": display_name or name, "tier": tier, "state": "Active",
            **_given(groups=list(groups), sshKeys=[k.strip() for k in ssh_keys if k.strip()], shell=shell)}
    return {"apiVersion": API_VERSION, "kind": "GPUUser", "metadata": {"name": name}, "spec": spec}


def ssh_keys_from_text(text: str, source: str) -> list[str]:
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for key in keys:
        if not re.match(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) ", key):
            raise ValueError(f"{source}: {key[:40]!r}... is not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA...')")
    if not keys:
        raise ValueError(f"{source} holds no public key")
    return keys


def limit_value(user: GPUUser, field: str) -> str | None:
    entry = (user.status.effective_limits if user.status else {}).get(field)
    return None if entry is None else str(entry.value)


def home_bytes(user: GPUUser) -> int | None:
    """Her home's size: the largest copy any node's agent measured (on shared storage they all measure the same)."""
    sizes = [n.home_bytes for n in (user.status.nodes if user.status else []) if n.home_bytes is not None]
    return max(sizes) if sizes else None


def user_rows(users: Iterable[GPUUser]) -> tuple[list[str], list[list[str]]]:
    headers = ["NAME", "TIER", "STATE", "PHASE", "UID", "GPU EQ", "WORKSPACES", "DISK"]
    rows = []
    for user in sorted(users, key=lambda u: u.name):
        status = user.status
        usage = status.usage if status else None
        in_use = usage.workspaces if usage else 0
        cap = limit_value(user, "maxGpuEquivalents")
        max_ws = limit_value(user, "maxWorkspaces")
        rows.append([
            user.name, user.spec.tier or "-", user.spec.state,
            (status and status.phase) or "Pending", str((status and status.uid) or "-"),
            f"{usage.gpu_equivalents if usage else 0:g}/{cap}" if cap else "-",
            f"{in_use}/{max_ws}" if max_ws else str(in_use),
            human_bytes(home_bytes(user)),
        ])
    return headers, rows


LIMIT_FIELDS = ("maxGpuEquivalents", "cpu", "memory", "maxWorkspaces", "idleTimeout", "maxRuntime", "keepAliveMax")


def entitlement_problem(user: GPUUser, spec: dict) -> str | None:
    """The operator's NotEntitled message for this Workspace spec, from the limits in the user's status; None
    when it is within them or the status does not say (labctl then leaves the decision to the operator)."""
    values = {k: limit_value(user, k) or "" for k in ("cpu", "memory", "allowedProfiles", "allowedImages")}
    if not values["cpu"] or not values["memory"] or not values["allowedProfiles"]:
        return None
    return not_entitled(spec, tier=user.spec.tier or "-", cpu=values["cpu"], memory=values["memory"],
                        allowed_profiles=[p for p in values["allowedProfiles"].split(",") if p],
                        allowed_images=[p for p in values["allowedImages"].split(",") if p])


def keep_alive_cap(user: GPUUser) -> dt.timedelta | None:
    """The policy's keepAliveMax as the operator reports it in the user's effective limits."""
    value = limit_value(user, "keepAliveMax")
    try:
        return parse_policy_duration(value) if value else None
    except ValueError:
        return None


def limits_rows(user: GPUUser) -> tuple[list[str], list[list[str]]]:
    limits = user.status.effective_limits if user.status else {}
    ordered = [f for f in LIMIT_FIELDS if f in limits] + sorted(f for f in limits if f not in LIMIT_FIELDS)
    return ["LIMIT", "VALUE", "FROM"], [[f, limits[f].value, limits[f].source] for f in ordered]


def usage_summary(user: GPUUser, workspaces: list[Workspace], quota: dict | None) -> dict:
    """What `labctl status` shows: each limit beside what the user is using of it."""
    status = user.status
    usage = status.usage if status else None
    running = [w for w in workspaces if phase_of(w) in (*RUNNING_PHASES, "Starting")]
    if usage is not None and "gpu_equivalents" in usage.model_fields_set:
        gpu_used = usage.gpu_equivalents
    else:
        gpu_used = sum(status_of(w).gpu_equivalents or 0 for w in running)
    used = (quota or {}).get("status", {}).get("used") or {}
    return {
        "user": user.name,
        "tier": user.spec.tier,
        "state": user.spec.state,
        "phase": status.phase if status else None,
        "lines": [
            ("GPU equivalents", f"{float(gpu_used):g}", limit_value(user, "maxGpuEquivalents") or "-"),
            ("CPU", used.get("requests.cpu", "-"), limit_value(user, "cpu") or "-"),
            ("memory", used.get("requests.memory", "-"), limit_value(user, "memory") or "-"),
            ("running workspaces", str(len(running)), limit_value(user, "maxWorkspaces") or "-"),
            ("disk (home)", human_bytes(home_bytes(user)), "-"),
        ],
        "idleTimeout": limit_value(user, "idleTimeout"),
        "maxRuntime": limit_value(user, "maxRuntime"),
        "keepAliveMax": limit_value(user, "keepAliveMax"),
    }


def countdown_rows(workspaces: list[Workspace], now: dt.datetime) -> tuple[list[str], list[list[str]]]:
    headers = ["WORKSPACE", "PHASE", "IDLE", "RUNTIME LEFT", "KEEP-ALIVE", "WARNINGS"]
    rows = []
    for ws in sorted(workspaces, key=lambda w: w.name):
        status = status_of(ws)
        keep = kept_until(ws, now)
        warning_text = "; ".join(w.message or w.key for w in status.warnings[-2:])
        rows.append([ws.name, phase_of(ws), idle_text(ws, now),
                     until(status.runtime_deadline, now) if phase_of(ws) in RUNNING_PHASES else "-",
                     f"until {rfc3339(keep)}" if keep else "-", warning_text or "-"])
    return headers, rows
