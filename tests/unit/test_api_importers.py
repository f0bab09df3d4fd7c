"""Labs move in from AICADataKeeper and DS01: their files become GPUUsers and a policy, or nothing at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkeeper.api.importers import (
    ImportProblem,
    export_aicadatakeeper,
    export_ds01,
    import_aicadatakeeper,
    import_ds01,
    read_ds01,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def text(name: str) -> str:
    return (DATA / name).read_text()


# ---- AICADataKeeper -----------------------------------------------------------------------------------

def test_users_txt_becomes_one_gpuuser_per_line_and_the_lab_group_is_implied():
    users = import_aicadatakeeper(text("aicadatakeeper/users.txt"), tier="researcher")
    assert [u.name for u in users] == ["alice", "bob", "carol", "dave-2"]
    assert {u.name: u.spec.groups for u in users}["carol"] == ["vision"]
    assert {u.name: u.spec.groups for u in users}["alice"] == []
    assert {u.spec.tier for u in users} == {"researcher"}
    assert users[0].manifest() == {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser",
                                   "metadata": {"name": "alice"}, "spec": users[0].manifest()["spec"]}


def test_users_txt_round_trips():
    users = import_aicadatakeeper(text("aicadatakeeper/users.txt"))
    written = export_aicadatakeeper(users)
    assert import_aicadatakeeper(written) == users
    original = [" ".join(line.split("#")[0].split()) for line in text("aicadatakeeper/users.txt").splitlines()]
    assert [line for line in written.splitlines() if not line.startswith("#")] == [line for line in original if line]


def refused_lines(read, source: str, expected: dict[int, str]) -> ImportProblem:
    """`read(source)` imports nothing and names exactly the lines in `expected`, each with its words."""
    with pytest.raises(ImportProblem) as caught:
        read(source)
    problems = dict(caught.value.problems)
    assert sorted(problems) == sorted(expected)
    for line, words in expected.items():
        assert words in problems[line], (line, problems[line])
    return caught.value


def test_a_broken_users_txt_imports_nothing_and_names_every_bad_line():
    problem = refused_lines(import_aicadatakeeper, text("aicadatakeeper/users-broken.txt"), {
        3: "'Bob' is not valid", 4: "two words), found 1 word", 5: "found 3 words",
        6: "listed again (first on line 2)", 7: "'root' is reserved", 8: "group 'Vision'"})
    assert "users.txt: nothing was imported" in str(problem) and "line 8:" in str(problem)


# ---- DS01 ------------------------------------------------------------------------------------------------

def test_ds01_groups_become_tiers_and_their_members_gpuusers():
    result = read_ds01(text("ds01/resource-limits.yaml"))
    assert {u.name: u.spec.tier for u in result.users} == {
        "alice": "students", "bob": "students", "carol": "researchers", "dave": "researchers", "erin": "admins",
        "frank": "default"}
    researcher = result.policy.effective_limits("carol", "researchers")
    assert {k: researcher[k].value for k in ("maxGpuEquivalents", "cpu", "memory", "idleTimeout", "maxRuntime")} == {
        "maxGpuEquivalents": 4, "cpu": "48", "memory": "64Gi", "idleTimeout": "1h", "maxRuntime": "48h"}
    assert result.policy.tiers["researchers"].priority > result.policy.tiers["students"].priority
    assert result.policy.hold_priority > max(t.priority for t in result.policy.tiers.values())


def test_ds01_units_are_translated_docker_sizes_and_fractional_hours():
    policy = import_ds01(text("ds01/resource-limits.yaml"))
    assert policy.defaults.memory == "32Gi"  # docker's g is GiB
    assert policy.defaults.idle_timeout == "30m"  # DS01 wrote 0.5h
    assert policy.gpu_hold_after_stop.total_seconds() == 15 * 60
    assert policy.tiers["admins"].max_gpu_equivalents == 64  # null meant unlimited


def test_an_override_now_merges_with_the_tier_and_the_import_says_so():
    result = read_ds01(text("ds01/resource-limits.yaml"))
    bob = result.policy.effective_limits("bob", "students")
    assert bob["maxGpuEquivalents"] == (3, "override")
    assert bob["memory"] == ("32Gi", "tier")
    assert result.policy.users["bob"].reason == "thesis deadline, until June"
    assert any(note.startswith("bob: DS01 replaced group students") for note in result.notes)
    assert any("shm_size" in note for note in result.notes)


def test_ds01_round_trips():
    first = read_ds01(text("ds01/resource-limits.yaml"))
    again = read_ds01(export_ds01(first))
    assert again.policy == first.policy
    assert sorted((u.name, u.spec.tier) for u in again.users) == sorted((u.name, u.spec.tier) for u in first.users)


def test_a_broken_ds01_file_imports_nothing_and_names_every_bad_line():
    refused_lines(read_ds01, text("ds01/resource-limits-broken.yaml"), {
        3: "defaults.memory = 'lots'", 6: "'John_Doe' is not valid", 7: "unknown key 'max_gpus'",
        9: "member of researchers and of students (line 6)", 10: "'soon' is not a duration", 11: "priority = 500",
        13: "'root' is reserved"})


def test_a_ds01_file_that_is_not_yaml_points_at_the_line():
    refused_lines(read_ds01, "defaults:\n  memory: 32g\ngroups: [\n", {4: "not valid YAML"})
