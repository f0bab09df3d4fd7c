"""What a node's agent writes about each object after a host pass, decided from what it read: her finalizer, the
Event and her node entry; a tree's size against its limit; whether a cache is due a cleanup. Tables, no host."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from labkeeper.agent import desired
from labkeeper.agent.desired import PostEvent, SetFinalizers, WriteNodes
from labkeeper.agent.disk import FilesystemUsage
from labkeeper.agent.model import Report
from labkeeper.agent.recovery import HostResult
from labkeeper.api.names import CLEAN_ANNOTATION
from labkeeper.api.resources import GPUUser, LastCleanup, ModelStore, SharedCache, TreeNodeState

NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
OURS = "labkeeper.io/agent-node-a"
THEIRS = "labkeeper.io/agent-node-b"
PROVISIONED = {"node": "node-a", "state": "Provisioned", "message": "account, home and keys in place",
               "homeBytes": 4096, "lastSync": "2026-12-01T08:00:00Z"}


def alice(state: str = "Active", *, finalizers: tuple[str, ...] = (OURS,), leaving: bool = False,
          nodes: tuple[dict[str, Any], ...] = (), uid: int | None = 20001) -> GPUUser:
    meta: dict[str, Any] = {"name": "alice", "resourceVersion": "9", "finalizers": list(finalizers)}
    if leaving:
        meta["deletionTimestamp"] = "2026-12-01T08:59:00Z"
    return GPUUser.model_validate({"metadata": meta, "spec": {"state": state, "dataPolicy": "Archive"},
                                   "status": {"uid": uid, "gid": uid, "nodes": list(nodes)}})


def decide(user: GPUUser, problems: tuple[str, ...] = (), home_bytes: int | None = 4096) -> list[Any]:
    want = desired.desired_state([user], [], [], {}, 2000)
    result = HostResult(Report(problems={"alice": list(problems)} if problems else {}))
    return desired.user_actions(user, "node-a", want, result, home_bytes, NOW)


def events(actions: list[Any]) -> list[tuple[str, bool]]:
    return [(a.reason, a.warning) for a in actions if isinstance(a, PostEvent)]


def entry(actions: list[Any]) -> dict[str, Any] | None:
    written = [a for a in actions if isinstance(a, WriteNodes)]
    return written[0].nodes[0].model_dump(by_alias=True, exclude_none=True) if written else None


@pytest.mark.parametrize(("user", "problems", "finalizers", "said", "state"), [
    # a new user: this node's finalizer first, then what the pass did for her
    (alice(finalizers=(THEIRS,)), (), (THEIRS, OURS), [("HostProvisioned", False)], "Provisioned"),
    (alice(), ("home: [Errno 28] No space left on device",), None, [("HostFailed", True)], "Failed"),
    (alice("Suspended"), (), None, [("HostProvisioned", False)], "Provisioned"),
    (alice(uid=None), (), None, [("HostWaiting", False)], "Waiting"),
    (alice("Offboarded"), (), None, [("HostOffboarded", False)], "Offboarded"),
    (alice("Offboarded"), ("archive: the home changed",), None, [("HostFailed", True)], "Failed"),
])
def test_a_staying_users_finalizer_event_and_node_entry(user, problems, finalizers, said, state):
    actions = decide(user, problems)
    assert [a.finalizers for a in actions if isinstance(a, SetFinalizers)] == ([finalizers] if finalizers else [])
    assert events(actions) == said
    written = entry(actions)
    assert written is not None and written["state"] == state and written["lastSync"] == NOW
    assert ("homeBytes" in written) == (user.spec.state != "Offboarded"), "an offboarded home is not measured"


@pytest.mark.parametrize(("finalizers", "problems", "actions"), [
    ((OURS, THEIRS), (), [PostEvent("Offboarded", "node-a: account removed, data policy Archive applied"),
                          SetFinalizers((THEIRS,))]),
    ((OURS,), ("archive: [Errno 28] No space left on device",),
     [PostEvent("OffboardingFailed", "node-a: archive: [Errno 28] No space left on device", warning=True)]),
    ((THEIRS,), (), []),  # done here before: the other node's finalizer is not this node's to remove
])
def test_a_leaving_user_keeps_this_nodes_finalizer_until_her_data_policy_is_done_here(finalizers, problems, actions):
    assert decide(alice(finalizers=finalizers, leaving=True), problems) == actions


def test_a_pass_that_changes_nothing_but_the_time_writes_no_entry():
    actions = decide(alice(nodes=(PROVISIONED,)))
    assert entry(actions) is None and events(actions) == [("HostProvisioned", False)]
    assert entry(decide(alice(nodes=(PROVISIONED,)), home_bytes=8192))["homeBytes"] == 8192


FS = FilesystemUsage(used=10, total=100)


def cache(**spec: Any) -> SharedCache:
    return SharedCache.model_validate({"metadata": {"name": "pip", "annotations": spec.pop("annotations", {})},
                                       "spec": {"type": "pip", "path": "cache/pip", **spec}})


@pytest.mark.parametrize(("tree", "measured", "reported", "fs", "expect"), [
    (cache(alerts={"sizeLimit": "1Ki"}), 512, None, FS, (512, 1024, "OK", "OK", "512 of 1024 bytes")),
    (cache(alerts={"sizeLimit": "1Ki"}), 900, None, FS, (900, 1024, "Warning", "Warning", "900 of 1024 bytes")),
    (cache(alerts={"sizeLimit": "1Ki", "warnPercent": 10, "criticalPercent": 50}), 600, None, FS,
     (600, 1024, "Critical", "Critical", "600 of 1024 bytes")),
    (cache(), 10 ** 12, None, FS, (10 ** 12, None, "OK", "OK", "1000000000000 bytes, no size limit")),
    # not measured since this agent started: its last reported figure stands
    (cache(alerts={"sizeLimit": "1Ki"}), None, 1000, FS, (1000, 1024, "Critical", "Critical", "1000 of 1024 bytes")),
    (cache(), None, None, FS, (None, None, "OK", "OK", "size not measured yet")),
    # a full data filesystem alerts every tree on it, whatever its own size
    (cache(), 1, None, FilesystemUsage(used=96, total=100), (1, None, "OK", "Critical", "1 bytes, no size limit")),
    (ModelStore.model_validate({"metadata": {"name": "hf"},
                                "spec": {"type": "huggingface", "path": "models/hf", "sizeAlert": "1Ki"}}),
     1000, None, FS, (1000, 1024, "Critical", "Critical", "1000 of 1024 bytes")),
])
def test_a_trees_size_against_its_limit_and_the_data_filesystem(tree, measured, reported, fs, expect):
    seen = desired.tree_disk(tree, TreeNodeState(node="node-a", size_bytes=reported), measured, fs)
    assert (seen.size, seen.limit, seen.level, seen.alert, seen.measured) == expect


def cleaned(at: dt.datetime, request: str | None = None) -> LastCleanup:
    return LastCleanup(time=at, freed_bytes=1, removed_files=1, reason="1 old", request=request)


SCHEDULED = {"cleanup": {"maxAge": "7d", "maxSize": "1Gi", "schedule": "24h"}}


@pytest.mark.parametrize(("tree", "last", "due"), [
    (cache(**SCHEDULED), None, desired.Cleaning(dt.timedelta(days=7), 2 ** 30, None)),
    (cache(**SCHEDULED), cleaned(NOW - dt.timedelta(hours=23)), None),
    (cache(**SCHEDULED), cleaned(NOW - dt.timedelta(hours=24), "r1"), desired.Cleaning(dt.timedelta(days=7), 2 ** 30,
                                                                                        "r1")),
    (cache(cleanup={"schedule": "24h"}), None, None),  # a schedule with nothing to remove
    (cache(), None, None),
    # asked for with the annotation: due once per request on each node, with or without a schedule
    (cache(annotations={CLEAN_ANNOTATION: "r2"}), cleaned(NOW, "r1"), desired.Cleaning(None, None, "r2")),
    (cache(annotations={CLEAN_ANNOTATION: "r2"}, **SCHEDULED), cleaned(NOW, "r2"), None),
])
def test_a_cache_is_due_a_cleanup_on_request_or_by_its_schedule(tree, last, due):
    assert desired.cleanup_due(tree, last, NOW) == due


def test_the_newest_cleanup_counts_whether_the_status_or_this_agent_remembers_it():
    older, newer = cleaned(NOW - dt.timedelta(hours=2), "r1"), cleaned(NOW, "r2")
    assert desired.latest_cleanup(older, newer) == newer == desired.latest_cleanup(newer, older)
    assert desired.latest_cleanup(None, older) == older and desired.latest_cleanup(None, None) is None
