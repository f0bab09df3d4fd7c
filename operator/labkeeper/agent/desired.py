"""From API objects to what the host should be, and from a pass's result to per-node status: pure."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field

from labkeeper.agent.model import HostUser, LabHost, Members, SharedTree, UnsafeName
from labkeeper.agent.recovery import Departure, HostResult
from labkeeper.api.names import CLEAN_ANNOTATION as CLEAN_ANNOTATION
from labkeeper.api.nodes import ACL_FALLBACK, agent_finalizer, tree_summary
from labkeeper.api.nodes import ALERT_RANK as ALERT_RANK  # agent/main.py ranks alerts with it
from labkeeper.api.trees import tree_conflicts

finalizer = agent_finalizer


@dataclass
class Desired:
    lab: LabHost
    departures: tuple[Departure, ...]
    waiting: dict[str, str] = field(default_factory=dict)   # user → why nothing is done yet
    invalid: dict[str, str] = field(default_factory=dict)   # "GPUUser/x", "SharedCache/y" → why refused


def _members(spec: dict | None) -> Members:
    spec = spec or {}
    return Members(tuple(spec.get("users") or ()), tuple(spec.get("groups") or ()))


def desired_state(users: list[dict], caches: list[dict], stores: list[dict], kubeconfigs: dict[str, bytes],
                  lab_gid: int) -> Desired:
    host_users, departures, waiting, invalid = [], [], {}, {}
    for obj in sorted(users, key=lambda o: o["metadata"]["name"]):
        name = obj["metadata"]["name"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        state = spec.get("state", "Active")
        if obj["metadata"].get("deletionTimestamp") or state == "Offboarded":
            departures.append(Departure(name, spec.get("dataPolicy", "Keep")))
            continue
        if not status.get("uid") or not status.get("gid"):
            waiting[name] = "waiting for the operator to allocate a uid"
            continue
        try:
            host_users.append(HostUser(
                name=name, uid=int(status["uid"]), gid=int(status["gid"]), display_name=spec.get("displayName", ""),
                shell=spec.get("shell", "/bin/bash"), ssh_keys=tuple(spec.get("sshKeys") or ()),
                groups=tuple(spec.get("groups") or ()), locked=state == "Suspended",
                kubeconfig=kubeconfigs.get(name) if state == "Active" else None))
        except UnsafeName as err:
            invalid[f"GPUUser/{name}"] = str(err)
    trees = []
    # two trees on one path would fight over its owner and ACLs on every pass: the first one keeps it
    conflicts = tree_conflicts({"SharedCache": caches, "ModelStore": stores})
    for kind, objs, tree_kind in (("SharedCache", caches, "cache"), ("ModelStore", stores, "models")):
        for obj in sorted(objs, key=lambda o: o["metadata"]["name"]):
            spec = obj.get("spec") or {}
            if (kind, obj["metadata"]["name"]) in conflicts:
                invalid[f"{kind}/{obj['metadata']['name']}"] = conflicts[(kind, obj["metadata"]["name"])]
                continue
            try:
                trees.append(SharedTree(
                    obj["metadata"]["name"], tree_kind, spec.get("type", "custom"), spec.get("path", ""),
                    tuple((e["name"], e.get("value", "")) for e in spec.get("env") or ()),
                    _members(spec.get("writers")), _members(spec.get("readers"))))
            except (UnsafeName, KeyError) as err:
                invalid[f"{kind}/{obj['metadata']['name']}"] = str(err)
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


def merged_nodes(current: list[dict], node: str, entry: dict, now: dt.datetime) -> list[dict] | None:
    """The status.nodes list with this node's entry replaced, or None when nothing but the time would change."""
    old = next((n for n in current if n.get("node") == node), None)
    if old is not None and {k: v for k, v in old.items() if k != "lastSync"} == entry:
        return None
    stamped = entry | {"lastSync": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    return sorted([n for n in current if n.get("node") != node] + [stamped], key=lambda n: n.get("node", ""))


# ---- SharedCache / ModelStore: one entry per node, the top level derived from all of them --------------

def tree_node_entry(node: str, problems: list[str], place: str, size: int | None, disk_alert: str,
                    disk_message: str, last_cleanup: dict | None) -> dict:
    """This node's entry in a SharedCache's or ModelStore's status.nodes."""
    fallback = any(ACL_FALLBACK in p for p in problems)
    entry = {"node": node, "state": "Failed" if any(ACL_FALLBACK not in p for p in problems) else "Ready",
             "message": ("; ".join(problems) or f"{place} in place")[:1000],
             "aclSupported": not fallback, "diskAlert": disk_alert, "diskMessage": disk_message}
    if size is not None:
        entry["sizeBytes"] = size
    if last_cleanup:
        entry["lastCleanup"] = {k: v for k, v in last_cleanup.items() if v is not None}
    return entry


def tree_status(current: dict, node: str, entry: dict, generation: int | None, now: dt.datetime) -> dict | None:
    """The status to write for a shared tree once this node's entry is in: every node's entry and the top level
    derived from them all; None when nothing but this node's lastSync would change."""
    nodes = merged_nodes(current.get("nodes") or [], node, entry, now)
    status = {"nodes": current.get("nodes") or [] if nodes is None else nodes}
    status |= tree_summary(status["nodes"], current.get("conditions") or [], now)
    if generation is not None:
        status["observedGeneration"] = generation
    if nodes is None and all(current.get(key) == value for key, value in status.items() if key != "nodes"):
        return None
    return status
