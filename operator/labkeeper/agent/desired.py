"""From API objects to what the host should be, and from a pass's result to per-node status: pure."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, TypeVar

from labkeeper.agent import disk
from labkeeper.agent.model import HostUser, LabHost, Members, SharedTree, UnsafeName
from labkeeper.agent.recovery import Departure, HostResult
from labkeeper.api.names import CLEAN_ANNOTATION as CLEAN_ANNOTATION
from labkeeper.api.nodes import ACL_FALLBACK, agent_finalizer, tree_summary
from labkeeper.api.nodes import ALERT_RANK as ALERT_RANK  # agent/main.py ranks alerts with it
from labkeeper.api.resources import (
    GPUUser,
    GPUUserStatus,
    LastCleanup,
    ModelStore,
    ModelStoreSpec,
    NodeState,
    SharedCache,
    SharedCacheSpec,
    SizeAlerts,
    TreeNodeState,
    TreeStatus,
    UserNodeState,
    wire,
)
from labkeeper.api.resources import Members as MembersSpec
from labkeeper.api.trees import tree_conflicts
from labkeeper.api.units import parse_duration, parse_quantity

N = TypeVar("N", bound=NodeState)
TREE_MODELS: dict[str, type[SharedCache] | type[ModelStore]] = {"SharedCache": SharedCache, "ModelStore": ModelStore}


@dataclass
class Desired:
    lab: LabHost
    departures: tuple[Departure, ...]
    waiting: dict[str, str] = field(default_factory=dict)   # user → why nothing is done yet
    invalid: dict[str, str] = field(default_factory=dict)   # "GPUUser/x", "SharedCache/y" → why refused


def _members(spec: MembersSpec | None) -> Members:
    return Members(tuple(spec.users), tuple(spec.groups)) if spec else Members()


def desired_state(users: list[GPUUser], caches: list[SharedCache], stores: list[ModelStore],
                  kubeconfigs: dict[str, bytes], lab_gid: int) -> Desired:
    """An object its model refuses (a stand-in from api.resources.read_object) is never provisioned: it is invalid,
    and a leaving user's stand-in departs with the spec's default data policy, Keep."""
    host_users, departures, waiting, invalid = [], [], {}, {}
    for user in sorted(users, key=lambda o: o.name):
        name, spec, status = user.name, user.spec, user.status or GPUUserStatus()
        if user.metadata.get("deletionTimestamp") or spec.state == "Offboarded":
            departures.append(Departure(name, spec.data_policy))
            continue
        if user.refused is not None:
            invalid[f"GPUUser/{name}"] = user.refused
            continue
        if not status.uid or not status.gid:
            waiting[name] = "waiting for the operator to allocate a uid"
            continue
        try:
            host_users.append(HostUser(
                name=name, uid=status.uid, gid=status.gid, display_name=spec.display_name, shell=spec.shell,
                ssh_keys=tuple(spec.ssh_keys), groups=tuple(spec.groups), locked=spec.state == "Suspended",
                kubeconfig=kubeconfigs.get(name) if spec.state == "Active" else None))
        except UnsafeName as err:
            invalid[f"GPUUser/{name}"] = str(err)
    trees = []
    # two trees on one path would fight over its owner and ACLs on every pass: the first one keeps it
    conflicts = tree_conflicts({"SharedCache": caches, "ModelStore": stores})
    tree_sets: tuple[tuple[str, list[SharedCache] | list[ModelStore], str], ...] = (
        ("SharedCache", caches, "cache"), ("ModelStore", stores, "models"))
    for kind, objs, tree_kind in tree_sets:
        for obj in sorted(objs, key=lambda o: o.name):
            key = f"{kind}/{obj.name}"
            if (kind, obj.name) in conflicts:
                invalid[key] = conflicts[(kind, obj.name)]
                continue
            if obj.refused is not None:
                invalid[key] = obj.refused
                continue
            spec = obj.spec
            try:
                trees.append(SharedTree(
                    obj.name, tree_kind, spec.type, spec.path, tuple((e.name, e.value) for e in spec.env),
                    _members(spec.writers), _members(spec.readers if isinstance(spec, ModelStoreSpec) else None)))
            except UnsafeName as err:
                invalid[key] = str(err)
    return Desired(LabHost(tuple(host_users), tuple(trees), lab_gid), tuple(departures), waiting, invalid)


def kubeconfig_from_secret(secret: dict) -> bytes | None:
    data = (secret.get("data") or {}).get("config")
    return base64.b64decode(data) if data else None


def user_node_state(name: str, desired: Desired, result: HostResult | None, spec_state: str) -> tuple[str, str]:
    """(state, message) of this node for one user; "Provisioned" is what the operator waits for."""
    if f"GPUUser/{name}" in desired.invalid:
        return "Failed", desired.invalid[f"GPUUser/{name}"]
    if name in desired.waiting:
        return "Waiting", desired.waiting[name]
    if result is None:
        return "Waiting", "agent has not finished a pass yet"
    problems = result.report.problems.get(name)
    if problems:
        return "Failed", "; ".join(problems)
    if spec_state == "Suspended":
        return "Provisioned", "account locked (Suspended)"
    notes = "; ".join(result.report.notes.get(name, []))
    return "Provisioned", notes or "account, home and keys in place"


# ---- what this node writes about a GPUUser after a pass: decided here, applied by agent/main.py ---------------

@dataclass(frozen=True)
class PostEvent:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class SetFinalizers:
    """metadata.finalizers, written under the resourceVersion that was read."""

    finalizers: tuple[str, ...]


@dataclass(frozen=True)
class WriteNodes:
    """status.nodes with this node's entry in place, written under the resourceVersion that was read."""

    nodes: tuple[UserNodeState, ...]


