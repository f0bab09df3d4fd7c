"""Nodes removed from the cluster: their agents' entries in GPUUser, SharedCache and ModelStore status.nodes and
their agent finalizers on GPUUsers would stay forever (no agent of theirs writes again), keeping a tree Failed for
a node that is gone and a departing user's GPUUser undeletable. Level-based: each sweep compares every object
with the Nodes that exist now; it runs at start and whenever a Node is deleted."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api.nodes import stale_finalizers, tree_summary
from labkeeper.api.trees import TREE_KINDS
from labkeeper.kube.client import Kube, is_conflict

log = logging.getLogger("labkeeper.operator.nodes")


@dataclass
class Pruned:
    entries: list[str] = field(default_factory=list)  # "GPUUser/alice: node-b"
    finalizers: list[str] = field(default_factory=list)
    retry: bool = False  # an object changed under a write: sweep again


class NodePruner:
    def __init__(self, kube: Kube, clock: Callable[[], dt.datetime]) -> None:
        self.kube, self.clock = kube, clock

    def sweep(self) -> Pruned:
        nodes = {n["metadata"]["name"] for n in self.kube.list("Node")}
        pruned = Pruned()
        for kind in ("GPUUser", *TREE_KINDS):
            for obj in self.kube.list(kind):
                try:
                    self._prune(kind, obj, nodes, pruned)
                except ApiException as err:
                    if err.status == 404:
                        continue
                    if not is_conflict(err):
                        raise
                    pruned.retry = True  # its agent or the operator wrote meanwhile: read it again next sweep
        if pruned.entries or pruned.finalizers:
            log.info("nodes gone: pruned %s; finalizers %s", pruned.entries, pruned.finalizers)
        return pruned

    def _prune(self, kind: str, obj: dict[str, Any], nodes: set[str], pruned: Pruned) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        name = meta["name"]
        entries = status.get("nodes") or []
        kept = [n for n in entries if n.get("node") in nodes]
        if len(kept) != len(entries):
            patch: dict[str, Any] = {"nodes": kept}
            if kind in TREE_KINDS:
                # the top level is derived from the entries: a Failed entry of a node that is gone fails nothing
                patch |= tree_summary(kept, status.get("conditions") or [], self.clock())
            obj = self.kube.patch(kind, name, {"metadata": {"resourceVersion": meta["resourceVersion"]},
                                               "status": patch}, subresource="status")
            meta = obj["metadata"]
            pruned.entries += [f"{kind}/{name}: {n.get('node')}" for n in entries if n not in kept]
        finalizers = meta.get("finalizers") or []
        stale = stale_finalizers(finalizers, nodes)
        if stale:
            self.kube.patch(kind, name, {"metadata": {"finalizers": [f for f in finalizers if f not in stale],
                                                      "resourceVersion": meta["resourceVersion"]}})
            pruned.finalizers += [f"{kind}/{name}: {f}" for f in stale]
