"""The uid ledger: one ConfigMap whose every update is a compare-and-swap on its resourceVersion,
so two operators (or two racing creations) can never hand out the same uid, and a uid once
given is never given again, offboarded or not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from labkeeper.api.names import LABEL_MANAGED, MANAGED_BY
from labkeeper.kube.client import Kube, is_conflict

LEDGER_NAME = "labkeeper-uid-ledger"


class LedgerFull(RuntimeError):
    pass


@dataclass(frozen=True)
class UidRange:
    start: int
    end: int  # inclusive


def next_free(taken: set[int], uid_range: UidRange) -> int:
    # past the highest ever issued, so an offboarded user's uid is never reused
    candidate = max([uid_range.start - 1, *(u for u in taken if uid_range.start <= u <= uid_range.end)]) + 1
    while candidate in taken:
        candidate += 1
    if candidate > uid_range.end:
        raise LedgerFull(f"uid range {uid_range.start}-{uid_range.end} is exhausted; widen policy uidRange")
    return candidate


class UidLedger:
    def __init__(self, kube: Kube, namespace: str, uid_range: UidRange) -> None:
        self.kube = kube
        self.namespace = namespace
        self.range = uid_range

    def _load(self) -> dict[str, Any]:
        ledger = self.kube.get("ConfigMap", LEDGER_NAME, self.namespace)
        if ledger is None:
            try:
                ledger = self.kube.create({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": LEDGER_NAME, "namespace": self.namespace,
                                 "labels": {LABEL_MANAGED: MANAGED_BY}},
                    "data": {},
                })
            except ApiException as err:
                if not is_conflict(err):
                    raise
                ledger = self.kube.get("ConfigMap", LEDGER_NAME, self.namespace)
        if ledger is None:  # created and deleted again between two reads
            raise RuntimeError(f"ConfigMap {self.namespace}/{LEDGER_NAME} vanished while being created")
        return ledger

    def lookup(self, username: str) -> int | None:
        value = (self._load().get("data") or {}).get(username)
        return int(value) if value is not None else None

    def allocate(self, username: str, pinned: int | None = None) -> int:
        """The user's uid: the one already recorded, the pinned one, or the next free one."""
        for _attempt in range(50):
            ledger = self._load()
            data = dict(ledger.get("data") or {})
            if username in data:
                return int(data[username])
            taken = {int(v) for v in data.values()}
            if pinned is not None:
                if pinned in taken:
                    owner = next(k for k, v in data.items() if int(v) == pinned)
                    raise LedgerFull(f"GPUUser {username}: spec.uid {pinned} already belongs to {owner!r}")
                uid = pinned
            else:
                uid = next_free(taken, self.range)
            data[username] = str(uid)
            ledger["data"] = data
            try:
                self.kube.replace(ledger)  # carries resourceVersion: fails with 409 if anyone wrote meanwhile
                return uid
            except ApiException as err:
                if not is_conflict(err):
                    raise
        raise RuntimeError(f"GPUUser {username}: uid ledger kept changing under 50 attempts")
