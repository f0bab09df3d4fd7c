"""The leader Lease carries what its holder knew of the lab (controller/leader.py): the next holder reads what the
one before it recorded, and its own renewals record what it knows. A stand-in client holds the one Lease."""

from __future__ import annotations

import copy
import json
from typing import Any

from labkeeper.controller.leader import RECORD_ANNOTATION, LeaderLease


class OneLease:
    def __init__(self, lease: dict[str, Any] | None) -> None:
        self.lease = lease

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.lease = copy.deepcopy(obj)
        return obj

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.lease = copy.deepcopy(obj)
        return obj


def expired_lease(record: dict[str, Any] | None) -> dict[str, Any]:
    annotations = {RECORD_ANNOTATION: json.dumps(record)} if record is not None else {}
    return {"metadata": {"name": "labkeeper-operator", "annotations": annotations},
            "spec": {"holderIdentity": "old-1", "leaseDurationSeconds": 15, "renewTime": "2026-12-01T09:00:00.000000Z"}}


def test_the_next_holder_reads_the_record_of_the_one_before_and_renews_with_its_own():
    before = {"watchedUntil": "2026-12-01T08:59:58Z", "away": {"n2": "2026-12-01T08:50:00Z"}}
    kube = OneLease(expired_lease(before))
    lease = LeaderLease(kube, "labkeeper-system", "new-2")  # type: ignore[arg-type]
    assert lease._try_acquire()
    assert lease.previous == before
    assert json.loads(kube.lease["metadata"]["annotations"][RECORD_ANNOTATION]) == before  # kept until it knows
    lease.record = lambda: {"watchedUntil": "2026-12-01T09:10:00Z", "away": {}}
    assert lease._try_acquire()  # a renewal
    assert lease.previous == before  # what it found, not what it wrote
    assert json.loads(kube.lease["metadata"]["annotations"][RECORD_ANNOTATION]) == {
        "watchedUntil": "2026-12-01T09:10:00Z", "away": {}}


def test_no_record_or_an_unreadable_one_is_none():
    for lease in (expired_lease(None), {**expired_lease(None), "metadata": {"name": "labkeeper-operator",
                                                                            "annotations": {RECORD_ANNOTATION: "{"}}}):
        taker = LeaderLease(OneLease(lease), "labkeeper-system", "new-2")  # type: ignore[arg-type]
        assert taker._try_acquire() and taker.previous is None
    first = LeaderLease(OneLease(None), "labkeeper-system", "first")  # type: ignore[arg-type]
    assert first._try_acquire() and first.previous is None