UserAction = PostEvent | SetFinalizers | WriteNodes


def user_actions(user: GPUUser, node: str, want: Desired, result: HostResult, home_bytes: int | None,
                 now: dt.datetime) -> list[UserAction]:
    """In order: this node's finalizer on her, the Event of what the pass did for her, and her node entry when it
    changed. Her finalizer goes once her data policy is done here; until then a failure is said, not hidden."""
    own, spec = agent_finalizer(node), user.spec
    finalizers = tuple(user.metadata.get("finalizers") or ())
    problems = result.report.problems.get(user.name)
    if user.metadata.get("deletionTimestamp"):
        if own not in finalizers:
            return []
        if problems:
            return [PostEvent("OffboardingFailed", f"{node}: {'; '.join(problems)}", warning=True)]
        return [PostEvent("Offboarded", f"{node}: account removed, data policy {spec.data_policy} applied"),
                SetFinalizers(tuple(f for f in finalizers if f != own))]
    actions: list[UserAction] = [] if own in finalizers else [SetFinalizers((*finalizers, own))]
    state, message = user_node_state(user.name, want, result, spec.state)
    if spec.state == "Offboarded":
        # a home the archive could not be checked against stays, and the status says why
        state, message = ("Failed", f"offboarding: {'; '.join(problems)}") if problems else (
            "Offboarded", f"account removed; data policy {spec.data_policy}")
        home_bytes = None
    actions.append(PostEvent(f"Host{state}", f"{node}: {message}", warning=state == "Failed"))
    entry = UserNodeState(node=node, state=state, message=message[:1000], home_bytes=home_bytes)
    nodes = merged_nodes(user.status.nodes if user.status else [], node, entry, now)
    if nodes is not None:
        actions.append(WriteNodes(tuple(nodes)))
    return actions


def merged_nodes(current: list[N], node: str, entry: N, now: dt.datetime) -> list[N] | None:
    """The status.nodes list with this node's entry replaced, or None when nothing but the time would change."""
    old = next((n for n in current if n.node == node), None)
    if old is not None and {k: v for k, v in wire(old).items() if k != "lastSync"} == wire(entry):
        return None
    stamped = entry.model_copy(update={"last_sync": now.replace(microsecond=0)})
    return sorted([n for n in current if n.node != node] + [stamped], key=lambda n: n.node)


# ---- SharedCache / ModelStore: one entry per node, the top level derived from all of them --------------

@dataclass(frozen=True)
class TreeDisk:
    """A tree's size on this node against its limit, and the worse of that and the data filesystem's alert."""

    size: int | None
    limit: int | None
    level: str  # of the tree against its own limit
    alert: str  # the worse of level and the data filesystem's
    measured: str  # its words in diskMessage

    def message(self, fs: disk.FilesystemUsage) -> str:
        return f"{self.measured}, data filesystem {fs.ratio:.0%} full"


