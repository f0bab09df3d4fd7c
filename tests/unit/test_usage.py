"""GPUUser.status.usage from her pods and workspaces: devices still held count, pods on their way out or
finished do not, and a device held after a stop counts until its hold ends."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.controller.usage import HoldSightings, usage_of

NOW = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)

WEIGHTS = {"1g.10gb": 1 / 7, "3g.40gb": 3 / 7, "full": 1.0}


def pod(role: str, limits: dict, *, terminating: bool = False, phase: str = "Running", workspace: str = "w") -> dict:
    meta = {"labels": {"labkeeper.io/role": role, "labkeeper.io/workspace": workspace}}
    if terminating:
        meta["deletionTimestamp"] = "2026-03-01T09:00:00Z"
    return {"metadata": meta, "spec": {"containers": [{"resources": {"limits": limits}}]}, "status": {"phase": phase}}


def test_two_full_gpus_are_two_equivalents_in_two_workspaces():
    pods = [pod("workspace", {"nvidia.com/gpu": "1"}), pod("workspace", {"nvidia.com/gpu": "1", "cpu": "2"})]
    assert usage_of(pods, [], WEIGHTS, NOW) == {"gpuEquivalents": 2.0, "workspaces": 2}


def stopped(name: str, held_for: dt.timedelta) -> dict:
    return {"metadata": {"name": name, "namespace": "lab-alice"},
            "status": {"phase": "Stopped", "holdNode": "gpu-1", "holdResource": "nvidia.com/mig-1g.10gb",
                       "holdCount": 1, "holdUntil": (NOW + held_for).strftime("%Y-%m-%dT%H:%M:%SZ")}}


def test_a_held_device_counts_as_gpus_in_use_but_not_as_a_running_workspace_until_the_hold_ends():
    pods = [pod("workspace", {"nvidia.com/mig-3g.40gb": "1"}, workspace="big")]
    held = [stopped("small", dt.timedelta(minutes=5))]
    assert usage_of(pods, held, WEIGHTS, NOW) == {"gpuEquivalents": round(4 / 7, 4), "workspaces": 1}
    expired = [stopped("small", -dt.timedelta(seconds=1))]
    assert usage_of(pods, expired, WEIGHTS, NOW) == {"gpuEquivalents": round(3 / 7, 4), "workspaces": 1}


def test_terminating_and_finished_pods_hold_nothing():
    pods = [pod("workspace", {"nvidia.com/gpu": "1"}, terminating=True),
            pod("workspace", {"nvidia.com/gpu": "1"}, phase="Failed"),
            pod("workspace", {"cpu": "1"}, phase="Pending")]
    assert usage_of(pods, [], WEIGHTS, NOW) == {"gpuEquivalents": 0.0, "workspaces": 1}


HELD = {"holdNode": "gpu-1", "holdResource": "nvidia.com/mig-1g.10gb", "holdCount": 1,
        "holdUntil": "2026-03-01T10:00:00Z"}


@pytest.mark.parametrize("sightings, needs_pass", [
    ([{"phase": "Pending"}], [True]),  # first sight: her usage is recounted
    ([{"phase": "Pending"}, {"phase": "Pending", "queue": {"position": 3}}], [True, False]),  # a queue place moved
    ([{"phase": "Running"}, {"phase": "Stopped", **HELD}], [True, True]),  # a hold recorded at a stop
    ([{"phase": "Stopped", **HELD}, {"phase": "Stopped", **HELD, "message": "held"}], [True, False]),
    ([{"phase": "Stopped", **HELD}, {"phase": "Stopped", **HELD, "holdUntil": "2026-03-01T11:00:00Z"}],
     [True, True]),  # a hold extended
    ([{"phase": "Stopped", **HELD}, {"phase": "Stopped"}], [True, True]),  # a hold released
    ([{"phase": "Stopped", **HELD}, None], [True, True]),  # the Workspace deleted
    ([{"phase": "Pending"}, None, {"phase": "Pending"}], [True, True, True]),  # deleted, then made again
])
def test_a_workspace_event_costs_a_usage_pass_only_when_its_hold_changed(sightings, needs_pass):
    seen = HoldSightings()
    assert [seen.changed("lab-alice", "w", status) for status in sightings] == needs_pass
