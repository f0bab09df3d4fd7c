"""Standard status conditions (type/status/reason/message/lastTransitionTime), one way for every writer."""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["condition"]


def condition(type_: str, status: bool, reason: str, message: str, previous: list[dict[str, Any]] | None = None,
              now: dt.datetime | None = None) -> dict[str, Any]:
    """A standard condition; keeps lastTransitionTime when the status did not change."""
    status_text = "True" if status else "False"
    for old in previous or []:
        if old.get("type") == type_ and old.get("status") == status_text:
            stamp = old.get("lastTransitionTime")
            break
    else:
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": type_, "status": status_text, "reason": reason, "message": message, "lastTransitionTime": stamp}