def tree_disk(obj: SharedCache | ModelStore, mine: TreeNodeState, measured: int | None,
              fs: disk.FilesystemUsage) -> TreeDisk:
    """`measured`: the scanner's last size of its path, None while it has not measured since this agent started
    (this node's last reported figure stands in)."""
    size = measured if measured is not None else mine.size_bytes
    spec = obj.spec
    alerts = spec.alerts if isinstance(spec, SharedCacheSpec) else SizeAlerts()
    limit_text = alerts.size_limit if isinstance(spec, SharedCacheSpec) else spec.size_alert
    limit = int(parse_quantity(limit_text)) if limit_text else None
    level = disk.alert_level(size or 0, limit, alerts.warn_percent / 100, alerts.critical_percent / 100)
    alert = max(level, disk.alert_level(fs.used, fs.total), key=ALERT_RANK.__getitem__)
    if size is None:
        measured_text = "size not measured yet"
    else:
        measured_text = f"{size} of {limit} bytes" if limit else f"{size} bytes, no size limit"
    return TreeDisk(size, limit, level, alert, measured_text)


@dataclass(frozen=True)
class Cleaning:
    """A cleanup this node owes a SharedCache: what to remove, and the clean-requested annotation it answers."""

    max_age: dt.timedelta | None
    max_size: int | None
    request: str | None


def latest_cleanup(*recorded: LastCleanup | None) -> LastCleanup | None:
    """The newest of this node's cleanups as its status shows it and as this agent remembers it."""
    return max((c for c in recorded if c), key=lambda c: c.time or dt.datetime.min.replace(tzinfo=dt.UTC),
               default=None)


def cleanup_due(cache: SharedCache, last: LastCleanup | None, now: dt.datetime) -> Cleaning | None:
    """Each node cleans its own copy, so `last` is this node's lastCleanup: a request another node has answered is
    still due here. Due: a clean-requested annotation not answered yet, or its spec.cleanup.schedule has passed."""
    policy = cache.spec.cleanup
    request = (cache.metadata.get("annotations") or {}).get(CLEAN_ANNOTATION)
    answered = last.request if last else None
    if request and request != answered:
        due = True
    elif policy and policy.schedule and (policy.max_age or policy.max_size):
        due = last is None or last.time is None or now - last.time >= parse_duration(policy.schedule)
    else:
        due = False
    if not due:
        return None
    return Cleaning(parse_duration(policy.max_age) if policy and policy.max_age else None,
                    int(parse_quantity(policy.max_size)) if policy and policy.max_size else None,
                    request or answered)


def tree_node_entry(node: str, problems: list[str], place: str, size: int | None, disk_alert: str,
                    disk_message: str, last_cleanup: LastCleanup | None) -> TreeNodeState:
    """This node's entry in a SharedCache's or ModelStore's status.nodes."""
    fallback = any(ACL_FALLBACK in p for p in problems)
    return TreeNodeState(
        node=node, state="Failed" if any(ACL_FALLBACK not in p for p in problems) else "Ready",
        message=("; ".join(problems) or f"{place} in place")[:1000], acl_supported=not fallback,
        disk_alert=disk_alert, disk_message=disk_message, size_bytes=size, last_cleanup=last_cleanup or None)


def tree_status(current: TreeStatus | None, node: str, entry: TreeNodeState, generation: int | None,
                now: dt.datetime) -> TreeStatus | None:
    """The status to write for a shared tree once this node's entry is in: every node's entry and the top level
    derived from them all; None when nothing but this node's lastSync would change."""
    current = current or TreeStatus()
    nodes = merged_nodes(current.nodes, node, entry, now)
    before = wire(current)
    status: dict[str, Any] = {"nodes": [wire(n) for n in (current.nodes if nodes is None else nodes)]}
    status |= tree_summary(status["nodes"], before.get("conditions") or [], now)
    if generation is not None:
        status["observedGeneration"] = generation
    if nodes is None and all(before.get(key) == value for key, value in status.items() if key != "nodes"):
        return None
    return TreeStatus.model_validate(status)
