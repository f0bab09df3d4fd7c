"""Per-node status of GPUUsers, SharedCaches and ModelStores: each node's agent writes its own entry in
status.nodes (and, on a GPUUser, its own finalizer); the top level of a shared tree is derived from all entries.
A node removed from the cluster leaves entries and a finalizer that no agent will ever update or remove, so the
operator prunes those of nodes that no longer exist and derives the top level again (controller/nodes.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

from labkeeper.api.conditions import condition
from labkeeper.api.units import format_size

__all__ = ["ACL_FALLBACK", "AGENT_FINALIZER_PREFIX", "ALERT_RANK", "agent_finalizer", "stale_finalizers",
           "tree_summary"]

AGENT_FINALIZER_PREFIX = "labkeeper.io/agent-"
ACL_FALLBACK = "no ACL support"  # how shared_trees words the setgid fallback: a note in the status, not a failure
ALERT_RANK = {"OK": 0, "Warning": 1, "Critical": 2}


def agent_finalizer(node: str) -> str:
    """The finalizer a node's agent keeps on a GPUUser until her data policy is done on that node."""
    return f"{AGENT_FINALIZER_PREFIX}{node}"[:63 + len("labkeeper.io/")]


def stale_finalizers(finalizers: list[str], nodes: Collection[str]) -> list[str]:
    """The agent finalizers of nodes that no longer exist (a finalizer keeps at most 63 characters of a name)."""
    live = {agent_finalizer(n) for n in nodes}
    return [f for f in finalizers if f.startswith(AGENT_FINALIZER_PREFIX) and f not in live]


def tree_summary(nodes: list[dict[str, Any]], previous: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """phase, sizeBytes, lastCleanup and conditions of a shared tree from every node's entry, so that they read
    the same whichever node's agent wrote last."""
    failed = [n for n in nodes if n.get("state") == "Failed"]
    fallback = [n.get("node", "?") for n in nodes if n.get("aclSupported") is False]
    ranked = sorted(nodes, key=lambda n: (-ALERT_RANK.get(n.get("diskAlert") or "OK", 0), n.get("node", "")))
    worst = (ranked[0].get("diskAlert") or "OK") if ranked else "OK"
    summary: dict[str, Any] = {"phase": "Failed" if failed else "Ready"}
    sizes = [n["sizeBytes"] for n in nodes if n.get("sizeBytes") is not None]
    if sizes:
        # one figure for the tree: on shared storage every node measures the same files, on local disks the
        # largest copy is the one nearest its limit
        summary["sizeBytes"] = max(sizes)
        summary["size"] = format_size(summary["sizeBytes"])  # what `kubectl get sharedcaches` shows
    cleaned = [n for n in nodes if n.get("lastCleanup")]
    if cleaned:
        latest = max(cleaned, key=lambda n: str(n["lastCleanup"].get("time") or ""))
        summary["lastCleanup"] = latest["lastCleanup"] | {"node": latest.get("node")}
    summary["conditions"] = [
        condition("Ready", not failed, "Problem" if failed else "Provisioned",
                  _joined(failed if failed else nodes, lambda n: n.get("message", "")), previous, now),
        condition("AclSupported", not fallback, "SetgidFallback" if fallback else "Acl",
                  f"no ACL support on {', '.join(fallback)}: setgid 2775 and umask 002 only" if fallback
                  else "no node reported a filesystem without ACL support", previous, now),
        condition("DiskAlert", worst != "OK", worst,
                  _joined(ranked, lambda n: f"{n.get('diskAlert') or 'OK'}, {n.get('diskMessage', '')}"),
                  previous, now),
    ]
    return summary


def _joined(nodes: list[dict[str, Any]], text: Callable[[dict[str, Any]], str]) -> str:
    return "; ".join(f"{n.get('node', '?')}: {text(n)}" for n in nodes)[:4000]
