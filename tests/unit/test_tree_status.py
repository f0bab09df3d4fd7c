"""A shared tree's status when several node agents report on it: each node keeps its own entry, and the
top level is the same whichever node wrote last."""

from __future__ import annotations

import datetime as dt

from labkeeper.agent import desired
from labkeeper.api.resources import LastCleanup, SharedCache, TreeNodeState, TreeStatus, wire

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=1)
FS = "data filesystem 23% full"


def entry(node: str, problems: tuple[str, ...] = (), size: int | None = 4096, alert: str = "OK",
          cleanup: dict | None = None) -> TreeNodeState:
    return desired.tree_node_entry(node, list(problems), "/data/cache/pip", size, alert, f"{size} bytes, {FS}",
                                   LastCleanup.model_validate(cleanup) if cleanup else None)


def write(current: dict, node: str, mine: TreeNodeState, generation: int, now: dt.datetime) -> dict | None:
    """The status node `node` writes over `current` (both as the API holds them), None when it writes nothing."""
    status = desired.tree_status(TreeStatus.model_validate(current), node, mine, generation, now)
    return None if status is None else wire(status)


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_failing_node_fails_the_tree_whichever_node_wrote_last():
    status = write({}, "node-b", entry("node-b", ("cache/pip: [Errno 40] symlink",)), 3, NOW)
    status = write(status, "node-a", entry("node-a"), 3, NOW)
    assert [(n["node"], n["state"]) for n in status["nodes"]] == [("node-a", "Ready"), ("node-b", "Failed")]
    assert status["phase"] == "Failed" and status["observedGeneration"] == 3
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Problem")
    assert ready["message"] == "node-b: cache/pip: [Errno 40] symlink"
    SharedCache.model_validate({"spec": {"type": "pip", "path": "cache/pip"}, "status": status})

    # node-a's resync changes nothing but its lastSync: no write, and no way back to Ready
    assert write(status, "node-a", entry("node-a"), 3, LATER) is None
    healed = write(status, "node-b", entry("node-b"), 3, LATER)
    assert healed["phase"] == "Ready" and conditions(healed)["Ready"]["status"] == "True"
    assert conditions(healed)["Ready"]["message"] == \
        "node-a: /data/cache/pip in place; node-b: /data/cache/pip in place"
    assert conditions(healed)["Ready"]["lastTransitionTime"] == "2026-03-01T12:01:00Z"
    assert conditions(healed)["AclSupported"]["lastTransitionTime"] == "2026-03-01T12:00:00Z", "unchanged: kept"


def test_a_node_without_acls_is_named_and_still_ready():
    fallback = "the data filesystem has no ACL support: falling back to setgid 2775 and umask 002"
    status = write({}, "node-a", entry("node-a"), 1, NOW)
    status = write(status, "node-b", entry("node-b", (fallback,)), 1, NOW)
    acl = conditions(status)["AclSupported"]
    assert (acl["status"], acl["reason"]) == ("False", "SetgidFallback") and "on node-b:" in acl["message"]
    assert status["phase"] == "Ready" and conditions(status)["Ready"]["status"] == "True"
    both = write(status, "node-b", entry("node-b", (fallback, "cache/pip: Permission denied")), 1, NOW)
    assert both["phase"] == "Failed", "a fallback beside a real problem does not hide it"


def test_the_worst_disk_alert_names_its_node_and_the_size_is_the_largest_copy():
    status = write({}, "node-a", entry("node-a", size=900, alert="Critical"), 1, NOW)
    status = write(status, "node-b", entry("node-b", size=2000, alert="Warning"), 1, NOW)
    status = write(status, "node-c", entry("node-c", size=None), 1, NOW)
    disk = conditions(status)["DiskAlert"]
    assert (disk["status"], disk["reason"]) == ("True", "Critical")
    assert disk["message"].startswith(f"node-a: Critical, 900 bytes, {FS}; node-b: Warning")
    assert status["sizeBytes"] == 2000
    assert status["size"] == "2Ki", "kubectl get shows the size column from status.size"
    assert "sizeBytes" not in status["nodes"][2], "node-c has not measured yet"


def test_each_node_keeps_its_own_cleanup_and_the_top_level_shows_the_latest():
    first = {"time": "2026-03-01T11:00:00Z", "freedBytes": 10, "removedFiles": 1, "reason": "1 old",
             "request": "r1"}
    second = first | {"time": "2026-03-01T11:30:00Z", "freedBytes": 20}
    status = write({}, "node-a", entry("node-a", cleanup=first), 1, NOW)
    status = write(status, "node-b", entry("node-b", cleanup=second), 1, NOW)
    assert status["lastCleanup"] == second | {"node": "node-b"}
    assert status["nodes"][0]["lastCleanup"] == first
    assert write(status, "node-a", entry("node-a", cleanup=first), 1, LATER) is None


def test_a_top_level_left_by_an_older_agent_is_rewritten_from_the_nodes():
    status = write({}, "node-a", entry("node-a"), 1, NOW)
    clobbered = status | {"phase": "Failed"}
    assert write(clobbered, "node-a", entry("node-a"), 1, LATER)["phase"] == "Ready"
    assert write(status, "node-a", entry("node-a"), 2, LATER)["observedGeneration"] == 2
