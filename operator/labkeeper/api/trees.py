"""Which SharedCache or ModelStore a path under the data root belongs to. Each object's spec.path is checked
at apply, but no rule at apply can see two objects at once, so two trees may claim one directory (or one may
lie inside another). The operator (which mounts trees into pods) and the agent (which provisions them on the
host) settle it by this one rule: the tree created first keeps the path, every later claimant is left out and
told why. A tree in one of the agent's own top-level directories is left out the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RESERVED_TOP_DIRS", "TREE_KINDS", "tree_conflicts"]

# subtrees of the data root that belong to the agent, never to a SharedCache or ModelStore
RESERVED_TOP_DIRS = frozenset({"users", "archive", "apps", ".labkeeper"})
TREE_KINDS = ("SharedCache", "ModelStore")


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in str(path).split("/") if p)


def _claim(obj: Any) -> tuple[str, str, str]:
    """(creationTimestamp, name, spec.path) of an object as the API sends it or as its api/ model."""
    if isinstance(obj, Mapping):
        return (obj["metadata"].get("creationTimestamp") or "", obj["metadata"]["name"],
                str((obj.get("spec") or {}).get("path", "")))
    return str(obj.metadata.get("creationTimestamp") or ""), str(obj.metadata["name"]), str(obj.spec.path)


def tree_conflicts(trees: Mapping[str, Iterable[Any]]) -> dict[tuple[str, str], str]:
    """(kind, name) → why that tree is left out, for every tree that may not have its path: {kind: objects},
    each a dict as the API sends it or a SharedCache / ModelStore model.

    Trees are taken in the order they were created (creationTimestamp, then kind, then name), so a new tree
    never takes a path from one already in use, and the operator and every agent reach the same answer."""
    claims = [(_claim(obj), kind) for kind, objs in trees.items() for obj in objs]
    ordered = sorted(claims, key=lambda item: (item[0][0], item[1], item[0][1]))
    claimed: list[tuple[tuple[str, ...], str, str, str]] = []  # (parts, kind, name, path) of each owner
    conflicts: dict[tuple[str, str], str] = {}
    for (_, name, path), kind in ordered:
        parts = _parts(path)
        if not parts:
            conflicts[(kind, name)] = f"{kind} {name}: spec.path {path!r} names no directory under the data root"
            continue
        if parts[0] in RESERVED_TOP_DIRS:
            conflicts[(kind, name)] = (f"{kind} {name}: spec.path {path!r} lies in the agent's own {parts[0]}/ "
                                       f"tree; use cache/... or models/...")
            continue
        owner = next((c for c in claimed if c[0][:len(parts)] == parts or parts[:len(c[0])] == c[0]), None)
        if owner is None:
            claimed.append((parts, kind, name, path))
            continue
        owner_parts, owner_kind, owner_name, owner_path = owner
        relation = ("is already" if owner_parts == parts else
                    "lies inside" if parts[:len(owner_parts)] == owner_parts else "holds")
        conflicts[(kind, name)] = (
            f"{kind} {name}: spec.path {path!r} {relation} the path of {owner_kind} {owner_name} "
            f"({owner_path!r}), which was there first; it is neither provisioned nor mounted. spec.path is "
            f"immutable: create the {kind} again with a path of its own")
    return conflicts
