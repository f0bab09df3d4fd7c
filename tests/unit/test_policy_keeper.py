"""One rule for the operator and the agent: a policy the models refuse never half-applies, the last good one
stays in force and the refusal is said once, and the next valid one is taken at once."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic.alias_generators import to_camel

from labkeeper.api.policy import LIMIT_FIELDS, LabPolicy, PolicyKeeper, PolicyOutcome, load_policy

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(yaml.safe_load((REPO_ROOT / "examples" / "policy.yaml").read_text())["data"]["policy.yaml"])


def text(policy: dict) -> str:
    return yaml.safe_dump(policy, sort_keys=False)


def with_student(field: str, value) -> dict:
    policy = yaml.safe_load(text(EXAMPLE))
    policy["tiers"]["student"][field] = value
    return policy


def metrics(keeper: PolicyKeeper) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(keeper)
    return {name: registry.get_sample_value(name) for name in
            ("labkeeper_policy_rejected_total", "labkeeper_policy_generation", "labkeeper_policy_refused")}


def test_a_refused_policy_leaves_the_last_good_one_whole_and_the_next_good_one_is_taken():
    keeper = PolicyKeeper()
    tight = with_student("maxWorkspaces", 1)
    assert keeper.offer(text(tight)) == PolicyOutcome(True, "PolicyApplied", "lab policy from ConfigMap "
                                                      "labkeeper-system/labkeeper-policy key policy.yaml is in force "
                                                      "(generation 1 in labkeeper)")
    good = keeper.current

    # two fields changed, one of them broken: neither applies
    broken = with_student("maxWorkspaces", 2)
    broken["tiers"]["student"]["maxGpuEquivalents"] = -1
    outcome = keeper.offer(text(broken))
    assert not outcome.changed and outcome.warning and outcome.reason == "InvalidPolicy"
    assert "tiers.student.maxGpuEquivalents" in outcome.message and "(got -1)" in outcome.message
    assert "the last good policy (generation 1) stays in force" in outcome.message
    assert keeper.current is good and keeper.current.tiers["student"].max_workspaces == 1
    assert metrics(keeper) == {"labkeeper_policy_rejected_total": 1, "labkeeper_policy_generation": 1,
                               "labkeeper_policy_refused": 1}

    # the same broken text again (a relist, a resync) is not said twice
    assert keeper.offer(text(broken)) == PolicyOutcome(False)
    assert metrics(keeper)["labkeeper_policy_rejected_total"] == 1

    fixed = with_student("maxWorkspaces", 2)
    outcome = keeper.offer(text(fixed))
    assert outcome.changed and outcome.reason == "PolicyApplied" and "generation 2" in outcome.message
    assert keeper.current.tiers["student"].max_workspaces == 2
    assert metrics(keeper) == {"labkeeper_policy_rejected_total": 1, "labkeeper_policy_generation": 2,
                               "labkeeper_policy_refused": 0}


def test_going_back_to_the_policy_in_force_after_a_refusal_says_so_and_changes_nothing():
    keeper = PolicyKeeper()
    keeper.offer(text(EXAMPLE))
    keeper.offer(text(with_student("maxGpuEquivalents", "lots")))
    outcome = keeper.offer(text(EXAMPLE))
    assert outcome == PolicyOutcome(False, "PolicyApplied", "ConfigMap labkeeper-system/labkeeper-policy key "
                                    "policy.yaml is valid again; the policy in force is unchanged")
    assert metrics(keeper)["labkeeper_policy_refused"] == 0
    # the same refusal later is said again: it is news once more
    assert keeper.offer(text(with_student("maxGpuEquivalents", "lots"))).reason == "InvalidPolicy"
    assert metrics(keeper)["labkeeper_policy_rejected_total"] == 2


def test_before_any_good_policy_the_built_in_defaults_hold_and_a_missing_key_changes_nothing():
    keeper = PolicyKeeper()
    assert keeper.offer(None) == PolicyOutcome(False)
    outcome = keeper.offer("tiers: [\n")
    assert outcome.reason == "InvalidPolicy" and "not valid YAML" in outcome.message
    assert "the built-in defaults" in outcome.message and keeper.current == LabPolicy()
    assert keeper.offer("").changed and keeper.generation == 1


def test_a_validator_that_fails_in_an_unexpected_way_is_a_refusal_not_a_crash(monkeypatch):
    keeper = PolicyKeeper()

    def broken_loader(text, source):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr("labkeeper.api.policy.load_policy", broken_loader)
    outcome = keeper.offer("defaults: {}\n")
    assert outcome.reason == "InvalidPolicy" and "TypeError: unhashable type" in outcome.message
    assert keeper.current == LabPolicy()


BAD_VALUES = st.one_of(st.none(), st.integers(-10**6, -1), st.booleans(), st.text(max_size=8),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                            max_size=2))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(field=st.sampled_from([*(to_camel(f) for f in LIMIT_FIELDS), "priority", "preempt"]), value=BAD_VALUES)
@example(field="maxGpuEquivalents", value=None)
def test_any_one_field_of_a_tier_either_applies_whole_or_leaves_the_last_good_policy(field, value):
    keeper = PolicyKeeper()
    keeper.offer(text(EXAMPLE))
    before = keeper.current
    offered = with_student(field, value)
    outcome = keeper.offer(text(offered))
    try:
        wanted = load_policy(text(offered))
    except ValueError:
        assert outcome.reason == "InvalidPolicy" and keeper.current is before
    else:
        assert keeper.current == wanted and outcome.changed == (wanted != before)
    # whatever came before, the good policy is back in force at the next offer
    keeper.offer(text(EXAMPLE))
    assert keeper.current == load_policy(text(EXAMPLE)) and keeper.refused is None


def test_the_agents_host_pass_never_sees_the_defaults_while_another_thread_reads_the_new_policy(monkeypatch):
    """The activity thread and the host pass both ask for the policy as the agent starts; the one that does not
    parse it must wait for it, not take the built-in defaults (a first pass made lab-users with gid 2000)."""
    import threading
    import time
    from types import SimpleNamespace

    from labkeeper.agent.main import Agent

    events = []
    agent = Agent(SimpleNamespace(api=None, event=lambda *a, **k: events.append(a[1])), SimpleNamespace(data_fd=-1),
                  "node-1", "labkeeper-system")
    policy = yaml.safe_load(text(EXAMPLE)) | {"labUsersGid": 3000}
    agent.configmaps.objects["labkeeper-policy"] = {
        "metadata": {"name": "labkeeper-policy", "namespace": "labkeeper-system", "resourceVersion": "7"},
        "data": {"policy.yaml": text(policy)}}
    slow_offer = agent.policy_keeper.offer

    def offer(*args):
        time.sleep(0.3)  # a parse that takes long on a loaded node
        return slow_offer(*args)

    monkeypatch.setattr(agent.policy_keeper, "offer", offer)
    first = threading.Thread(target=agent.policy)
    first.start()
    time.sleep(0.05)
    assert agent.lab_gid() == 3000
    first.join()
    assert events == ["PolicyApplied"]


def test_a_process_started_on_a_refused_configmap_runs_on_the_last_good_copy_until_the_configmap_is_fixed():
    keeper = PolicyKeeper(component="the agent on n1")
    kept = with_student("maxWorkspaces", 1) | {"labUsersGid": 3000}
    # a copy is only for a process with no good policy: one that has read a good text ignores it
    assert keeper.recover(text(kept), "copy").changed is False
    refusal = keeper.offer(text(with_student("maxGpuEquivalents", -1)))
    assert refusal.reason == "InvalidPolicy" and keeper.paused
    assert metrics(keeper)["labkeeper_policy_generation"] == 0
    outcome = keeper.recover(text(kept), "ConfigMap labkeeper-system/labkeeper-policy-last-good")
    assert outcome.changed and outcome.warning and outcome.reason == "PolicyRecovered"
    assert "tiers.student.maxGpuEquivalents" in outcome.message and "labkeeper-policy-last-good" in outcome.message
    assert keeper.current.lab_users_gid == 3000 and keeper.current.tiers["student"].max_workspaces == 1
    assert not keeper.paused and metrics(keeper)["labkeeper_policy_refused"] == 1
    # the refusal stands, so the fixed ConfigMap is still news and is taken at once
    fixed = keeper.offer(text(with_student("maxWorkspaces", 2)))
    assert fixed.changed and keeper.current.tiers["student"].max_workspaces == 2 and keeper.refused is None


def test_with_neither_a_good_configmap_nor_a_good_copy_the_process_is_paused_not_on_the_defaults():
    keeper = PolicyKeeper()
    assert not keeper.paused  # no ConfigMap read yet: nothing has been refused
    keeper.offer(text(with_student("memory", -1)))
    assert keeper.recover(None, "copy") == PolicyOutcome(False)
    broken_copy = keeper.recover("tiers: [\n", "ConfigMap labkeeper-system/labkeeper-policy-last-good")
    assert broken_copy.reason == "InvalidPolicy" and "cannot be used either" in broken_copy.message
    assert keeper.paused and keeper.generation == 0
    registry = CollectorRegistry()
    registry.register(keeper)
    assert registry.get_sample_value("labkeeper_policy_paused") == 1
    keeper.offer(text(EXAMPLE))
    assert not keeper.paused and registry.get_sample_value("labkeeper_policy_paused") == 0


def test_the_agent_makes_no_host_pass_while_paused_and_takes_the_operators_copy_when_there_is_one():
    from types import SimpleNamespace

    from labkeeper.agent.main import Agent

    events = []
    agent = Agent(SimpleNamespace(api=None, event=lambda *a, **k: events.append(a[1])), SimpleNamespace(data_fd=-1),
                  "node-1", "labkeeper-system")
    agent.configmaps.objects["labkeeper-policy"] = {
        "metadata": {"name": "labkeeper-policy", "namespace": "labkeeper-system", "resourceVersion": "7"},
        "data": {"policy.yaml": text(with_student("maxGpuEquivalents", -1))}}
    # the host is a namespace with no data fd: a pass that went on would fail on it, not return None
    assert agent.reconcile() is None and agent.last_result is None
    assert events == ["InvalidPolicy"] and agent.policy_keeper.paused

    kept = yaml.safe_load(text(EXAMPLE)) | {"labUsersGid": 3000}
    agent.configmaps.objects["labkeeper-policy-last-good"] = {
        "metadata": {"name": "labkeeper-policy-last-good", "namespace": "labkeeper-system", "resourceVersion": "3"},
        "data": {"policy.yaml": text(kept)}}
    agent.configmaps.objects["labkeeper-policy"]["metadata"]["resourceVersion"] = "8"  # the watch saw it again
    assert agent.lab_gid() == 3000 and events == ["InvalidPolicy", "PolicyRecovered"]
