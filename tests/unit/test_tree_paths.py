"""Two SharedCaches or ModelStores on one directory: the API cannot refuse the second (no rule at apply sees two
objects), so the first keeps the path, the later one is left out by the operator and every agent alike and
told why, and no workspace pod ever carries a mountPath or volume name that the API would refuse."""

from __future__ import annotations

import re

from labkeeper.agent import desired
from labkeeper.api.resources import SharedCache
from labkeeper.api.trees import tree_conflicts
from labkeeper.render.pod import Mount, PodInputs, workspace_pod

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def tree(name: str, path: str, created: str = "2026-12-01T10:00:00Z", **spec) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"type": "pip", "path": path, **spec}}


def test_the_tree_created_first_keeps_its_path_and_a_later_one_on_it_is_told_whose_it_is():
    first = tree("zeta", "cache/pip", "2026-12-01T10:00:00Z")
    second = tree("alpha", "cache/pip", "2026-12-01T10:05:00Z")
    conflicts = tree_conflicts({"SharedCache": [second, first], "ModelStore": []})
    assert list(conflicts) == [("SharedCache", "alpha")]
    assert conflicts[("SharedCache", "alpha")].startswith(
        "SharedCache alpha: spec.path 'cache/pip' is already the path of SharedCache zeta ('cache/pip'), which was "
        "there first")


def test_a_tree_inside_another_or_holding_one_is_left_out_across_kinds_and_ties_go_by_kind_then_name():
    hub = tree("hub", "models/huggingface")
    inner = tree("inner", "models/huggingface/hub/")
    outer = tree("outer", "models", "2026-12-02T00:00:00Z")
    conflicts = tree_conflicts({"SharedCache": [inner], "ModelStore": [hub, outer]})
    # same creation second: ModelStore before SharedCache ("M" < "S"), so the store keeps models/huggingface
    assert "lies inside the path of ModelStore hub" in conflicts[("SharedCache", "inner")]
    assert "'models' holds the path of ModelStore hub" in conflicts[("ModelStore", "outer")]
    assert ("ModelStore", "hub") not in conflicts


def test_a_tree_in_labkeepers_own_directories_is_left_out():
    conflicts = tree_conflicts({"SharedCache": [tree("sneaky", "apps/uv-0.5.11"), tree("homes", "users")],
                                "ModelStore": []})
    assert "lies in the agent's own apps/ tree" in conflicts[("SharedCache", "sneaky")]
    assert ("SharedCache", "homes") in conflicts


def test_the_agent_provisions_only_the_first_tree_on_a_path_and_reports_the_other_as_invalid():
    first, second = tree("pip", "cache/pip"), tree("pip2", "cache/pip", "2026-12-01T11:00:00Z")
    want = desired.desired_state([], [SharedCache.model_validate(second), SharedCache.model_validate(first)], [],
                                 {}, 2000)
    assert [t.name for t in want.lab.trees] == ["pip"]
    assert "is already the path of SharedCache pip" in want.invalid["SharedCache/pip2"]


def test_tree_volume_names_are_valid_and_distinct_for_long_and_dotted_names():
    long_a, long_b = "a" * 80 + "-one", "a" * 80 + "-two"
    names = ["pip", "pip.cache", "pip-cache", long_a, long_b]
    inputs = PodInputs(
        workspace="train", namespace="lab-alice", owner={}, username="alice", uid=20001, gid=20001,
        supplemental_gids=[2000], home_host_path="/data/users/alice", image="busybox",
        caches=tuple(Mount(n, f"/data/cache/{i}", (), True) for i, n in enumerate(names)))
    pod = workspace_pod(inputs)
    volumes = [v["name"] for v in pod["spec"]["volumes"] if v["name"].startswith("cache-")]
    assert len(volumes) == len(set(volumes)) == len(names)
    assert all(len(v) <= 63 and DNS_LABEL.match(v) for v in volumes), volumes
    assert volumes[0] == "cache-pip" and volumes[2] == "cache-pip-cache"  # plain names stay as they were
    mounts = [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]]
    assert len(mounts) == len(set(mounts))
