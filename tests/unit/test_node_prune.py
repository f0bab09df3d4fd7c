"""Which agent finalizers belong to nodes that are gone, and the top level of a tree once a node's entry went."""

import datetime as dt

import pytest

from labkeeper.api.nodes import agent_finalizer, stale_finalizers, tree_summary

LONG = "n" * 70  # a node name longer than a finalizer keeps


@pytest.mark.parametrize("finalizers, nodes, stale", [
    (["labkeeper.io/agent-a", "labkeeper.io/agent-b", "labkeeper.io/finalizer"], {"a"}, ["labkeeper.io/agent-b"]),
    (["labkeeper.io/agent-a"], {"a", "b"}, []),
    # the finalizer of a long name is cut at 63 characters: it still belongs to that node
    ([agent_finalizer(LONG)], {LONG}, []),
    ([agent_finalizer(LONG)], {"a"}, [agent_finalizer(LONG)]),
    # other controllers' finalizers are never touched, even with no node at all
    (["labkeeper.io/kopf", "kubernetes"], set(), []),
])
def test_stale_agent_finalizers(finalizers, nodes, stale):
    assert stale_finalizers(finalizers, nodes) == stale


def test_a_tree_whose_failed_entry_went_is_ready():
    now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    ready = {"node": "a", "state": "Ready", "message": "/data/cache/pip in place", "diskAlert": "OK"}
    failed = {"node": "b", "state": "Failed", "message": "cache/pip is a symlink", "diskAlert": "OK"}
    before = tree_summary([ready, failed], [], now)
    assert before["phase"] == "Failed"
    after = tree_summary([ready], before["conditions"], now + dt.timedelta(minutes=1))
    assert after["phase"] == "Ready"
    assert next(c for c in after["conditions"] if c["type"] == "Ready")["message"] == "a: /data/cache/pip in place"
