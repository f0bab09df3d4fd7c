"""One spelling of GPU devices: the operator writes status.devices with it, the agent reads it back with it."""

from __future__ import annotations

from labkeeper.api.devices import device_list, entry_profiles, parse_device_entry, profile_of, resource_of


def test_each_profile_names_its_resource_and_back():
    for profile in ("1g.10gb", "3g.40gb", "7g.80gb", "full"):
        assert profile_of(resource_of(profile)) == profile
    assert resource_of("full") == "nvidia.com/gpu" and resource_of("2g.20gb") == "nvidia.com/mig-2g.20gb"


def test_what_the_operator_lists_from_a_pod_the_agent_reads_as_profiles():
    pod = {"spec": {"containers": [
        {"resources": {"limits": {"cpu": "2", "nvidia.com/mig-1g.10gb": "1"}}},
        {"resources": {"limits": {"nvidia.com/gpu": 2, "memory": "4Gi"}}}, {"name": "sidecar"}]}}
    listed = device_list(pod)
    assert listed == ["1 x nvidia.com/mig-1g.10gb", "2 x nvidia.com/gpu"]
    assert [parse_device_entry(e) for e in listed] == [(1, "nvidia.com/mig-1g.10gb"), (2, "nvidia.com/gpu")]
    assert entry_profiles(listed) == ("1g.10gb", "full")


def test_text_the_operator_did_not_write_names_no_device():
    for text in ("nvidia.com/gpu", "1 x cpu", "x x nvidia.com/gpu", "1 x nvidia.com/gpu extra", ""):
        assert parse_device_entry(text) is None
    assert entry_profiles(["1 x cpu", "1 x nvidia.com/mig-2g.20gb"]) == ("2g.20gb",)
