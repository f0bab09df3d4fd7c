"""Standard status conditions (type/status/reason/message/lastTransitionTime/observedGeneration), one way for
every writer, and the condition types and reasons the operator, the agent and labctl share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ACCESS_GRANTED", "HOST_PROVISIONED", "KEEP_ALIVE_CAPPED", "QUOTA_APPLIED", "READY", "RECONCILED",
    "RECONCILE_FAILED", "SCHEDULED", "WITHIN_QUOTA", "condition", "find", "with_condition",
]

# ---- condition types ------------------------------------------------------------------------------------
READY = "Ready"
SCHEDULED = "Scheduled"  # Workspace: its pod has a node
WITHIN_QUOTA = "WithinQuota"  # Workspace: within its user's GPU-equivalent cap (Unknown where not checked)
KEEP_ALIVE_CAPPED = "KeepAliveCapped"  # Workspace: a keep-alive asked for more than the policy's keepAliveMax
HOST_PROVISIONED = "HostProvisioned"  # GPUUser: every node agent has made her account and home
ACCESS_GRANTED = "AccessGranted"  # GPUUser: RoleBinding and kubeconfig in place
QUOTA_APPLIED = "QuotaApplied"  # GPUUser: her ResourceQuota is counted
RECONCILED = "Reconciled"  # False after a pass that failed (with its error), True again after the next that did not

RECONCILE_FAILED = "ReconcileFailed"  # the reason of Reconciled=False, and of the Warning Event beside it


def _status_text(status: bool | None) -> str:
    return "Unknown" if status is None else "True" if status else "False"


def condition(type_: str, status: bool | None, reason: str, message: str,
              previous: Iterable[Mapping[str, Any]] | None = None, now: dt.datetime | None = None, *,
              observed_generation: int | None = None) -> dict[str, Any]:
    """A standard condition; keeps lastTransitionTime when the status did not change. `status` None is Unknown:
    the truth is not known (not checked on this path, or not reported yet). With `observed_generation`, the
    generation of the spec the condition speaks of."""
    status_text = _status_text(status)
    for old in previous or []:
        if old.get("type") == type_ and old.get("status") == status_text:
            stamp = old.get("lastTransitionTime")
            break
    else:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {"type": type_, "status": status_text, "reason": reason, "message": message, "lastTransitionTime": stamp}
    if observed_generation is not None:
        out["observedGeneration"] = observed_generation
    return out


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def with_condition(conditions: Iterable[Mapping[str, Any]] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """The list with `new` in place of the condition of its type (appended when there was none); the others
    stay as they are, in their order."""
    out, placed = [], False
    for old in conditions or []:
        if old.get("type") == new["type"]:
            out.append(new)
            placed = True
        else:
            out.append(dict(old))
    if not placed:
        out.append(new)
    return out
