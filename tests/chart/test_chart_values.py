"""A bad value stops `helm template` / `helm install` before anything is applied, and says which field."""

from __future__ import annotations

import copy

import pytest
import yaml
from chartlib import CHART

pytestmark = pytest.mark.unit

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def with_policy(**changes) -> dict:
    policy = copy.deepcopy(DEFAULTS["policy"])
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = policy
        for key in parents:
            node = node[key]
        node[leaf] = value
    return {"policy": policy}


def test_a_negative_gpu_equivalent_cap_is_refused_by_name(render_error):
    message = render_error(with_policy(defaults__maxGpuEquivalents=-1))
    assert "/policy/defaults/maxGpuEquivalents" in message


def test_a_negative_cap_on_one_tier_is_refused_by_name(render_error):
    message = render_error(with_policy(tiers__researcher__maxGpuEquivalents=-2))
    assert "/policy/tiers/researcher/maxGpuEquivalents" in message


def test_an_unknown_mig_profile_is_refused_by_name(render_error):
    message = render_error(with_policy(defaults__allowedProfiles=["1g.10gb", "5g.50gb"]))
    assert "/policy/defaults/allowedProfiles/1" in message
    assert "5g.50gb" in message or "1g.10gb" in message  # the offending value or the valid ones


def test_a_weight_for_an_unknown_mig_profile_is_refused(render_error):
    weights = {**DEFAULTS["policy"]["gpuWeights"], "9g.90gb": 1.0}
    message = render_error(with_policy(gpuWeights=weights))
    assert "/policy/gpuWeights" in message


def test_a_misspelt_policy_field_is_refused_by_name(render_error):
    message = render_error(with_policy(defaults__maxGpuEquivalent=3))
    assert "maxGpuEquivalent" in message


def test_a_tier_priority_class_name_is_refused_rather_than_ignored(render_error):
    # labkeeper-<tier> is the only class a tier's pods may use (the namespace's quota allows no other)
    message = render_error(with_policy(tiers__student__priorityClassName="high-priority"))
    assert "priorityClassName" in message and "/policy/tiers/student" in message


def test_a_misspelt_chart_option_is_refused_by_name(render_error):
    message = render_error({"opertor": {"replicas": 1}})
    assert "opertor" in message


def test_a_relative_or_system_data_root_is_refused(render_error):
    assert "/agent/dataRoot" in render_error({"agent": {"dataRoot": "data"}})
    assert "/agent/dataRoot" in render_error({"agent": {"dataRoot": "/etc"}})


def test_the_default_values_render(render):
    assert render().one("ConfigMap", "labkeeper-policy")


@pytest.mark.parametrize(("change", "field"), [
    ({"holdPriority": 5000}, "policy.holdPriority"),
    ({"defaultTier": "postdoc"}, "policy.defaultTier"),
    ({"labUsersGid": 25000}, "policy.labUsersGid"),
    ({"uidRange": {"start": 30000, "end": 20000}}, "policy.uidRange.end"),
])
def test_a_policy_the_operator_would_refuse_is_refused_by_helm_first(render_error, change, field):
    """Checks across fields are not JSON schema; the chart repeats the model's, so both refuse alike."""
    from pydantic import ValidationError

    from labkeeper.api.policy import LabPolicy

    policy = {**copy.deepcopy(DEFAULTS["policy"]), **change}
    with pytest.raises(ValidationError):
        LabPolicy.model_validate(policy)
    assert field in render_error({"policy": policy})


def test_gpu_weights_may_be_written_as_fractions(render):
    cm = render(with_policy(gpuWeights={**DEFAULTS["policy"]["gpuWeights"], "3g.40gb": "3/7"}))
    from labkeeper.api.policy import load_policy

    policy = load_policy(cm.one("ConfigMap", "labkeeper-policy")["data"]["policy.yaml"])
    assert policy.gpu_weights["3g.40gb"] == pytest.approx(3 / 7)
