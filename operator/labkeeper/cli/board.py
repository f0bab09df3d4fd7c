"""`labctl admin board`: every GPU and MIG slice with its user and workspace, holds, the queue, alerts.

`board_model` and `render_lines` are pure (plain API objects in, lines out) and sized to the
terminal: in 80x24 every section shows what fits and says how many more there are."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import yaml
from rich.console import Console
from rich.live import Live
from rich.text import Text

from labkeeper.api import accounting, admission
from labkeeper.api.names import LABEL_ROLE, LABEL_USER, LABEL_WORKSPACE, MANAGED_GPU_SELECTOR, username_of
from labkeeper.api.phases import RUNNING_PHASES, WAITING_PHASES
from labkeeper.api.policy import POLICY_CONFIGMAP, LabPolicy
from labkeeper.cli import views
from labkeeper.cli.doctor import gpu_resources
from labkeeper.cli.session import SYSTEM_NAMESPACE, Session
from labkeeper.kube.client import list_union


def _user_of(namespace: str) -> str:
    """The lab member a namespace belongs to; any other namespace names itself."""
    return username_of(namespace) or namespace



@dataclass
class Slot:
    node: str
    device: str
    user: str = ""
    workspace: str = ""
    state: str = "free"
    style: str = "green"


@dataclass
class BoardData:
    now: dt.datetime
    users: int = 0
    workspaces: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)  # in the order admission serves it, then the rest waiting
    alerts: list[str] = field(default_factory=list)
    cpu_only: int = 0


def _short_resource(resource: str) -> str:
    return "gpu" if resource == "nvidia.com/gpu" else resource.removeprefix("nvidia.com/mig-")


def _pod_devices(pod: dict) -> list[tuple[str, int]]:
    out = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for resource, qty in ((container.get("resources") or {}).get("limits") or {}).items():
            if resource == "nvidia.com/gpu" or resource.startswith("nvidia.com/mig-"):
                out.append((resource, int(qty)))
    return out


def board_model(nodes: list[dict], pods: list[dict], workspaces: list[dict], users: list[dict],
                now: dt.datetime, tier_priority: dict[str, int] | None = None,
                usages: dict[str, float] | None = None, unlisted_stopped: int = 0) -> BoardData:
    """`unlisted_stopped`: workspaces left out of `workspaces` because they are Stopped and hold nothing."""
    data = BoardData(now=now, users=len(users), workspaces=len(workspaces) + unlisted_stopped,
                     phases={"Stopped": unlisted_stopped} if unlisted_stopped else {})
    by_key = {(w["metadata"].get("namespace"), w["metadata"]["name"]): w for w in workspaces}
    free: dict[tuple[str, str], list[Slot]] = {}
    for node, resources in sorted(gpu_resources(nodes).items()):
        for resource, count in sorted(resources.items()):
            slots = [Slot(node, f"{_short_resource(resource)} #{i + 1}") for i in range(int(count))]
            data.slots += slots
            free[(node, resource)] = list(slots)
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        labels = pod["metadata"].get("labels") or {}
        ws = by_key.get((pod["metadata"].get("namespace"), labels.get(LABEL_WORKSPACE)))
        for resource, qty in _pod_devices(pod):
            for _ in range(qty):
                if not free.get((node, resource)):
                    break
                slot = free[(node, resource)].pop(0)
                slot.user = labels.get(LABEL_USER) or _user_of(pod["metadata"].get("namespace", ""))
                slot.workspace = labels.get(LABEL_WORKSPACE) or pod["metadata"]["name"]
                slot.state, slot.style = _slot_state(labels.get(LABEL_ROLE), ws, now)
    decision = _mark_holds_and_decide(data, free, nodes, pods, workspaces, users, now, tier_priority or {},
                                      usages or {})
    for ws in workspaces:
        phase = _phase(ws)
        data.phases[phase] = data.phases.get(phase, 0) + 1
        if phase not in (*WAITING_PHASES, *RUNNING_PHASES, "Failed"):
            continue  # counted, never shown: most of a lab's workspaces
        spec, status = ws.get("spec") or {}, ws.get("status") or {}
        who = f"{_user_of(ws['metadata'].get('namespace', ''))}/{ws['metadata']['name']}"
        gpu = views.gpu_label(spec)
        if phase in WAITING_PHASES and spec.get("state", "Running") == "Running" \
                and admission.owner_of(ws) not in decision:
            data.queue.append(f"{who} {gpu if gpu != '-' else 'cpu'} {status.get('reason') or 'waiting'}: "
                              f"{status.get('message') or ''}".rstrip(": "))
        if phase == "Failed":
            data.alerts.append(f"{who} failed: {status.get('reason') or ''} {status.get('message') or ''}".strip())
        if phase == "IdleWarning":
            data.alerts.append(f"{who} idle, stops in {views.until(status.get('idleDeadline'), now)}")
        if phase in RUNNING_PHASES and gpu == "-":
            data.cpu_only += 1
    for user in sorted(users, key=lambda u: u["metadata"]["name"]):
        for cond in (user.get("status") or {}).get("conditions") or []:
            if "Disk" in (cond.get("type") or "") and cond.get("status") == "True":
                data.alerts.append(f"{user['metadata']['name']} disk: {cond.get('message') or cond.get('reason')}")
    return data


def _mark_holds_and_decide(data: BoardData, free: dict[tuple[str, str], list[Slot]], nodes: list[dict],
                           pods: list[dict], workspaces: list[dict], users: list[dict], now: dt.datetime,
                           tier_priority: dict[str, int], usages: dict[str, float]) -> set[str]:
    """Marks the slices that holds keep and puts the device queue first, in the order admission serves it,
    each entry with its own numbers; returns who is in that queue."""
    capacity, closed = admission.capacity_of(nodes)
    claims = admission.pod_claims(pods)
    by_owner = {admission.owner_of(w): w for w in workspaces}
    for ws in workspaces:
        hold = admission.hold_claim(ws, now)
        if hold is not None:
            claims.append(hold)
    taken = admission.usage(capacity, claims)
    for owner, hold in sorted(taken.holds.items()):
        for _ in range(taken.extra.get(owner, 0)):
            if not free.get((hold.node, hold.resource)):
                break
            slot = free[(hold.node, hold.resource)].pop(0)
            namespace, _, slot.workspace = owner.partition("/")
            slot.user = _user_of(namespace)
            slot.state, slot.style = f"held until {hold.held_until.strftime('%H:%M')}", "yellow"
    with_pod = {admission.owner_of(p) for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == "workspace"}
    tiers = {u["metadata"]["name"]: (u.get("spec") or {}).get("tier") for u in users}
    waiters = []
    for ws in workspaces:
        gpu = (ws.get("spec") or {}).get("gpu") or {}
        since = admission.waiting_since(ws)
        if since is None or admission.owner_of(ws) in with_pod or (gpu.get("profile") or "none") == "none" \
                or (ws.get("spec") or {}).get("state", "Running") != "Running":
            continue
        profile = gpu["profile"]
        resource = "nvidia.com/gpu" if profile == "full" else f"nvidia.com/mig-{profile}"
        username = _user_of(ws["metadata"]["namespace"])
        priority = tier_priority.get(tiers.get(username) or "", 0)
        waiters.append(admission.Waiter(admission.owner_of(ws), resource, int(gpu.get("count") or 1), priority, since,
                                        usage=usages.get(username, 0.0)))
    decision = admission.decide(capacity, claims, waiters, closed)
    for waiter in sorted(waiters, key=lambda w: w.key):
        namespace, _, name = waiter.owner.partition("/")
        ws = by_owner[waiter.owner]
        wait = decision.waiting.get(waiter.owner)
        why = wait.short() if wait else f"starting on {decision.admitted.get(waiter.owner)}"
        data.queue.append(f"{_user_of(namespace)}/{name} {views.gpu_label(ws.get('spec') or {})}, "
                          f"{views.human_duration(now - waiter.waiting_since)}: {why}")
    return {w.owner for w in waiters}


def _phase(ws: dict) -> str:
    """The phase a workspace is counted by, as views.phase_of reads it but from the body: parsing each of a
    department's workspaces into its model would be most of the board's time, and it shows only a few (parsed)."""
    return (ws.get("status") or {}).get("phase") or "Pending"


def _slot_state(role: str | None, body: dict | None, now: dt.datetime) -> tuple[str, str]:
    status = (body or {}).get("status") or {}
    if role == "hold":
        return f"held until {_clock(status.get('holdUntil'))}", "yellow"
    ws = views.workspace_of(body) if body else None
    phase = views.phase_of(ws) if ws else "Running"
    if phase in RUNNING_PHASES:
        idle = views.idle_text(ws, now) if ws else "active"
        runtime = views.runtime_text(ws, now) if ws else "-"
        return f"{idle}, up {runtime}", "red" if phase == "IdleWarning" or idle.startswith(("idle", "stop")) else ""
    return phase.lower(), "cyan"


def _clock(stamp: str | None) -> str:
    t = views.parse_time(stamp)
    return t.strftime("%H:%M") if t else "?"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _allocate(needs: list[int], available: int) -> list[int]:
    """Lines per section: everything if it fits, else shrink the longest sections first."""
    alloc = list(needs)
    while sum(alloc) > available and any(a > 1 for a in alloc):
        largest = max(range(len(alloc)), key=lambda i: alloc[i])
        alloc[largest] -= 1
    return alloc


def _wrapped(items: list[str], room: int, width: int) -> list[tuple[str, str]]:
    """Whole entries, each wrapped onto indented lines rather than cut mid-word, while they fit."""
    lines: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        wrapped = textwrap.wrap(item, width, initial_indent="  ", subsequent_indent="      ") or [""]
        rest = len(items) - i
        if len(lines) + len(wrapped) > room - (1 if rest > 1 else 0):
            if room > len(lines):
                lines.append((f"  … and {rest} more", "dim"))
            break
        lines += [(line, "") for line in wrapped]
    return lines


def _section(items: list[tuple[str, str]], room: int, width: int) -> list[tuple[str, str]]:
    if len(items) <= room:
        return [(_fit(t, width), s) for t, s in items]
    shown = [(_fit(t, width), s) for t, s in items[: max(0, room - 1)]]
    return [*shown, (f"  … and {len(items) - len(shown)} more", "dim")]


def render_lines(data: BoardData, width: int = 80, height: int = 24) -> list[tuple[str, str]]:
    """(text, style) lines, none longer than width - 1 and at most height lines."""
    width = max(40, width) - 1
    phases = data.phases
    running = phases.get("Running", 0) + phases.get("IdleWarning", 0)
    used = sum(1 for s in data.slots if s.user and not s.state.startswith("held"))
    held = sum(1 for s in data.slots if s.state.startswith("held"))
    header = (f"labkeeper {data.now.strftime('%H:%M:%S')}  {data.users} users  {data.workspaces} workspaces: "
              f"{running} running, {len(data.queue)} queued, {phases.get('Stopped', 0)} stopped")
    node_w = min(12, max([4, *(len(s.node) for s in data.slots)]))
    user_w, ws_w, dev_w = 10, 16, 10
    fmt = f"{{:<{node_w}}} {{:<{dev_w}}} {{:<{user_w}}} {{:<{ws_w}}} {{}}"
    slot_lines = [(fmt.format(_fit(s.node, node_w), _fit(s.device, dev_w), _fit(s.user or "-", user_w),
                              _fit(s.workspace or "-", ws_w), s.state), s.style) for s in data.slots]
    queue_lines = _wrapped(data.queue, len(data.queue) * 4, width)
    alert_lines = [(f"  ! {a}", "red") for a in data.alerts]
    fixed = [
        (_fit(header, width), "bold"),
        (_fit(f"GPU SLICES {len(data.slots)}: {used} in use, {held} held, {len(data.slots) - used - held} free"
              + (f"; {data.cpu_only} CPU-only workspaces running" if data.cpu_only else ""), width), "bold"),
        (_fit(fmt.format("NODE", "SLICE", "USER", "WORKSPACE", "STATE"), width), "dim"),
        (f"QUEUE {len(data.queue)}" + ("" if data.queue else ": nobody waits"), "bold"),
        (f"ALERTS {len(data.alerts)}" + ("" if data.alerts else ": none"), "bold"),
    ]
    room = max(0, height - len(fixed))
    slots_n, queue_n, alerts_n = _allocate([len(slot_lines), len(queue_lines), len(alert_lines)], room)
    lines = fixed[:3] + _section(slot_lines, slots_n, width) + [fixed[3]] + _wrapped(data.queue, queue_n, width) \
        + [fixed[4]] + _section(alert_lines, alerts_n, width)
    if not data.slots:
        lines[2] = ("  no node advertises GPUs or MIG slices (labctl admin doctor)", "yellow")
    return lines[:height]


def lab_policy(kube) -> LabPolicy:
    """The policy in force (the built-in one where the ConfigMap is missing or broken, as the operator does)."""
    policy = LabPolicy()
    configmap = kube.get("ConfigMap", POLICY_CONFIGMAP, SYSTEM_NAMESPACE) or {}
    with contextlib.suppress(ValueError, yaml.YAMLError):
        policy = LabPolicy.model_validate(yaml.safe_load((configmap.get("data") or {}).get("policy.yaml") or "") or {})
    return policy


def collect(s: Session, now: dt.datetime | None = None) -> BoardData:
    kube = s.kube
    # from the API server's watch cache: a board a moment behind is still the board, and at a department's size
    # the reads are most of its time, so they go at once (the server encodes one while labctl parses another)
    with ThreadPoolExecutor(max_workers=6) as pool:
        reads = (pool.submit(kube.list, "Node", cached=True),
                 # a CPU workspace's pod holds no slice (most of a department's pods)
                 pool.submit(kube.list, "Pod", label_selector=MANAGED_GPU_SELECTOR, cached=True),
                 # the workspaces that wait, run, stop or hold; the rest (most of a department's) are only counted
                 pool.submit(list_union, kube, "Workspace", admission.LIVE_WORKSPACES, cached=True),
                 pool.submit(kube.count, "Workspace"),
                 pool.submit(kube.list, "GPUUser", cached=True),
                 pool.submit(lab_policy, kube))
        nodes, pods, workspaces, total, users, policy = (read.result() for read in reads)
    unlisted = max(0, total - len(workspaces))
    now = now or dt.datetime.now(dt.UTC)
    # fair share sits between tier and waiting time, as admission weighs it
    usages = accounting.relative_usages(users, now, policy.fair_share.half_life, policy.share)
    return board_model(nodes, pods, workspaces, users, now,
                       {name: tier.priority for name, tier in policy.tiers.items()}, usages, unlisted_stopped=unlisted)


def frame(data: BoardData, width: int, height: int) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    for i, (line, style) in enumerate(render_lines(data, width, height)):
        if i:
            text.append("\n")
        text.append(line, style=style or None)
    return text


def run(s: Session, *, once: bool = False, interval: float = 2.0) -> None:
    out = Console(highlight=False)
    if once or not sys.stdout.isatty():
        width = out.size.width if out.is_terminal else 80
        height = out.size.height if out.is_terminal else 24
        out.print(frame(collect(s), width, height))
        return
    with Live(console=out, screen=True, auto_refresh=False, transient=False) as live:
        while True:
            live.update(frame(collect(s), out.size.width, out.size.height), refresh=True)
            time.sleep(interval)
