"""The lab policy: DS01's defaults, overrides merged field by field, and a broken policy explained."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from labkeeper.api.policy import (
    LabPolicy,
    PolicyError,
    effective_limits,
    gpu_equivalents,
    load_policy,
    policy_configmap,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def example_policy_text() -> str:
    configmap = yaml.safe_load((REPO_ROOT / "examples" / "policy.yaml").read_text())
    assert (configmap["kind"], configmap["metadata"]) == ("ConfigMap",
                                                         {"name": "labkeeper-policy", "namespace": "labkeeper-system"})
    return configmap["data"]["policy.yaml"]


def values(limits) -> dict:
    return {name: item.value for name, item in limits.items()}


@pytest.mark.parametrize(("tier", "expected"), [
    ("student", {"maxGpuEquivalents": 2, "cpu": "32", "memory": "32Gi", "maxWorkspaces": 3,
                 "idleTimeout": "30m", "maxRuntime": "24h"}),
    ("researcher", {"maxGpuEquivalents": 4, "cpu": "48", "memory": "64Gi", "maxWorkspaces": 5,
                    "idleTimeout": "1h", "maxRuntime": "48h"}),
    ("faculty", {"maxGpuEquivalents": 4, "cpu": "64", "memory": "128Gi", "maxWorkspaces": 5,
                 "idleTimeout": "2h", "maxRuntime": "72h"}),
])
def test_the_built_in_and_the_example_policy_carry_ds01s_table(tier, expected):
    for policy in (LabPolicy(), load_policy(example_policy_text())):
        got = values(policy.effective_limits("someone", tier))
        assert {k: got[k] for k in expected} == expected


def test_the_example_policy_is_the_built_in_one():
    assert load_policy(example_policy_text()) == LabPolicy()


def test_ds01_durations_and_weights_are_parsed_once():
    policy = LabPolicy()
    assert policy.gpu_hold_after_stop == dt.timedelta(minutes=15)
    assert policy.stopped_retention == dt.timedelta(minutes=30)
    assert policy.keep_alive_max == dt.timedelta(hours=24)
    assert policy.termination_grace == dt.timedelta(seconds=60)
    assert policy.warnings.idle == [0.8, 0.95] and policy.warnings.runtime == [0.75, 0.9]
    assert policy.gpu_weights["3g.40gb"] == pytest.approx(3 / 7)
    assert (policy.uid_range.start, policy.lab_users_gid, policy.runtime_class_name) == (20000, 2000, "nvidia")


def test_an_override_of_gpu_equivalents_keeps_the_tiers_memory_and_says_where_each_came_from():
    policy = LabPolicy()
    limits = effective_limits(policy, "alice", "researcher", {"maxGpuEquivalents": 1})
    assert limits["maxGpuEquivalents"] == (1, "override")
    assert limits["memory"] == ("64Gi", "tier")
    assert limits["idleTimeout"] == ("1h", "tier")


def test_a_tier_that_names_only_some_limits_takes_the_rest_from_the_defaults():
    policy = load_policy("tiers:\n  student: {priority: 10}\n  guest:\n    limits: {maxWorkspaces: 1}\n"
                         "    priority: 5\ndefaultTier: student\n")
    limits = policy.effective_limits("visitor", "guest")
    assert limits["maxWorkspaces"] == (1, "tier")
    assert limits["memory"] == ("32Gi", "default")


def test_the_policy_users_section_and_the_gpuuser_spec_both_override_and_the_spec_wins():
    policy = load_policy("users:\n  bob: {maxGpuEquivalents: 3, maxRuntime: 96h}\n")
    limits = policy.effective_limits("bob", "student", {"maxGpuEquivalents": 1})
    assert limits["maxGpuEquivalents"] == (1, "override")
    assert limits["maxRuntime"] == ("96h", "override")
    assert limits["cpu"] == ("32", "default")
    assert policy.effective_limits("carol", "student")["maxRuntime"] == ("24h", "default")


def test_a_tier_may_write_its_limits_flat_or_under_limits_but_not_both():
    flat = load_policy("tiers:\n  student: {maxGpuEquivalents: 1, priority: 10}\n")
    nested = load_policy("tiers:\n  student:\n    limits: {maxGpuEquivalents: 1}\n    priority: 10\n")
    assert flat == nested
    assert nested.tiers["student"].limits.max_gpu_equivalents == 1
    with pytest.raises(PolicyError, match="maxGpuEquivalents set both on the tier and under its limits"):
        load_policy("tiers:\n  student:\n    maxGpuEquivalents: 2\n    limits: {maxGpuEquivalents: 1}\n")


def test_allowed_profiles_and_images_come_from_the_tier():
    policy = load_policy("tiers:\n  student:\n    allowedProfiles: [1g.10gb]\n    allowedImages: ['lab-images/*']\n")
    limits = policy.effective_limits("alice", "student")
    assert limits["allowedProfiles"] == (["1g.10gb"], "tier")
    assert limits["allowedImages"] == (["lab-images/*"], "tier")
    assert policy.effective_limits("alice", "faculty")["allowedProfiles"].source == "default"


@pytest.mark.parametrize(("text", "says"), [
    ("tiers:\n  student:\n    limits:\n      maxGpuEquivalents: -3\n", "tiers.student.maxGpuEquivalents"),
    ("defaults: {memory: lots}\n", "defaults.memory"),
    ("defaults: {idleTimeout: half an hour}\n", "'half an hour' is not a duration"),
    ("gpuWeights: {9g.90gb: 1}\n", "unknown profile '9g.90gb'; valid: 1g.10gb"),
    ("gpuWeights: {full: 0}\n", "gpuWeights.full = 0.0 must be above 0"),
    ("holdPriority: 5\n", "holdPriority 5 must be above tier"),
    ("labUsersGid: 25000\n", "labUsersGid 25000 lies inside uidRange 20000-29999"),
    ("keepAliveMax: 200h\n", "keepAliveMax 200h is above the Workspace CRD's ceiling of 168h"),
    ("warnings: {idle: [80]}\n", "warning point 80.0 must be a fraction between 0 and 1"),
    ("uidRange: {start: 30000, end: 29999}\n", "uidRange.end 29999 is below uidRange.start 30000"),
    ("defaultTier: staff\n", "defaultTier 'staff' is not one of the tiers"),
    ("users:\n  Root: {cpu: '1'}\n", "username 'Root' is not valid"),
    ("idelTimeout: 30m\n", "idelTimeout: Extra inputs are not permitted"),
    # once accepted and silently ignored: a tier's class is always labkeeper-<tier>
    ("tiers:\n  student: {priorityClassName: vip}\n", "tiers.student.priorityClassName: Extra inputs are not permitted"),
    ("- a list\n", "must be a mapping"),
    ("tiers: [\n", "is not valid YAML"),
])
def test_a_broken_policy_is_refused_naming_the_field_and_value(text, says):
    with pytest.raises(PolicyError, match="ConfigMap labkeeper-system/labkeeper-policy") as caught:
        load_policy(text)
    assert says in str(caught.value)


def test_a_policy_round_trips_through_its_configmap():
    policy = load_policy("users:\n  bob: {maxGpuEquivalents: 3}\ngpuHoldAfterStop: 5m\n")
    configmap = policy_configmap(policy)
    again = load_policy(configmap["data"]["policy.yaml"])
    assert again == policy
    assert yaml.safe_load(configmap["data"]["policy.yaml"])["gpuHoldAfterStop"] == "5m"


@pytest.mark.parametrize(("profile", "count", "equivalents"), [
    ("1g.10gb", 7, 1.0), ("3g.40gb", 1, 3 / 7), ("full", 2, 2.0), ("7g.80gb", 1, 1.0), ("none", 1, 0.0),
])
def test_gpu_equivalents_are_weighted_by_profile(profile, count, equivalents):
    assert gpu_equivalents(profile, count, LabPolicy()) == pytest.approx(equivalents)


def test_gpu_weights_may_be_changed_in_the_policy():
    policy = load_policy("gpuWeights: {1g.10gb: 0.125, full: 1}\n")
    assert gpu_equivalents("1g.10gb", 2, policy) == pytest.approx(0.25)
