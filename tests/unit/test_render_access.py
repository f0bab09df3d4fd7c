"""What a GPUUser's tier turns into: quota, priority scope, RBAC — built by pure functions."""

from labkeeper.controller.uids import UidRange, next_free
from labkeeper.render import access as render

WEIGHTS = {"1g.10gb": 1 / 7, "2g.20gb": 2 / 7, "3g.40gb": 3 / 7, "7g.80gb": 1.0, "full": 1.0}


def student(**overrides) -> render.Access:
    values = dict(username="alice", tier="student", max_gpu_equivalents=0.5, cpu="32", memory="32Gi",
                  max_workspaces=3, allowed_profiles=("1g.10gb", "2g.20gb"), gpu_weights=WEIGHTS)
    values.update(overrides)
    return render.Access(**values)


def test_quota_caps_each_profile_by_how_many_fit_the_gpu_equivalent_cap():
    hard = render.resource_quota(student())["spec"]["hard"]
    assert hard["requests.nvidia.com/mig-1g.10gb"] == "3"  # 3 x 1/7 = 0.43 <= 0.5
    assert hard["requests.nvidia.com/mig-2g.20gb"] == "1"
    # profiles the tier is not entitled to are capped at zero, so the API itself refuses them
    assert hard["requests.nvidia.com/mig-3g.40gb"] == "0"
    assert hard["requests.nvidia.com/gpu"] == "0"
    assert hard["requests.cpu"] == "32" and hard["limits.memory"] == "32Gi"
    assert hard["count/workspaces.labkeeper.io"] == "10"


def test_a_cap_of_exactly_three_sevenths_admits_three_slices_despite_float_rounding():
    hard = render.resource_quota(student(max_gpu_equivalents=3 / 7))["spec"]["hard"]
    assert hard["requests.nvidia.com/mig-1g.10gb"] == "3"


def test_priority_quota_forbids_every_class_but_the_tiers_and_the_hold():
    quota = render.priority_quota(student(tier="faculty"))
    expression = quota["spec"]["scopeSelector"]["matchExpressions"][0]
    assert quota["spec"]["hard"] == {"pods": "0"}
    assert expression == {"scopeName": "PriorityClass", "operator": "NotIn",
                          "values": ["labkeeper-faculty", "labkeeper-hold"]}


def test_the_user_role_grants_workspaces_and_reading_pods_but_never_pod_creation_or_secrets():
    rules = render.user_role("alice")["rules"]
    granted = {(res, verb) for rule in rules for res in rule["resources"] for verb in rule["verbs"]}
    assert ("workspaces", "create") in granted and ("workspaces", "delete") in granted
    assert ("pods", "list") in granted and ("pods/exec", "create") in granted
    assert ("pods", "create") not in granted
    assert not any(res == "secrets" for res, _ in granted)


def test_the_self_reader_role_names_only_her_own_gpuuser():
    role, binding = render.self_reader_role("alice", render.access_group("alice", "1a2b3c4d"))
    assert role["rules"] == [{"apiGroups": ["labkeeper.io"], "resources": ["gpuusers"],
                              "resourceNames": ["alice"], "verbs": ["get", "watch"]}]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                    "name": "labkeeper:alice:1a2b3c4d"}]


def test_rights_are_bound_to_her_incarnation_never_to_her_name():
    """A client certificate cannot be revoked: one issued to an earlier alice must match no binding."""
    for binding in (render.user_role_binding("alice", render.access_group("alice", "1a2b3c4d")),
                    render.self_reader_role("alice", render.access_group("alice", "1a2b3c4d"))[1]):
        assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("Group", "labkeeper:alice:1a2b3c4d")]


def test_uids_are_never_reused_even_below_the_highest_issued():
    uid_range = UidRange(20000, 20010)
    assert next_free(set(), uid_range) == 20000
    # 20001 was given to someone since offboarded and dropped from view: it is not handed out again
    assert next_free({20000, 20002}, uid_range) == 20003
    assert next_free({5, 20000}, uid_range) == 20001


def test_an_exhausted_uid_range_is_an_error_naming_the_policy_field():
    import pytest

    from labkeeper.controller.uids import LedgerFull

    with pytest.raises(LedgerFull, match="uidRange"):
        next_free({20000, 20001}, UidRange(20000, 20001))
