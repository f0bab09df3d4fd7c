"""A pass that raised, told where a person looks: Reconciled=False with the error on the object and a Warning
Event beside it, once per distinct error (its retries, backed off, say nothing new)."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api.conditions import RECONCILE_FAILED, RECONCILED, condition, find, with_condition
from labkeeper.kube.client import Kube, api_error_message


def record_failure(kube: Kube, kind: str, obj: dict[str, Any], err: Exception, now: dt.datetime) -> None:
    """Best effort: the API may be what failed, and the pass is retried anyway. A conflict (someone wrote the
    object first) and a 404 (it is gone) are no failure a person must read: the retry settles them."""
    if isinstance(err, ApiException) and err.status in (404, 409):
        return
    message = api_error_message(err) if isinstance(err, ApiException) else f"{type(err).__name__}: {err}"
    message = f"the last pass failed and is retried: {message}"[:1024]
    status = obj.get("status") or {}
    previous = find(status.get("conditions"), RECONCILED)
    if previous is not None and previous.get("status") == "False" and previous.get("message") == message:
        return
    failed = condition(RECONCILED, False, RECONCILE_FAILED, message, status.get("conditions") or [], now,
                       observed_generation=obj["metadata"].get("generation"))
    with contextlib.suppress(Exception):
        kube.event(obj, RECONCILE_FAILED, message, type_="Warning")
        kube.patch_status(kind, obj, {"conditions": with_condition(status.get("conditions"), failed)})
