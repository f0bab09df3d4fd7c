"""A pass that raised is told on the object: Reconciled=False with the error and a Warning Event, once per error."""

from __future__ import annotations

import datetime as dt
from typing import Any

from labkeeper.controller.failures import record_failure

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


class Recorder:
    """Stands in for the client: keeps what would have been written."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []

    def event(self, obj: dict[str, Any], reason: str, message: str, *, type_: str = "Normal") -> None:
        self.events.append((reason, type_, message))

    def patch_status(self, kind: str, obj: dict[str, Any], desired: dict[str, Any], **_: Any) -> bool:
        self.patches.append(desired)
        obj["status"] = {**(obj.get("status") or {}), **desired}
        return True


def test_a_failed_pass_is_told_once_per_error_and_keeps_the_other_conditions():
    ready = {"type": "Ready", "status": "True", "reason": "PodRunning", "message": "", "lastTransitionTime": "x"}
    ws = {"kind": "Workspace", "metadata": {"name": "nb", "namespace": "lab-alice", "generation": 7},
          "status": {"conditions": [ready]}}
    kube = Recorder()
    record_failure(kube, "Workspace", ws, KeyError("uid"), T0)  # type: ignore[arg-type]
    assert kube.events == [("ReconcileFailed", "Warning", "the last pass failed and is retried: KeyError: 'uid'")]
    conditions = {c["type"]: c for c in ws["status"]["conditions"]}
    assert conditions["Ready"] == ready  # what the last good pass found stays
    assert conditions["Reconciled"]["status"] == "False" and conditions["Reconciled"]["observedGeneration"] == 7
    record_failure(kube, "Workspace", ws, KeyError("uid"), T0 + dt.timedelta(seconds=1))  # type: ignore[arg-type]
    assert len(kube.events) == 1 and len(kube.patches) == 1  # its retry says nothing new
    record_failure(kube, "Workspace", ws, ValueError("other"), T0)  # type: ignore[arg-type]
    assert len(kube.events) == 2 and "ValueError: other" in kube.events[-1][2]


def test_a_conflict_or_an_object_gone_is_retried_without_a_word():
    from kubernetes.client.exceptions import ApiException

    ws = {"kind": "Workspace", "metadata": {"name": "nb", "namespace": "lab-alice"}, "status": {}}
    kube = Recorder()
    for status in (404, 409):
        record_failure(kube, "Workspace", ws, ApiException(status=status, reason="x"), T0)  # type: ignore[arg-type]
    assert kube.events == [] and kube.patches == []
