"""Leader election on a coordination.k8s.io Lease, so more than one operator replica is safe:
only the holder reconciles; a holder that cannot renew in time exits and its pod restarts."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from labkeeper.api.units import parse_time
from labkeeper.kube.client import Kube, is_conflict

log = logging.getLogger("labkeeper.leader")
LEASE_NAME = "labkeeper-operator"
# what the holder knew of the lab when it last renewed (controller/liveness.py KubeletLiveness.record), as JSON
RECORD_ANNOTATION = "labkeeper.io/watched"


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record_of(lease: dict[str, object]) -> dict[str, object] | None:
    meta = lease.get("metadata")
    text = ((meta.get("annotations") or {}) if isinstance(meta, dict) else {}).get(RECORD_ANNOTATION)
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class LeaderLease:
    def __init__(self, kube: Kube, namespace: str, identity: str, duration: float = 15.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self._stop = threading.Event()
        # what the holder before this process recorded, read when this one took the lease (None: nothing)
        self.previous: dict[str, object] | None = None
        self._taken = False
        # what this process records at each renewal; None keeps the record it found
        self.record: Callable[[], dict[str, object]] | None = None

    def _try_acquire(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        lease = self.kube.get("Lease", LEASE_NAME, self.namespace)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, int(self.duration)),
                "acquireTime": _stamp(now), "renewTime": _stamp(now)}
        try:
            if lease is None:
                self.kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                  "metadata": {"name": LEASE_NAME, "namespace": self.namespace}, "spec": spec})
                return True
            held = lease.get("spec") or {}
            if not self._taken:
                self.previous = _record_of(lease)
            renewed = parse_time(held.get("renewTime"))
            expired = renewed is None or now > renewed + dt.timedelta(seconds=held.get("leaseDurationSeconds") or 0)
            if held.get("holderIdentity") not in (None, "", self.identity) and not expired:
                return False
            if held.get("holderIdentity") == self.identity:
                spec["acquireTime"] = held.get("acquireTime") or spec["acquireTime"]
            lease["spec"] = {**held, **spec}
            if self.record is not None:  # only once this process holds it: a candidate's record would be thrown away
                meta = lease["metadata"]
                meta["annotations"] = {**(meta.get("annotations") or {}),
                                       RECORD_ANNOTATION: json.dumps(self.record(), sort_keys=True)}
            self.kube.replace(lease)  # carries resourceVersion: two candidates cannot both win
            self._taken = True
            return True
        except ApiException as err:
            if is_conflict(err):
                return False
            raise

    def acquire(self) -> None:
        """Blocks until this process holds the lease, then renews it in the background."""
        waited = False
        while not self._try_acquire():
            if not waited:
                log.info("another operator holds the lease %s/%s; waiting", self.namespace, LEASE_NAME)
                waited = True
            time.sleep(max(0.5, self.duration / 5))
        log.info("leader lease acquired by %s", self.identity)
        threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True).start()

    def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.duration / 3):
            try:
                if self._try_acquire():
                    last_ok = time.monotonic()
                    continue
            except Exception as err:  # a transient API error is retried until the lease would lapse
                log.warning("lease renewal failed: %s", err)
            if time.monotonic() - last_ok > self.duration * 0.8:
                log.error("lost the leader lease; exiting so that only one operator acts")
                os._exit(1)

    def release(self) -> None:
        self._stop.set()
